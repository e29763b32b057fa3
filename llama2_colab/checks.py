"""Checks on a local model folder before anything loads it: config, tokenizer, weights, family.

transformers and safetensors answer a damaged folder with a traceback from deep inside (a JSON
decoder, a Rust deserializer), and load a GPT-2 or BERT folder without complaint. These checks
read only the small files and the safetensors headers (no weights), so they take milliseconds,
and each problem becomes a `UserFacingError` that says what is wrong and what to do.

Model configs are checked before anything is built from them (`check_model_config` for a
config.json, local or from the Hub; `check_meta_params` for Meta's params.json): whole numbers in
sane ranges that split into whole heads, so a damaged config is named in milliseconds instead of
a traceback, or a hang while 200,000 layers are built on the meta device. Then the fields that
are names or ids (the weights' dtype, the special tokens' ids, the rotary type, a quantization)
are checked against what transformers and the vocabulary take, and last the model is built on
the meta device (shapes only, no memory), as the plan does, under a guard: whatever else
transformers refuses is named as this config's fault, never a traceback.

After loading, `refuse_weight_mismatch` reads transformers' loading report: a config that does
not match its weights (more layers than the weights hold, another vocabulary size) is refused,
naming what disagrees, never run with layers of random values.

Every JSON file is read by one reader (`read_json_object`, `parse_json`): a file that is not
JSON, a number Python will not read (over 4,300 digits), nesting thousands deep, a device or a
named pipe in a file's place, each is named, not a traceback or a read that never ends.

The benchmark's numbers are checked here too (`check_bench_numbers`), before anything loads.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .errors import UserFacingError
from .faults import expand_user, find_regular_file, library_message, refuse_dangling_link
from .renames import renamed_keywords

__all__ = [
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "CONFIG_LIMITS",
    "MAX_NAME_BYTES",
    "check_bench_numbers",
    "LLAMA_MODEL_TYPES",
    "NotLlamaError",
    "WeightDiff",
    "count_spans",
    "check_config",
    "check_family",
    "check_meta_params",
    "check_model_config",
    "check_model_dir",
    "check_model_name",
    "check_safetensors",
    "looks_like_local_path",
    "parse_json",
    "path_exists",
    "read_config",
    "read_json_object",
    "refuse_weight_mismatch",
    "require_text",
    "require_tokenizer",
]

# model_type values of the Llama family: Llama 2, Code Llama and their fine-tunes all say "llama".
LLAMA_MODEL_TYPES = ("llama",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# The small JSON files transformers reads beside config.json, each optional.
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
_REDOWNLOAD = (
    "Download the model again (or copy the folder again), or use 'tiny' or a Hub id such as "
    "meta-llama/Llama-2-7b-chat-hf."
)


# The longest name one folder or file may have on Linux, macOS and Windows file systems.
MAX_NAME_BYTES = 255


def path_exists(path: str | os.PathLike) -> bool:
    """Return True if path exists; a name no file system takes (too long) does not."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):  # ENAMETOOLONG, or a NUL byte in the name
        return False


def check_model_name(name: str) -> str:
    """Return name stripped; UserFacingError if it cannot be a model name or a folder at all."""
    name = str(name).strip()
    longest = max((len(os.fsencode(part)) for part in name.split("/")), default=0)
    if longest > MAX_NAME_BYTES or "\x00" in name:
        raise UserFacingError(
            f"The model name is {len(name):,} characters long, with a part of {longest:,} bytes "
            f"(or a NUL byte): no Hub id, catalog name or folder has such a name (a folder name "
            f"takes {MAX_NAME_BYTES} bytes at most).",
            "Check what you pasted; give 'tiny', a catalog name (`plan --list`), a Hub id such "
            "as meta-llama/Llama-2-7b-chat-hf, or a folder.",
        )
    return name


def looks_like_local_path(name: str) -> bool:
    """Return True if name is meant as a folder on this machine rather than a Hub id."""
    name = name.strip()
    if not name:
        return False
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name or name == ".":
        return True
    if path_exists(name):
        return True
    return name.count("/") > 1  # a Hub id is exactly owner/name


