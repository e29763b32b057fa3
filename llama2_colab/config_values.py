"""The values of a model config, checked before anything is built from them.

`check_model_config` (a config.json, local or from the Hub) and `check_meta_params` (Meta's
params.json): whole numbers in sane ranges that split into whole heads, so a damaged config is
named in milliseconds instead of a traceback, or a hang while 200,000 layers are built on the
meta device. Then the fields that are names or ids (the weights' dtype, the special tokens'
ids, the rotary type, a quantization) are checked against what transformers and the vocabulary
take, and last the model is built on the meta device (shapes only, no memory), as the plan
does, under a guard: whatever else transformers refuses is named as this config's fault.
"""

from __future__ import annotations

import math

from .errors import UserFacingError
from .faults import library_message

__all__ = ["CONFIG_LIMITS", "REDOWNLOAD", "check_meta_params", "check_model_config"]

REDOWNLOAD = (
    "Download the model again (or copy the folder again), or use 'tiny' or a Hub id such as "
    "meta-llama/Llama-2-7b-chat-hf."
)

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


def check_model_config(config: dict, where: str, todo: str = REDOWNLOAD) -> None:
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
