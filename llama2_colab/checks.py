"""Checks on a local model folder before anything loads it: config, tokenizer, weights, family.

transformers and safetensors answer a damaged folder with a traceback from deep inside (a JSON
decoder, a Rust deserializer), and load a GPT-2 or BERT folder without complaint. These checks
read only the small files and the safetensors headers (no weights), so they take milliseconds,
and each problem becomes a `UserFacingError` that says what is wrong and what to do.

The benchmark's numbers are checked here too (`check_bench_numbers`), before anything loads.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import UserFacingError
from .renames import renamed_keywords

__all__ = [
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "check_bench_numbers",
    "LLAMA_MODEL_TYPES",
    "NotLlamaError",
    "check_config",
    "check_family",
    "check_model_dir",
    "check_safetensors",
    "looks_like_local_path",
    "read_config",
]

# model_type values of the Llama family: Llama 2, Code Llama and their fine-tunes all say "llama".
LLAMA_MODEL_TYPES = ("llama",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_REDOWNLOAD = (
    "Download the model again (or copy the folder again), or use 'tiny' or a Hub id such as "
    "meta-llama/Llama-2-7b-chat-hf."
)


def looks_like_local_path(name: str) -> bool:
    """Return True if name is meant as a folder on this machine rather than a Hub id."""
    name = name.strip()
    if not name:
        return False
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name or name == ".":
        return True
    if Path(name).expanduser().exists():
        return True
    return name.count("/") > 1  # a Hub id is exactly owner/name


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserFacingError(
            f"There is no folder {str(folder)!r}.",
            "Check the path (it is relative to the folder you run from), or use 'tiny' or a "
            "Hub id such as meta-llama/Llama-2-7b-chat-hf.",
        )
    if not folder.is_dir():
        raise UserFacingError(
            f"{str(folder)!r} is a file, not a model folder.",
            "Pass the folder that holds config.json, the tokenizer files and the weights.",
        )
    return folder


def read_config(path: str | os.PathLike) -> dict:
    """Return a model folder's config.json as a dict; UserFacingError if it is missing or bad."""
    folder = _folder(path)
    file = folder / "config.json"
    if not file.is_file():
        raise UserFacingError(
            f"{str(folder)!r} has no config.json, so it is not a Hugging Face model folder.",
            "Pass the folder that holds config.json, the tokenizer files and the weights "
            "(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)).",
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        config = None
        problem = "is not text"
    except json.JSONDecodeError as err:
        config = None
        problem = f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    except OSError as err:
        raise UserFacingError(
            f"Cannot read {str(file)!r}: {err.strerror or err}.", "Check its permissions."
        ) from None
    else:
        problem = "is not a JSON object"
    if not isinstance(config, dict):
        raise UserFacingError(f"{str(file)!r} {problem}: the folder is damaged.", _REDOWNLOAD)
    return config


class NotLlamaError(UserFacingError):
    """The model is not a Llama-family text generator (GPT-2, BERT, a classifier...)."""


def check_family(model_type, architectures, where: str) -> None:
    """Raise NotLlamaError unless a config's model_type and architectures are a Llama causal LM.

    `where` names the model in the message: a folder or a Hub id.
    """
    architectures = architectures or []
    if not isinstance(architectures, (list, tuple)):
        architectures = [architectures]
    arch = ", ".join(str(a) for a in architectures) or "no architecture given"
    if model_type not in LLAMA_MODEL_TYPES:
        kind = f"a {model_type} model" if isinstance(model_type, str) else "a model of no type"
        raise NotLlamaError(
            f"{where!r} holds {kind} ({arch}), not a Llama-family model. This project's chat "
            "format, memory plan and checks are Llama 2's; another model would answer in "
            "gibberish under Llama 2's name.",
            "Use a Llama 2 model (its config.json says model_type llama), 'tiny', or a Hub id "
            "such as meta-llama/Llama-2-7b-chat-hf.",
        )
    if architectures and not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise NotLlamaError(
            f"{where!r} holds a Llama model built as {arch}, not as a text generator "
            "(LlamaForCausalLM).",
            "Use a Llama 2 model saved from LlamaForCausalLM, 'tiny', or a Hub id.",
        )


def check_config(path: str | os.PathLike) -> dict:
    """Return the config of a Llama-family model folder; UserFacingError for anything else."""
    config = read_config(path)
    check_family(config.get("model_type"), config.get("architectures"), str(path))
    return config


def check_safetensors(file: str | os.PathLike) -> None:
    """Raise UserFacingError unless file is a whole safetensors file (its header and its size)."""
    file = Path(file)
    size = file.stat().st_size
    what = f"{str(file)!r} is damaged"
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("it is shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ValueError("its header is cut off or not a safetensors header")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            end = max(end, int(info["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        raise UserFacingError(f"{what}: {err}.", _REDOWNLOAD) from None
    except OSError as err:
        raise UserFacingError(
            f"Cannot read {str(file)!r}: {err.strerror or err}.", "Check its permissions."
        ) from None
    if size < 8 + n + end:
        raise UserFacingError(
            f"{what}: it is truncated ({size:,} bytes of the {8 + n + end:,} its header "
            "describes), as after an interrupted download or a full disk.",
            _REDOWNLOAD,
        )


def _weight_files(folder: Path) -> list[Path]:
    """Return the weight files a loader would read, following a sharded checkpoint's index."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise UserFacingError(
                    f"{str(index)!r} is not a valid index of weight files.", _REDOWNLOAD
                ) from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise UserFacingError(
                    f"{str(folder)!r} lacks {len(missing)} of its {len(shards)} weight files "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}).",
                    "Finish the download (it resumes where it stopped), or copy the missing "
                    "files in.",
                )
            return [folder / s for s in shards]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def check_model_dir(path: str | os.PathLike) -> dict:
    """Check a model folder before loading it; return its config, or raise UserFacingError.

    Checked: config.json is valid JSON of a Llama-family causal LM; a tokenizer is there
    (tokenizer.json or tokenizer.model); weights are there and no safetensors file is cut short.
    """
    folder = _folder(path)
    config = check_config(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserFacingError(
            f"{str(folder)!r} has no tokenizer (tokenizer.json or tokenizer.model).",
            "Copy the tokenizer files from the model's repository into the folder, or save "
            "them there with tokenizer.save_pretrained(folder).",
        )
    files = _weight_files(folder)
    if not files:
        raise UserFacingError(
            f"{str(folder)!r} has no weights (*.safetensors or pytorch_model*.bin).",
            "Copy the weight files into the folder, or save them there with "
            "model.save_pretrained(folder).",
        )
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors(file)
        elif file.stat().st_size == 0:
            raise UserFacingError(f"{str(file)!r} is empty.", _REDOWNLOAD)
    return config


# Sane bounds for the numbers a user gives, checked before anything loads.
MIN_PROMPT_TOKENS = 8  # a prompt of fewer tokens cannot be made exactly (BOS + one word)
MIN_NEW_TOKENS = 2  # decode speed is (N - 1) / (t_N - t_1): one token measures no decoding
MAX_REPEATS = 1000
MAX_WARMUP = 100


@renamed_keywords(context_limit="context_window")
def check_bench_numbers(
    prompt_tokens: int,
    new_tokens: int | None,
    repeats: int | None,
    warmup: int,
    threads: int | None = None,
    context_window: int | None = None,
) -> None:
    """Raise UserFacingError, saying the allowed range, unless the benchmark's numbers make sense.

    None means "the default" for new_tokens, repeats and threads. With `context_window` (the
    model's positions), the prompt plus the new tokens must fit in it.
    """
    cores = max(1, os.cpu_count() or 1)
    for name, value, low, high, why in (
        ("prompt_tokens", prompt_tokens, MIN_PROMPT_TOKENS, None, ""),
        ("new_tokens", new_tokens, MIN_NEW_TOKENS, None, "; decode speed needs 2 or more"),
        ("repeats", repeats, 1, MAX_REPEATS, ""),
        ("warmup", warmup, 0, MAX_WARMUP, ""),
        ("threads", threads, 1, cores, f"; this machine has {cores} CPU core(s)"),
    ):
        if value is None and name in ("new_tokens", "repeats", "threads"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserFacingError(
                f"{name} must be a whole number, not {type(value).__name__} ({value!r}).",
                "Pass an int.",
            )
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise UserFacingError(
                f"{name}={value:,} is out of range{why}.", f"Give a number {span}."
            )
    if context_window is not None:
        total = prompt_tokens + (new_tokens or 0)
        if total > context_window:
            raise UserFacingError(
                f"A {prompt_tokens:,}-token prompt plus {new_tokens or 0:,} new tokens is "
                f"{total:,} positions; the model has {context_window:,}.",
                f"Keep --prompt-tokens plus --new-tokens within {context_window:,} (the default "
                "512 + 128 does).",
            )