def _folder(path: str | os.PathLike) -> Path:
    folder = expand_user(path)  # "~nosuchuser/x" is a message, not pathlib's RuntimeError
    refuse_dangling_link(folder, repr(str(folder)), "give the model folder itself")
    if not path_exists(folder):
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
    if not find_regular_file(file, repr(str(file)), "copy the model's config.json in again"):
        raise UserFacingError(
            f"{str(folder)!r} has no config.json, so it is not a Hugging Face model folder.",
            "Pass the folder that holds config.json, the tokenizer files and the weights "
            "(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)).",
        )
    return read_json_object(file, "the folder is damaged", _REDOWNLOAD)


def parse_json(text: str):
    """Return the value a JSON text holds; ValueError saying, in words, why it cannot be read.

    The one JSON parser of this package: besides text that is not JSON, Python refuses a
    number of more than 4,300 digits (a plain ValueError) and nesting thousands of levels deep
    (RecursionError); each gets a reason that reads after "config.json ...".
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise ValueError("is not readable JSON (it is nested thousands of levels deep)") from None
    except ValueError as err:  # a number of more than 4,300 digits (sys.get_int_max_str_digits)
        said = library_message(err, 120).split(";")[0]  # not Python's "use sys.set_int_max..."
        raise ValueError(f"is not readable JSON ({said})") from None


def read_json_object(file: str | os.PathLike, damaged: str, todo: str, shown: str = "") -> dict:
    """Return a JSON file's object; UserFacingError (`damaged`, `todo`) if it is not one.

    `shown` names the file in the message (default: its path). Only a regular file is read: a
    device or a named pipe in its place is named, not read forever.
    """
    shown = shown or repr(str(file))
    if not find_regular_file(file, shown, "copy the file in again"):
        raise UserFacingError(f"{shown} does not exist (or was removed meanwhile).", todo)
    try:
        config = parse_json(Path(file).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        config, problem = None, "is not text"
    except ValueError as err:
        config, problem = None, str(err)
    except OSError as err:
        raise UserFacingError(
            f"Cannot read {shown}: {err.strerror or err}.", "Check its permissions (`ls -l`)."
        ) from None
    else:
        problem = "is not a JSON object"
    if not isinstance(config, dict):
        raise UserFacingError(f"{shown} {problem}: {damaged}.", todo)
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
    if model_type is not None and not isinstance(model_type, str):  # a list, a number...
        raise UserFacingError(
            f"The config.json of {where!r} says model_type={model_type!r}, a "
            f"{type(model_type).__name__}: it must "
            'be a name, such as "llama" for every Llama 2 model.',
            'Set "model_type": "llama" in its config.json, or use the config.json that came '
            "with the model.",
        )
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
    check_model_config(config, str(Path(path) / "config.json"), _REDOWNLOAD)
    return config


# The sizes a Llama config may give, as (Meta's params.json name, largest sane value): several
# times the largest Llama (70B: hidden 8192, 80 layers, 64 heads, feed-forward 28,672; Llama 3's
# 128,256-piece vocabulary), so no real model is refused, and nothing absurd (200,000 layers
# took minutes and gigabytes just to build on the meta device) gets as far as being built.
CONFIG_LIMITS: dict[str, tuple[str | None, int]] = {
    "hidden_size": ("dim", 65_536),
    "intermediate_size": (None, 262_144),
    "num_hidden_layers": ("n_layers", 1_024),
    "num_attention_heads": ("n_heads", 1_024),
    "num_key_value_heads": ("n_kv_heads", 1_024),
    "head_dim": (None, 4_096),
    "vocab_size": ("vocab_size", 1_048_576),
    "max_position_embeddings": (None, 16_777_216),
}
# Numbers that are not sizes: (smallest, largest), both excluded.
_REAL_LIMITS = {"rms_norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12)}


def _whole(where: str, key: str, value, high: int, todo: str) -> int:
    """Return value if it is a whole number from 1 to high; else UserFacingError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserFacingError(
            f"{where} says {key}={value!r}: it must be a whole number, not {type(value).__name__}.",
            todo,
        )
    if not 1 <= value <= high:
        raise UserFacingError(
            f"{where} says {key}={value:,}: it must be from 1 to {high:,} (no Llama model is "
            "near either end).",
            todo,
        )
    return value


