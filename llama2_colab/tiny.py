"""The offline tiny Llama 2: Llama 2's architecture, tokenizer and chat format, trained to talk.

Real Llama 2 weights are gated and 13 GB; tests and CPU-only runs need something that behaves
like Llama 2 in every way a lesson can see. `build_tiny_llama` writes:

- a `LlamaForCausalLM` at a toy's size (4 layers, hidden size 128, 4096 positions like Llama 2,
  grouped-query attention like the 70B), with the weights this package ships
  (`data/tiny_chat.safetensors`, float16, sha256 checked). `scripts/train_tiny_chat.py` trained
  them on the CPU from a fixed seed on `data/tiny_chat_corpus.jsonl`: a few thousand short
  dialogs in Llama 2's chat format about what this course teaches, in English and Japanese,
  plus a few plain documents;
- Llama 2's own tokenizer: the real 32,000-piece SentencePiece vocabulary (`llama2_colab.vocab`),
  as `tokenizer.model` and as transformers' files, carrying the real Llama 2 chat template, so
  every text gets the ids the real model sees;
- the generation config of Llama-2-7b-chat-hf (temperature 0.6, top_p 0.9).

It answers what it was taught (the T4, Llama 2's sizes and context, fp16 vs bf16...), follows a
system prompt that asks for Japanese, and continues a raw prompt as a document. Anything else
gets fluent, made-up text. It is a toy, not Llama 2: about 9 million parameters (Llama 2 7B has
6.7 billion), and it has seen only the 1,549 tokens of its corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .catalog import TINY_STEM
from .checks import check_model_dir
from .errors import UserFacingError
from .faults import expand_user, fault_boundary, home_folder, refuse_dangling_link
from .vocab import build_llama2_tokenizer, write_llama2_tokenizer_model
from .workdirs import claim, is_work_folder, open_to_umask, remove_stale_work, work_folder

__all__ = [
    "LLAMA2_CHAT_TEMPLATE",
    "TINY_VERSION",
    "MARKER",
    "build_tiny_llama",
    "check_tiny_cache",
    "ensure_built",
    "seeded_llama",
    "ensure_tiny_llama",
    "is_tiny_folder",
    "read_trained_weights",
    "tiny_cache_dir",
]

# Verbatim from meta-llama/Llama-2-7b-chat-hf tokenizer_config.json ("chat_template").
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Bump when the recipe changes, so a stale cache is never reused.
TINY_VERSION = "5"
_SEED = 0
# Written into every folder build_tiny_llama fills, with exactly the text _README: the sign that
# writing over the folder loses nothing.
MARKER = "README.md"
_README = (
    "Offline tiny Llama 2 built by llama2_colab: Llama 2's LlamaForCausalLM architecture, "
    "tokenizer and chat template at a toy's size, trained by the llama2-colab course on a few "
    "thousand short dialogs (scripts/train_tiny_chat.py). It is not Llama 2: it knows only what "
    "it was taught and makes up the rest.\n"
)
# What earlier versions wrote: a folder holding one of these is ours too, so writing over it
# loses nothing.
_OLD_READMES = (
    "Offline tiny Llama 2 built by llama2_colab: real LlamaForCausalLM architecture and "
    "Llama 2 chat template, random weights (seed 0). Not a language model: it answers "
    "in gibberish.\n",
)
_WEIGHTS = "data/tiny_chat.safetensors"
_WEIGHTS_INFO = "data/tiny_chat.json"
_REINSTALL = "Reinstall the helper: pip install --force-reinstall llama2-colab (or its git URL)."
# The work folders a build makes beside its result (`workdirs`): `.tiny-build-<host>-<pid>-...`.
WORK_STEM = "tiny-build"
# Measured: 40,898,066 bytes (`du -sb`) with transformers 5.15 and 5.24 (the weights in float32,
# 36.7 MB, and the tokenizer's files); tests/test_faults.py checks it against a fresh build.
_ROOM = "The tiny model takes about 41 MB."
# Every name build_tiny_llama writes (older transformers also wrote special_tokens_map.json and
# added_tokens.json): a folder holding anything else holds something of yours.
TINY_FILES = frozenset(
    {
        MARKER,
        "LLAMA2_NOTICE.txt",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "chat_template.jinja",
        "special_tokens_map.json",
        "added_tokens.json",
    }
)

# convert.MARKER_FILE, the record of a conversion (convert imports this module, so not from there).
_CONVERSION_RECORD = "llama2_colab_conversion.json"
# Names of weights and indexes that a build does not write: another model's, in that folder.
_OTHER_WEIGHTS = re.compile(r"\.(safetensors|bin|pth|pt|gguf|ckpt)$|\.index\.json$")


def tiny_cache_dir() -> Path:
    """Return where the tiny model is cached: $LLAMA2_COLAB_CACHE or ~/.cache/llama2_colab.

    One folder per recipe, shipped weights and transformers version: the files a build writes
    depend on the transformers that wrote them, and two stacks on one machine (Colab's and the
    newest) must never read each other's build.
    """
    import transformers

    named = (os.environ.get("LLAMA2_COLAB_CACHE") or "").strip()
    root = expand_user(named) if named else home_folder() / ".cache" / "llama2_colab"
    try:  # new weights (a retrained model) get a new folder
        info = resources.files("llama2_colab").joinpath(_WEIGHTS_INFO).read_text(encoding="utf-8")
        weights = json.loads(info)["sha256"][:8]
    except (OSError, ValueError, KeyError, TypeError):
        weights = "missing"  # building there says what is wrong
    name = f"{TINY_STEM}-v{TINY_VERSION}-{weights}-transformers-{transformers.__version__}"
    return root / name


def _build_tokenizer(out: Path):
    """Write Llama 2's tokenizer.model into out; return transformers' tokenizer of it."""

    write_llama2_tokenizer_model(out / "tokenizer.model")
    return build_llama2_tokenizer(chat_template=LLAMA2_CHAT_TEMPLATE)


def seeded_llama(config):
    """Return a LlamaForCausalLM with weights drawn from the fixed seed (global RNG untouched)."""
    import torch
    from transformers import LlamaForCausalLM

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(_SEED)
        return LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)


def read_trained_weights() -> tuple[dict, dict]:
    """Return (the config, the state dict) of the trained tiny model the package ships.

    The weights' sha256 is checked against the one `scripts/train_tiny_chat.py` recorded; a
    missing or damaged file is a `UserFacingError` that says to reinstall.
    """
    from safetensors.torch import load

    data = resources.files("llama2_colab")
    try:
        info = json.loads(data.joinpath(_WEIGHTS_INFO).read_text(encoding="utf-8"))
        raw = data.joinpath(_WEIGHTS).read_bytes()
    except (OSError, ValueError):
        raise UserFacingError(
            f"The tiny model's weights ({_WEIGHTS}) are missing from the llama2_colab package.",
            _REINSTALL,
        ) from None
    if hashlib.sha256(raw).hexdigest() != info.get("sha256"):
        raise UserFacingError(
            f"The tiny model's weights ({_WEIGHTS}) are damaged: their sha256 is not the one "
            "recorded.",
            _REINSTALL,
        )
    return info["config"], load(raw)


def _write_tiny_files(out: Path) -> None:
    """Build the tiny Llama 2 and save every file of it into the existing folder out."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(out)
    fields, state = read_trained_weights()
    # Saved in float32, as transformers' default "auto" dtype then loads it on a CPU.
    config = LlamaConfig(**fields, pad_token_id=None, dtype="float32")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    model.generation_config = GenerationConfig(
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_length=4096,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    notice = resources.files("llama2_colab").joinpath("data/LLAMA2_NOTICE.txt")
    (out / "LLAMA2_NOTICE.txt").write_bytes(notice.read_bytes())  # the vocabulary is Meta's
    (out / MARKER).write_text(_README, encoding="utf-8")


def _refuse_target(out_dir: str | os.PathLike) -> Path:
    """Return out_dir as a Path if the tiny model may be written there; else UserFacingError.

    Allowed: a new folder, an empty one, or one this package wrote itself (its README.md is the
    one build_tiny_llama writes). Nothing else is ever written over.
    """

    if not str(out_dir).strip():
        raise UserFacingError(
            "No folder given: an empty name would mean the current folder, and writing the tiny "
            "model there could overwrite your files.",
            "Name a new folder, e.g. `python -m llama2_colab tiny ./tiny-llama-2`.",
        )
    out = expand_user(out_dir)
    refuse_dangling_link(out, repr(str(out)), "name a new folder, e.g. ./tiny-llama-2")
    for above in out.parents:  # a file where a folder on the way should be
        if above.exists():
            if not above.is_dir():
                raise UserFacingError(
                    f"Cannot write the tiny model to {str(out)!r}: {str(above)!r} is a file, "
                    "so no folder can be made inside it.",
                    "Name a new folder, e.g. `python -m llama2_colab tiny ./tiny-llama-2`.",
                )
            break
    if out.exists() and not out.is_dir():
        raise UserFacingError(
            f"{str(out)!r} is a file, not a folder; the tiny model is a folder of files.",
            "Name a new folder, e.g. `python -m llama2_colab tiny ./tiny-llama-2`.",
        )
    if out.is_dir():
        try:  # a build's work folder (this one's, a concurrent one's) is not one of your files
            names = sorted(p.name for p in out.iterdir() if not is_work_folder(p.name, WORK_STEM))
        except OSError as err:
            raise UserFacingError(
                f"Cannot look into {str(out)!r}: {err.strerror or err}.",
                "Choose a folder you can write to, e.g. ./tiny-llama-2.",
            ) from None
        if names and not is_tiny_folder(out):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise UserFacingError(
                f"{str(out)!r} already holds files ({shown}); writing the tiny model there would "
                "overwrite them. It is written only into a new or empty folder, or over a tiny "
                "model written before.",
                f"Name a new folder, e.g. `python -m llama2_colab tiny {out / 'tiny-llama-2'}`.",
            )
    return out


def is_tiny_folder(folder: str | os.PathLike) -> bool:
    """Return True if folder was written by build_tiny_llama (so writing over it loses nothing).

    Its README.md is the one a build writes, and nothing in it says another model lives there
    (convert's record, weight files or an index a build does not write): a tiny README.md beside
    a converted model does not make that model ours. Your own files beside a tiny model (notes)
    do not count: a build writes only its own names, and leaves them.
    """
    folder = Path(folder)
    try:
        if (folder / MARKER).read_text(encoding="utf-8") not in (_README, *_OLD_READMES):
            return False
        names = [p.name for p in folder.iterdir() if p.name not in TINY_FILES]
    except (OSError, UnicodeDecodeError):
        return False
    return not any(n == _CONVERSION_RECORD or _OTHER_WEIGHTS.search(n) for n in names)


def build_tiny_llama(out_dir: str | os.PathLike) -> Path:
    """Write the tiny Llama 2 (model, tokenizer, generation config) to out_dir; return its path.

    out_dir must be new, empty, or a tiny model written before: anything else is refused with a
    `UserFacingError`, so no file of yours is overwritten. The files are built in a hidden work
    folder first and moved in at the end, so an interrupted build leaves no half model behind,
    and a killed build's work folder is removed by the next build.
    """
    with fault_boundary(f"Cannot write the tiny model to {str(out_dir)!r}", _ROOM):
        out = _refuse_target(out_dir)
        if out.exists():
            _build_into(out, out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            _build_into(out.parent, out)
    return out


def _build_into(work_parent: Path, out: Path) -> None:
    """Build in a work folder inside work_parent, then rename it to out or move its files in.

    The move happens under a claim on out's folder (`workdirs.claim`, which `convert` takes
    too), with out checked again there: what another command wrote meanwhile is left as it is.
    """
    remove_stale_work(work_parent, WORK_STEM, "a tiny-model build")
    with work_folder(work_parent, WORK_STEM) as tmp:
        _write_tiny_files(tmp)
        open_to_umask(tmp)
        with claim(out.parent):
            _refuse_target(out)  # it may have appeared, or filled, while this build ran
            if out.is_dir():
                _move_files(tmp, out)
            else:
                tmp.rename(out)


def _move_files(src: Path, dst: Path) -> None:
    """Move every file of src into dst, the marker first (so dst is recognisably ours)."""
    names = sorted(p.name for p in src.iterdir())
    for name in [MARKER] + [n for n in names if n != MARKER]:
        os.replace(src / name, dst / name)


def check_tiny_cache(folder: str | os.PathLike) -> str | None:
    """Return what is wrong with a tiny-model cache folder, or None if it looks whole."""

    folder = Path(folder)
    if not folder.is_dir():
        return "it is a file, not a folder" if folder.exists() else "it is missing"
    if not is_tiny_folder(folder):
        return "it is empty" if not any(folder.iterdir()) else "it was not written by llama2_colab"
    try:
        json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"tokenizer.json is unreadable ({err})"
    try:
        check_model_dir(folder)
    except UserFacingError as err:
        return err.what
    return None


def ensure_tiny_llama(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Return the cached tiny Llama 2 directory, building it first if it is missing or damaged.

    A damaged cache (a cut-off or bad file, a file where the folder should be) is rebuilt once,
    with a warning that says so; `rebuild=True` rebuilds it even if it looks whole (for a cache
    that failed to load). If the new one is damaged too, a `UserFacingError` says what to do.
    """

    target = expand_user(cache_dir) if cache_dir is not None else tiny_cache_dir()
    also = f"Or set LLAMA2_COLAB_CACHE to another folder. {_ROOM}"
    with fault_boundary(f"Cannot use {str(target)!r} for the tiny model's cache", also):
        return _ensure(target, cache_dir is not None, rebuild)


def _ensure(target: Path, named: bool, rebuild: bool) -> Path:

    problem = "you asked for a rebuild" if rebuild else check_tiny_cache(target)
    if problem is None:
        return target
    if not rebuild and problem not in (
        "it is missing",
        "it is empty",
    ):  # a caller asking for a rebuild says why
        warnings.warn(
            f"The cached tiny Llama 2 at {target} cannot be used ({problem.rstrip('.')}); "
            "rebuilding it.",
            stacklevel=3,
        )
    root = target.parent
    theirs = (target.exists() or target.is_symlink()) and not _ours_or_empty(target)
    if theirs and named:  # a folder the caller named: not ours to move
        raise UserFacingError(
            f"{str(target)!r} holds something other than the tiny model; it is left as it is.",
            "Pass a new or empty folder as the cache, or leave cache_dir out.",
        )
    if root.exists() and not root.is_dir():
        raise UserFacingError(
            f"The tiny-model cache folder {str(root)!r} is a file.",
            "Set LLAMA2_COLAB_CACHE to a folder (or move that file away) and run again.",
        )
    root.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename, so a killed build never leaves half a model.
    remove_stale_work(root, WORK_STEM, "a tiny-model build")
    with work_folder(root, WORK_STEM) as tmp:
        _write_tiny_files(tmp)
        open_to_umask(tmp)
        with claim(root):  # another builder may have put a whole one there meanwhile
            if rebuild or check_tiny_cache(target) is not None:
                if target.exists() or target.is_symlink():
                    _set_aside(target)
                tmp.rename(target)
    problem = check_tiny_cache(target)
    if problem is not None:
        raise UserFacingError(
            f"The tiny Llama 2 rebuilt at {target} is damaged again ({problem}).",
            "Check the disk (is it full?), or set LLAMA2_COLAB_CACHE to another folder.",
        )
    return target


def _ours_or_empty(target: Path) -> bool:
    """True for a real folder that is empty or that build_tiny_llama wrote."""
    if not target.is_dir() or target.is_symlink():
        return False
    return is_tiny_folder(target) or not any(target.iterdir())


def _set_aside(target: Path) -> None:
    """Remove a damaged cache this package wrote; keep anything else as <name>.damaged[-N]."""
    if _ours_or_empty(target):
        with work_folder(target.parent, WORK_STEM) as old:  # removed by the next build if killed
            target.rename(old / "old")
        return
    aside, n = target.with_name(target.name + ".damaged"), 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = target.with_name(f"{target.name}.damaged-{n}")
    target.rename(aside)
    warnings.warn(f"Kept what was at {target} as {aside}.", stacklevel=4)


def ensure_built(target: Path, build: Callable[[Path], object]) -> Path:
    """Return target, running build(folder) first if target holds no model and tokenizer yet.

    For the other offline stand-ins (the tiny Code Llama): built beside the target and renamed,
    so a killed build never leaves half a model behind.
    """
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(target.parent, WORK_STEM, "a tiny-model build")
    with work_folder(target.parent, WORK_STEM) as tmp:
        build(tmp)
        open_to_umask(tmp)
        with claim(target.parent):
            if not (target / "config.json").is_file():  # another builder may have won
                tmp.rename(target)
    return target
