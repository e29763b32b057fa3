"""Checks on a local model folder before anything loads it: config, tokenizer, weights, family.

transformers and safetensors answer a damaged folder with a traceback from deep inside (a JSON
decoder, a Rust deserializer), and load a GPT-2 or BERT folder without complaint. These checks
read only the small files and the safetensors headers (no weights), so they take milliseconds,
and each problem becomes a `UserFacingError` that says what is wrong and what to do.

A config.json's values are checked by `config_values.check_model_config`, and the weights
against the config after loading by `weight_report.refuse_weight_mismatch`.

Every JSON file is read by one reader (`read_json_object`, `parse_json`): a file that is not
JSON, a number Python will not read (over 4,300 digits), nesting thousands deep, a device or a
named pipe in a file's place, each is named, not a traceback or a read that never ends.

The benchmark's numbers are checked here too (`check_bench_numbers`), before anything loads.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .config_values import REDOWNLOAD, check_model_config
from .errors import UserFacingError
from .faults import expand_user, find_regular_file, library_message, refuse_dangling_link
from .renames import renamed_keywords

__all__ = [
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "MAX_NAME_BYTES",
    "check_bench_numbers",
    "LLAMA_MODEL_TYPES",
    "NotLlamaError",
    "check_config",
    "check_family",
    "check_model_dir",
    "check_model_name",
    "check_safetensors",
    "looks_like_local_path",
    "parse_json",
    "path_exists",
    "read_config",
    "read_json_object",
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
    return read_json_object(file, "the folder is damaged", REDOWNLOAD)


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
    check_model_config(config, str(Path(path) / "config.json"), REDOWNLOAD)
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
            header = parse_json(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            end = max(end, int(info["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        raise UserFacingError(f"{what}: {err}.", REDOWNLOAD) from None
    except OSError as err:
        raise UserFacingError(
            f"Cannot read {str(file)!r}: {err.strerror or err}.", "Check its permissions."
        ) from None
    if size < 8 + n + end:
        raise UserFacingError(
            f"{what}: it is truncated ({size:,} bytes of the {8 + n + end:,} its header "
            "describes), as after an interrupted download or a full disk.",
            REDOWNLOAD,
        )


def _weight_files(folder: Path) -> list[Path]:
    """Return the weight files a loader would read, following a sharded checkpoint's index."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if find_regular_file(index, repr(str(index)), "copy the file in again"):
            weight_map = read_json_object(index, "the folder is damaged", REDOWNLOAD).get(
                "weight_map"
            )
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise UserFacingError(
                    f"{str(index)!r} is not a valid index of weight files.", REDOWNLOAD
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
            read_json_object(folder / name, "the folder is damaged", REDOWNLOAD)
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
            raise UserFacingError(f"{str(file)!r} is empty.", REDOWNLOAD)
    return config


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