def _real(where: str, key: str, value, low: float, high: float, todo: str) -> float:
    """Return value if it is a finite number strictly between low and high; else UserFacingError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low < value < high:
        raise UserFacingError(
            f"{where} says {key}={value!r}: it must be a number above {low:g} and below {high:g}.",
            todo,
        )
    return float(value)


def _check_heads(where: str, hidden: int, heads: int, kv_heads: int, head_dim, todo: str):
    """Raise UserFacingError unless the sizes split into whole (and even) attention heads."""
    if hidden % heads:  # transformers' LlamaConfig refuses it even with its own head_dim
        raise UserFacingError(
            f"{where} says hidden size {hidden:,} with {heads:,} attention heads: {heads:,} "
            "does not divide it, so the heads would not be whole.",
            todo,
        )
    if heads % kv_heads:
        raise UserFacingError(
            f"{where} says {heads:,} attention heads with {kv_heads:,} key/value heads: "
            f"{kv_heads:,} does not divide {heads:,}, so the heads cannot share them.",
            todo,
        )
    if (head_dim or hidden // heads) % 2:
        raise UserFacingError(
            f"{where} gives attention heads of {head_dim or hidden // heads} dimensions: "
            "rotary position embeddings need an even number.",
            todo,
        )


def check_model_config(config: dict, where: str, todo: str = _REDOWNLOAD) -> None:
    """Raise UserFacingError unless a Llama config.json's values make a model transformers builds.

    Checked before anything is built from it: each size a whole number from 1 to its
    `CONFIG_LIMITS` bound, rms_norm_eps and rope_theta positive numbers, the hidden size
    divided by the heads, the heads by the key/value heads; the weights' dtype a floating-point
    type, the special token ids inside the vocabulary, no quantization this project cannot
    load. A size left out takes transformers' default, as loading would. Then transformers
    builds its config and the model on the meta device (no memory), and whatever it still
    refuses is named as this config's fault.
    """
    nullable = ("num_key_value_heads", "head_dim")  # None: "the same as the heads", "derived"
    sizes = {
        key: _whole(where, key, config[key], high, todo)
        for key, (_, high) in CONFIG_LIMITS.items()
        if key in config and not (config[key] is None and key in nullable)
    }
    rope = config.get("rope_parameters")
    if rope is not None and not isinstance(rope, dict):
        raise UserFacingError(f"{where} says rope_parameters={rope!r}: it must be an object.", todo)
    numbers = {**(rope or {}), **config}
    for key, (low, high) in _REAL_LIMITS.items():
        if key in numbers and not (key == "rope_theta" and numbers[key] is None):
            _real(where, key, numbers[key], low, high, todo)
    _check_activation(config.get("hidden_act", "silu"), where, todo)
    _check_dtype(config, where, todo)
    _check_token_ids(config, sizes.get("vocab_size", 32000), where, todo)
    _check_quantization(config.get("quantization_config"), where)
    _check_rope_type(config, where, todo)
    heads = sizes.get("num_attention_heads", 32)
    _check_heads(
        where,
        sizes.get("hidden_size", 4096),
        heads,
        sizes.get("num_key_value_heads", heads),
        sizes.get("head_dim"),
        todo,
    )
    _check_with_transformers(config, where, todo)


# The types a Llama checkpoint's weights are stored in (config.json's "dtype", "torch_dtype"
# before transformers 5): floating-point ones, which transformers can build a model in.
_WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Quantized weights this project loads: bitsandbytes' (what `make_quantization_config` makes).
_QUANT_METHODS = ("bitsandbytes",)


def _check_dtype(config: dict, where: str, todo: str) -> None:
    """Raise UserFacingError unless the weights' dtype is a floating-point type (or unsaid)."""
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is None or value == "auto" or value in _WEIGHT_DTYPES:
            continue
        raise UserFacingError(
            f"{where} says {key}={value!r}: a Llama model's weights are floating-point numbers "
            "(float16, bfloat16 or float32), and transformers builds a model in no other type.",
            f'Set "{key}" to the type the weights are saved in ("float16" for Llama 2), or '
            f"remove it. {todo}",
        )


def _check_token_ids(config: dict, vocab: int, where: str, todo: str) -> None:
    """Raise UserFacingError unless each special token id is null or inside the vocabulary."""
    for key in _SPECIAL_IDS:
        value = config.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]
        for token in ids:
            if token is None or (type(token) is int and 0 <= token < vocab):
                continue
            raise UserFacingError(
                f"{where} says {key}={value!r}: a token id must be a whole number from 0 to "
                f"{vocab - 1:,} (the vocabulary has {vocab:,} pieces), or null. Out of it, the "
                "model could never produce or read that token.",
                f"Llama 2's are bos_token_id 1, eos_token_id 2, pad_token_id null. {todo}",
            )


def _check_quantization(settings, where: str) -> None:
    """Raise UserFacingError if the weights come quantized in a way this project cannot load."""
    if settings is None:
        return
    method = settings.get("quant_method") if isinstance(settings, dict) else None
    if method in _QUANT_METHODS:
        return
    raise UserFacingError(
        f"{where} says its weights are already quantized (quantization_config, quant_method "
        f"{method!r}). This project plans memory for and loads 16-bit Llama 2 weights, which it "
        "quantizes itself with bitsandbytes (4-bit NF4) where a GPU needs it; it cannot load "
        "or plan this model.",
        "Use the model's 16-bit repository (e.g. meta-llama/Llama-2-7b-chat-hf: on a T4 the "
        "plan picks 4-bit NF4 for you), or load this one with transformers directly (it names "
        "the packages it needs).",
    )


def _check_with_transformers(config: dict, where: str, todo: str) -> None:
    """Raise UserFacingError if transformers refuses the config, or cannot build its model.

    transformers 5 checks every field's type and the special token ids when it builds the
    config object, and its message names the field. Then the model is built on the meta device
    (shapes only, no memory, as `plan.count_parameters` does): anything transformers still
    refuses there (a rotary type it has no function for...) is this config's fault.
    """
    from transformers import LlamaConfig

    try:
        built = LlamaConfig.from_dict(config)
    except Exception as err:  # noqa: BLE001 - StrictDataclassError, ValueError, AttributeError...
        cause = err.__cause__ or err
        raise UserFacingError(
            f"{where} is not a valid Llama config: {library_message(cause, named=False)}", todo
        ) from None
    _build_on_meta(built, where, todo)


def _check_rope_type(config: dict, where: str, todo: str) -> None:
    """Raise UserFacingError unless the rotary type is one transformers has a function for.

    Read where transformers reads it: rope_parameters, and rope_scaling (before transformers 5).
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    known = ["default", *sorted(ROPE_INIT_FUNCTIONS)]
    for key in ("rope_parameters", "rope_scaling"):
        rope = config.get(key) or {}
        kind = rope
        if isinstance(rope, dict):
            kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in known:
            raise UserFacingError(
                f"{where} says rope_type={kind!r} (in {key}): transformers knows "
                f"{', '.join(known)}; every Llama 2 uses 'default'.",
                todo,
            )


def _build_on_meta(built, where: str, todo: str) -> None:
    """Raise UserFacingError if transformers cannot build the config's model on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(built)
    except Exception as err:  # noqa: BLE001 - whatever transformers or torch raise: the config's
        raise UserFacingError(
            f"{where} passed the checks of each value, but transformers cannot build a model "
            f"from it ({library_message(err)}).",
            todo,
        ) from None


def _check_activation(name, where: str, todo: str) -> None:
    """Raise UserFacingError unless name is an activation transformers knows (Llama's: silu)."""
    from transformers.activations import ACT2FN

    if not isinstance(name, str) or name not in ACT2FN:
        raise UserFacingError(
            f"{where} says hidden_act={name!r}: transformers knows no such activation (Llama "
            "uses 'silu').",
            todo,
        )


def check_meta_params(params: dict, where: str, todo: str) -> dict:
    """Return Meta's params.json values, checked like a config.json, with defaults filled in.

    Keys: dim, n_layers, n_heads, n_kv_heads, vocab_size (-1: the tokenizer's), multiple_of,
    ffn_dim_multiplier (None or a number), norm_eps, rope_theta. UserFacingError for a missing
    key, a string where a number belongs, a size out of range or heads that do not split.
    """
    limit = {meta: high for _, (meta, high) in CONFIG_LIMITS.items() if meta}
    out = {
        key: _whole(where, key, params.get(key), limit[key], todo)
        for key in ("dim", "n_layers", "n_heads")
    }
    kv = params.get("n_kv_heads")
    out["n_kv_heads"] = (
        out["n_heads"] if kv is None else _whole(where, "n_kv_heads", kv, limit["n_kv_heads"], todo)
    )
    vocab = params.get("vocab_size", -1)
    out["vocab_size"] = (
        -1
        if vocab == -1 and not isinstance(vocab, bool)
        else _whole(where, "vocab_size", vocab, limit["vocab_size"], todo)
    )
    out["multiple_of"] = _whole(where, "multiple_of", params.get("multiple_of", 256), 65_536, todo)
    multiplier = params.get("ffn_dim_multiplier")
    out["ffn_dim_multiplier"] = (
        None
        if multiplier is None
        else _real(where, "ffn_dim_multiplier", multiplier, 0.0, 64.0, todo)
    )
    out["norm_eps"] = _real(
        where, "norm_eps", params.get("norm_eps"), *_REAL_LIMITS["rms_norm_eps"], todo
    )
    theta = params.get("rope_theta")
    out["rope_theta"] = (
        10000.0
        if theta is None
        else _real(where, "rope_theta", theta, *_REAL_LIMITS["rope_theta"], todo)
    )
    _check_heads(where, out["dim"], out["n_heads"], out["n_kv_heads"], None, todo)
    return out


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
            header = parse_json(f.read(n).decode("utf-8"))
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
        if find_regular_file(index, repr(str(index)), "copy the file in again"):
            weight_map = read_json_object(index, "the folder is damaged", _REDOWNLOAD).get(
                "weight_map"
            )
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise UserFacingError(
                    f"{str(index)!r} is not a valid index of weight files.", _REDOWNLOAD
                )
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not _is_file(folder / s)]
            if missing:
                raise UserFacingError(
                    f"{str(folder)!r} lacks {len(missing)} of its {len(shards)} weight files "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}).",
                    "Finish the download (it resumes where it stopped), or copy the missing "
                    "files in.",
                )
            return [folder / s for s in shards]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        found = sorted(p for p in folder.glob(pattern) if _is_file(p))
        if found:
            return found
    return []


def _is_file(path: Path) -> bool:
    """True if a file of a model folder is there; UserFacingError if something else stands there."""
    return find_regular_file(path, repr(str(path)), "copy the file in again")


def check_model_dir(path: str | os.PathLike) -> dict:
    """Check a model folder before loading it; return its config, or raise UserFacingError.

    Checked: config.json is valid JSON of a Llama-family causal LM with sane sizes; the other
    JSON files a loader reads are JSON objects (a link that loops or leads nowhere is named); a
    tokenizer is there (tokenizer.json or tokenizer.model); weights are there and no
    safetensors file is cut short.
    """
    folder = _folder(path)
    config = check_config(folder)
    for name in _SIDE_FILES:
        if _is_file(folder / name):
            read_json_object(folder / name, "the folder is damaged", _REDOWNLOAD)
    if not any([_is_file(folder / name) for name in TOKENIZER_FILES]):
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


# --- the weights against the config, from transformers' loading report -------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Config fields a tensor's size comes from, in the order a mismatch is blamed on them.
_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size")


class WeightDiff(NamedTuple):
    """How a checkpoint's tensors differ from the model its config builds."""

    expected: frozenset[str]  # every weight the config's model has
    missing: frozenset[str]  # expected, absent from the weights: would be random values
    unexpected: frozenset[str]  # in the weights, with no place in the model: left unused
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, weights, config)

    @classmethod
    def from_loading_info(cls, model, info: dict) -> WeightDiff:
        """The diff in transformers' `output_loading_info=True` report for a loaded model."""
        mismatched = []
        for name, found, wanted, *_ in info.get("mismatched_keys") or ():
            mismatched.append((name, tuple(found), tuple(wanted)))
        return cls(
            frozenset(name for name, _ in model.named_parameters()),
            frozenset(info.get("missing_keys") or ()),
            frozenset(info.get("unexpected_keys") or ()),
            tuple(sorted(mismatched)),
        )


def count_spans(numbers: Iterable[int]) -> str:
    """Return whole numbers in words, runs joined: "0 to 3", "0 and 5", "1, 2 and 6 to 9"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    items: list[str] = []
    for low, high in runs:
        if high > low + 1:
            items.append(f"{low} to {high}")
        else:  # one number, or two in a row: each said alone
            items += [str(n) for n in range(low, high + 1)]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _layer(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def _layers_said(diff: WeightDiff, config: dict) -> tuple[list[str], set[int], set[int]]:
    """(what is wrong with whole layers, layers missing whole, layers extra) of a diff."""
    per_layer: dict[int, int] = {}
    for name in diff.expected:
        if (i := _layer(name)) is not None:
            per_layer[i] = per_layer.get(i, 0) + 1
    lacking: dict[int, int] = {}
    for name in diff.missing:
        if (i := _layer(name)) is not None:
            lacking[i] = lacking.get(i, 0) + 1
    gone = {i for i, n in lacking.items() if n == per_layer.get(i)}
    extra = {i for name in diff.unexpected if (i := _layer(name)) is not None} - set(per_layer)
    if not gone and not extra:
        return [], gone, extra
    held = (set(per_layer) - gone) | extra
    said = (
        f"config.json says num_hidden_layers={config.get('num_hidden_layers', len(per_layer))}, "
        f"but the weights hold {len(held)} layer{'s' * (len(held) != 1)}"
        + (f" ({count_spans(held)})" if held else "")
    )
    if gone:
        said += f": layer{'s' * (len(gone) > 1)} {count_spans(gone)} would run on random values"
    if extra:
        said += f"{';' if gone else ':'} layer{'s' * (len(extra) > 1)} {count_spans(extra)} of "
        said += "the weights would go unused"
    return [said], gone, extra


def _shape_said(name: str, found: tuple, wanted: tuple, config: dict) -> tuple[str, str]:
    """(the config field blamed, or the tensor's name; one mismatch in words)."""
    shapes = f"{name} is {' x '.join(map(str, found)) or 'a scalar'} in the weights"
    for field in _SIZE_FIELDS:
        value = config.get(field)
        for have, want in zip(found, wanted, strict=False):
            if have != want and want == value:
                return field, f"config.json says {field}={value:,}, but {shapes}"
    return name, f"{shapes}, {' x '.join(map(str, wanted))} by config.json"


def _shapes_said(diff: WeightDiff, config: dict) -> list[str]:
    """The size mismatches in words: one example per config field blamed, with a count."""
    blamed: dict[str, list[str]] = {}
    for name, found, wanted in diff.mismatched:
        field, text = _shape_said(name, found, wanted, config)
        blamed.setdefault(field, []).append(text)
    said = [
        texts[0] + (f" (and {len(texts) - 1} more tensor{'s' * (len(texts) > 2)})")
        if len(texts) > 1
        else texts[0]
        for texts in blamed.values()
    ]
    return said[:3] + ([f"{len(said) - 3} more tensors differ"] if len(said) > 3 else [])


def refuse_weight_mismatch(diff: WeightDiff, config: dict, where: str) -> None:
    """Raise UserFacingError if the weights do not fill the config's model, exactly.

    A weight missing would be drawn at random (transformers only warns), one left over means
    the model runs without it, and a size that differs is another model: each is named by
    what config.json says and what the weights hold.
    """
    said, gone, extra = _layers_said(diff, config)
    said += _shapes_said(diff, config)
    for names, how in (
        (sorted(n for n in diff.missing if _layer(n) not in gone), "the weights lack"),
        (sorted(n for n in diff.unexpected if _layer(n) not in extra), "the weights hold"),
    ):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            unused = "" if how == "the weights lack" else ", for which the model has no place"
            said.append(f"{how} {', '.join(names[:3])}{more}{unused}")
    if said:
        raise UserFacingError(
            f"{where}: its config.json and its weights disagree: {'; '.join(said)}.",
            "They come from different models, or config.json was edited: put back the "
            "config.json that came with these weights (or download the model again). A model "
            "its weights do not fill exactly would answer from random values, or without what "
            "it learned, so it is not used.",
        )


def require_text(value, name: str, function: str) -> str:
    """Return value if it is a str; else TypeError naming the function and the argument.

    For a Python caller's argument: a library argument error is a TypeError or ValueError, as
    in Python's own functions; UserFacingError is for what is fixed outside the code.
    """
    if not isinstance(value, str):
        raise TypeError(f"{function}: {name} must be a string, not {type(value).__name__}.")
    return value


def require_tokenizer(tokenizer, function: str):
    """Return tokenizer if it is a transformers tokenizer (callable, with a vocabulary and BOS)."""
    if not (callable(tokenizer) and hasattr(tokenizer, "get_vocab")) or tokenizer is None:
        raise TypeError(
            f"{function}: tokenizer must be a transformers tokenizer (e.g. "
            f"AutoTokenizer.from_pretrained('codellama/CodeLlama-7b-hf')), not "
            f"{type(tokenizer).__name__}."
        )
    return tokenizer


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
