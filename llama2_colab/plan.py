"""A loading plan: will this model fit this machine, in which format, with how much context.

Pure arithmetic on facts, so a T4 can be planned for on any machine:

- parameters are counted exactly, by building the model from its config on the meta device
  (shapes only, no memory, no download);
- weights take 2 bytes per parameter in float16/bfloat16, about 1 in int8 and about 0.53 in
  4-bit NF4 (what stays unquantized is counted separately, see `weight_bytes`);
- the KV cache takes `2 (K and V) x layers x KV heads x head dim x bytes` per token of context;
- a GPU's usable memory is its total minus `GPU_RESERVE_BYTES` for the CUDA context, the
  activations of a forward pass and allocator slack.

`make_plan` decides; `models.load_with_plan` acts on the decision.

A second layer plans one model split over N GPUs with tensor parallelism (`make_tp_plan`): each
attention and MLP layer and the output head are cut N ways, so each GPU holds about 1/N of the
weights and of the KV cache, and N must divide the attention and KV head counts. It has the same
three parts: arithmetic (`valid_tp_sizes`, `shard_weight_bytes`), the choice, the wording.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .auth import find_token
from .catalog import did_you_mean, find_entry
from .checks import check_config, check_model_name, path_exists
from .errors import UserFacingError
from .faults import expand_user
from .hub import fetch_config
from .renames import renamed_attribute
from .runtime import GPU_PRESETS, T4_MENU_PATH, GiB, RuntimeFacts, recommend_settings
from .tiny import ensure_tiny_llama

__all__ = [
    "GPU_RESERVE_BYTES",
    "MIN_CONTEXT_TOKENS",
    "HOST_OVERHEAD_BYTES",
    "NF4_BLOCK_SIZE",
    "ParamCounts",
    "LoadPlan",
    "PlanChoice",
    "format_label",
    "load_config",
    "count_parameters",
    "weight_bytes",
    "kv_bytes_per_token",
    "make_plan",
    "format_plan",
    "TensorParallelPlan",
    "valid_tp_sizes",
    "shard_weight_bytes",
    "make_tp_plan",
    "format_tp_plan",
]

MiB = 1024**2

# CUDA context + cuBLAS workspace take about 0.3-0.5 GiB of the card before any tensor exists;
# a forward pass over a long prompt needs a few hundred MiB of activations (SDPA never builds
# the L x L score matrix; the MLP's intermediate for 2k tokens of 13B is ~170 MiB); the caching
# allocator loses some more to fragmentation. 1 GiB covers these with a little slack.
GPU_RESERVE_BYTES = 1 * GiB
# A plan that leaves room for fewer tokens than this is not useful for chatting.
MIN_CONTEXT_TOKENS = 1024
# Host RAM that Python, torch, transformers and the CUDA libraries take before any weight.
HOST_OVERHEAD_BYTES = 3 * GiB
# bitsandbytes 4-bit: one absmax per block of 64 weights. With double quantization the absmax is
# itself stored in 8 bits, with one float32 scale per 256 absmax values.
NF4_BLOCK_SIZE = 64
NF4_DOUBLE_QUANT_BLOCK = 256

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts of a model, split by what 8/4-bit quantization does to them."""

    total: int
    quantizable: int  # weights of the Linear layers inside the decoder blocks
    kept: int  # embeddings, lm_head, norms: stay in 16 bits when the rest is quantized
    quantizable_rows: int  # output rows of those Linear layers (int8 keeps one scale per row)
    largest_tensor: int  # elements of the biggest single tensor (host RAM while loading)
    quantizable_numels: tuple[int, ...] = ()  # per Linear weight: bitsandbytes packs each alone


@dataclass(frozen=True)
class LoadPlan:
    """How to load one model on one machine, the numbers behind it, and why."""

    model: str
    params: int
    dtype: str  # the load/compute dtype: "float16" | "bfloat16" | "float32"
    quantization: str | None  # None | "int8" | "nf4"
    weights_bytes: int  # of the chosen format
    kv_bytes_per_token: int
    context_window: int  # tokens of context that fit next to the weights (<= the model's own)
    fits: bool
    reason: str
    model_context_window: int = 0  # the model's own (max_position_embeddings)
    device: str = "cuda"  # "cuda" | "cpu"
    gpu: str | None = None
    usable_memory_bytes: int = 0
    reserve_bytes: int = 0
    bytes_by_format: dict = field(default_factory=dict)  # {"float16": .., "int8": .., "nf4": ..}
    ram_needed_bytes: int = 0
    ram_available_bytes: int = 0
    download_bytes: int = 0  # the 16-bit safetensors you download from the Hub
    advice: str = ""  # what would make it fit, or what to do after an out-of-memory error

    max_context_tokens = renamed_attribute("max_context_tokens", "context_window")
    model_context_tokens = renamed_attribute("model_context_tokens", "model_context_window")

    @property
    def format_label(self) -> str:
        """The chosen format in words, e.g. "float16" or "4-bit NF4, float16 compute"."""
        return format_label(self.dtype, self.quantization)

    def to_dict(self) -> dict:
        """Return the plan as a JSON-ready dict."""
        return asdict(self)


def load_config(model_name: str):
    """Return (transformers config, canonical name) for "tiny", a catalog name or a local dir."""
    from transformers import AutoConfig, LlamaConfig

    name = check_model_name(model_name)
    if name.lower() == "tiny":
        return AutoConfig.from_pretrained(ensure_tiny_llama()), "tiny"
    entry = find_entry(name)
    if entry is not None:
        canonical = entry.id if name.lower() == entry.id.lower() else name
        return LlamaConfig(**entry.config), canonical
    path = expand_user(name)
    if path_exists(path / "config.json"):
        check_config(path)  # valid JSON, Llama family, sane sizes: a message, not a traceback
        return AutoConfig.from_pretrained(path), name
    if name.count("/") == 1 and not path_exists(path):
        # Checked (JSON, Llama family, sane sizes) before anything is built from it.
        return LlamaConfig.from_dict(fetch_config(name, find_token())), name
    raise UserFacingError(
        f"No architecture known for {name!r}: it is not in the catalog and not a local "
        f"directory with a config.json. {did_you_mean(name)}".rstrip(),
        "Use a catalog name (`python -m llama2_colab plan --list`), 'tiny', or a local model "
        "directory.",
    )


def count_parameters(config) -> ParamCounts:
    """Count the parameters of a config's model exactly, building it on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = quantizable = rows = largest = 0
    numels = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            quantizable += module.weight.numel()
            rows += module.weight.shape[0]
            numels.append(module.weight.numel())
    for param in model.parameters():
        total += param.numel()
        largest = max(largest, param.numel())
    return ParamCounts(total, quantizable, total - quantizable, rows, largest, tuple(numels))


def weight_bytes(counts: ParamCounts, dtype: str, quantization: str | None) -> int:
    """Return the bytes the weights take in GPU memory in a format.

    - None: every parameter in `dtype` (2 bytes in float16/bfloat16, 4 in float32).
    - "int8" (LLM.int8): 1 byte per quantizable weight plus one float32 scale per output row;
      embeddings, lm_head and norms stay in `dtype`.
    - "nf4": half a byte per quantizable weight plus the block scales: one float32 absmax per 64
      weights (0.0625 byte/weight), or with double quantization one byte per 64 weights and one
      float32 per 64 x 256 (about 0.0159 byte/weight); the rest stays in `dtype`. Each
      Linear layer is packed on its own, as bitsandbytes does. Not counted: a 1 KiB lookup table
      per layer (under 0.3 MiB for a whole 7B model).
    """
    size = _DTYPE_BYTES[dtype]
    kept = counts.kept * size
    if quantization is None:
        return counts.total * size
    if quantization == "int8":
        return kept + counts.quantizable + 4 * counts.quantizable_rows
    if quantization in ("nf4", "nf4-no-dq"):
        total = kept
        for numel in counts.quantizable_numels or (counts.quantizable,):
            blocks = math.ceil(numel / NF4_BLOCK_SIZE)
            if quantization == "nf4":
                scales = blocks + 4 * math.ceil(blocks / NF4_DOUBLE_QUANT_BLOCK)
            else:
                scales = 4 * blocks
            total += math.ceil(numel / 2) + scales
        return total
    raise ValueError(f"unknown quantization {quantization!r}")


def kv_bytes_per_token(config, dtype: str) -> int:
    """Return the KV-cache bytes one token of context takes: 2 x layers x KV heads x head dim."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * _DTYPE_BYTES[dtype]


def _gib(n: int) -> str:
    """Bytes in GiB with two decimals, or in MiB/KiB when smaller (the tiny model)."""
    if n >= GiB // 10 or n == 0:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    return f"{n / 1024:.1f} KiB"


def format_label(dtype: str, quantization: str | None) -> str:
    """Return how the plan names a format: "float16", "int8 (LLM.int8)" or "4-bit NF4, ..."."""
    if quantization is None:
        return dtype
    if quantization == "int8":
        return "int8 (LLM.int8)"
    return f"4-bit NF4, {dtype} compute"


@dataclass(frozen=True)
class PlanChoice:
    """The part of a plan that depends on the machine: the format picked and the room it leaves."""

    dtype: str  # the load/compute dtype
    quantization: str | None  # None | "int8" | "nf4"
    weights_bytes: int  # of that format
    kv_bytes_per_token: int
    context_window: int  # tokens of context that fit next to the weights
    usable_bytes: int  # the device's memory minus the reserve
    reserve_bytes: int  # CUDA context and activations (GPU), or Python and libraries (CPU)
    fits: bool  # the weights plus MIN_CONTEXT_TOKENS of KV cache fit in the usable bytes


def _usable(facts: RuntimeFacts) -> tuple[int, int]:
    """(usable bytes, reserve) of the device the model would live on."""
    if facts.gpu is None:
        return max(0, facts.ram_available_bytes - HOST_OVERHEAD_BYTES), HOST_OVERHEAD_BYTES
    return max(0, facts.gpu.total_memory_bytes - GPU_RESERVE_BYTES), GPU_RESERVE_BYTES


def _context(usable: int, weights: int, kv: int, window: int) -> int:
    return max(0, min(window, (usable - weights) // kv)) if usable > weights else 0


def _candidates(quantization: str, facts: RuntimeFacts) -> list[str | None]:
    """The formats to try, smallest change first."""
    if quantization != "auto":
        return [None if quantization == "none" else quantization]
    if facts.gpu is None:
        return [None]  # bitsandbytes on the CPU works but is far too slow for a real model
    return [None, "nf4"]  # int8 is never chosen: NF4 is smaller and faster


def _choose(
    counts: ParamCounts, config, facts: RuntimeFacts, quantization: str, dtype: str | None = None
) -> PlanChoice:
    """Pick a format on one machine: the first candidate that fits, else the last one tried."""
    dtype = dtype or recommend_settings(facts).dtype
    usable, reserve = _usable(facts)
    kv = kv_bytes_per_token(config, dtype)
    window = int(getattr(config, "max_position_embeddings", 4096))
    needed = min(MIN_CONTEXT_TOKENS, window)
    for quant in _candidates(quantization, facts):
        weights = weight_bytes(counts, dtype, quant)
        fits = weights + needed * kv <= usable
        if fits:
            break
    context = _context(usable, weights, kv, window)
    return PlanChoice(dtype, quant, weights, kv, context, usable, reserve, fits)


def _what_would_fit(counts: ParamCounts, config, facts: RuntimeFacts) -> str:
    """Say which single preset GPU would run the model, and how many of this GPU would."""
    parts = []
    for name, preset in GPU_PRESETS.items():
        if preset.gpu is None:
            continue
        choice = _choose(counts, config, preset, "auto")
        if choice.fits:
            parts.append(
                f"one {name} ({preset.gpu.total_memory_bytes / GiB:.0f} GiB) runs it in "
                f"{format_label(choice.dtype, choice.quantization)} with "
                f"{choice.context_window:,} tokens of context"
            )
            break
    if facts.gpu is not None:
        for quant in ("nf4", "none"):
            choice = _choose(counts, config, facts, quant)
            need = choice.weights_bytes + MIN_CONTEXT_TOKENS * choice.kv_bytes_per_token
            n = math.ceil(need / choice.usable_bytes) if choice.usable_bytes else 0
            if n > 1:
                parts.append(
                    f"{n} x {facts.gpu.name} in {format_label(choice.dtype, choice.quantization)}"
                    " (device_map='auto' splits the layers)"
                )
    if not parts:
        return (
            "No single GPU in the presets holds it: split it across several GPUs with tensor "
            "parallelism (`plan MODEL --gpu A100-80GB --gpus 2` plans it)."
        )
    return "What would fit: " + "; or ".join(parts) + "."


def _ram_needed(counts: ParamCounts, choice: PlanChoice, facts: RuntimeFacts) -> int:
    """Host RAM while loading: safetensors go tensor by tensor to the GPU, so the peak is the
    libraries plus a couple of tensors. On the CPU the whole model lives in RAM."""
    if facts.gpu is not None:
        return HOST_OVERHEAD_BYTES + 2 * counts.largest_tensor * 2
    return (
        HOST_OVERHEAD_BYTES + choice.weights_bytes + MIN_CONTEXT_TOKENS * choice.kv_bytes_per_token
    )


def _describe_sizes(name: str, counts: ParamCounts, config, by_format: dict, c: PlanChoice) -> list:
    """Wording: the model's size in each format and its KV cache per token."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return [
        f"{name} has {counts.total:,} parameters: {_gib(by_format[c.dtype])} in {c.dtype}, "
        f"{_gib(by_format['int8'])} in int8, {_gib(by_format['nf4'])} in 4-bit NF4.",
        f"KV cache: {_gib(c.kv_bytes_per_token)} per token of context in {c.dtype} "
        f"({config.num_hidden_layers} layers x {kv_heads} KV heads).",
    ]


def _describe_device(facts: RuntimeFacts, c: PlanChoice) -> str:
    """Wording: how much of the device the model may use, and what is held back."""
    if facts.gpu is not None:
        return (
            f"{facts.gpu.name}: {_gib(c.usable_bytes)} usable "
            f"({_gib(facts.gpu.total_memory_bytes)} minus {_gib(c.reserve_bytes)} for the CUDA "
            "context and activations)."
        )
    return (
        f"No GPU: the model would live in system RAM, {_gib(c.usable_bytes)} usable "
        f"({_gib(facts.ram_available_bytes)} available minus {_gib(c.reserve_bytes)} for "
        "Python and the libraries)."
    )


def _describe_verdict(c: PlanChoice, window: int) -> str:
    """Wording: the format chosen and the context it leaves, or why it does not fit."""
    fmt = format_label(c.dtype, c.quantization)
    if not c.fits:
        return (
            f"Does not fit: {fmt} needs {_gib(c.weights_bytes)} for the weights alone plus "
            f"{_gib(MIN_CONTEXT_TOKENS * c.kv_bytes_per_token)} for {MIN_CONTEXT_TOKENS:,} "
            "tokens of context."
        )
    extra = ""
    if c.quantization == "nf4":
        extra = f" ({c.dtype} does not fit with room for {MIN_CONTEXT_TOKENS:,} tokens)"
    return (
        f"Plan: {fmt}{extra}; {_gib(c.weights_bytes)} of weights leaves room for "
        f"{c.context_window:,} tokens of context (the model allows {window:,})."
    )


def _advise(counts, config, facts: RuntimeFacts, c: PlanChoice, ram_ok: bool) -> str:
    """Decision's advice: what would make it fit, or what to do after an out-of-memory error."""
    if not c.fits:
        where = f"Use a GPU runtime (on Colab: {T4_MENU_PATH}). " if facts.gpu is None else ""
        return where + _what_would_fit(counts, config, facts)
    if not ram_ok:
        return "Use a runtime with more system RAM, and load safetensors (never .bin shards)."
    if facts.gpu is None:
        return f"On a GPU this runs much faster: {T4_MENU_PATH}."
    return (
        "If you still run out of GPU memory: shorten the conversation (fewer tokens of "
        f"context than {c.context_window:,}), lower max_new_tokens, restart the runtime to "
        "free memory held by an earlier model"
        + ("" if c.quantization == "nf4" else ", or load in 4-bit NF4")
        + "."
    )


def _check_plan_args(quantization: str, dtype: str | None) -> None:
    if quantization not in ("auto", "none", "int8", "nf4"):
        raise ValueError(f"quantization must be auto, none, int8 or nf4, not {quantization!r}")
    if dtype is not None and dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype must be float16, bfloat16 or float32, not {dtype!r}")


def make_plan(
    model_name: str, facts: RuntimeFacts, quantization: str = "auto", dtype: str | None = None
) -> LoadPlan:
    """Decide how to load a model on a machine: format, context room, and whether it fits.

    `quantization` is "auto" (16-bit if it fits with room for MIN_CONTEXT_TOKENS of context,
    else 4-bit NF4, else does not fit), or forces "none", "int8" or "nf4". `dtype` forces the
    load/compute dtype; None takes the runtime's recommendation (float16 on a T4).
    """
    _check_plan_args(quantization, dtype)
    config, name = load_config(model_name)
    counts = count_parameters(config)
    c = _choose(counts, config, facts, quantization, dtype)
    by_format = {q or c.dtype: weight_bytes(counts, c.dtype, q) for q in (None, "int8", "nf4")}
    window = int(getattr(config, "max_position_embeddings", 4096))
    ram_needed = _ram_needed(counts, c, facts)
    ram_ok = ram_needed <= facts.ram_available_bytes
    lines = _describe_sizes(name, counts, config, by_format, c)
    lines += [_describe_device(facts, c), _describe_verdict(c, window)]
    if not ram_ok:
        lines.append(
            f"System RAM: loading needs about {_gib(ram_needed)}, only "
            f"{_gib(facts.ram_available_bytes)} is available: the session would crash."
        )
    fits = c.fits and ram_ok
    return LoadPlan(
        model=name,
        params=counts.total,
        dtype=c.dtype,
        quantization=c.quantization,
        weights_bytes=c.weights_bytes,
        kv_bytes_per_token=c.kv_bytes_per_token,
        context_window=c.context_window if fits else 0,
        fits=fits,
        reason=" ".join(lines),
        model_context_window=window,
        device="cuda" if facts.gpu is not None else "cpu",
        gpu=facts.gpu.name if facts.gpu is not None else None,
        usable_memory_bytes=c.usable_bytes,
        reserve_bytes=c.reserve_bytes,
        bytes_by_format=by_format,
        ram_needed_bytes=ram_needed,
        ram_available_bytes=facts.ram_available_bytes,
        download_bytes=counts.total * 2,
        advice=_advise(counts, config, facts, c, ram_ok),
    )


def format_plan(plan: LoadPlan) -> str:
    """Return the plan as a short text report (what `python -m llama2_colab plan` prints)."""
    fmt = plan.format_label
    rows = [
        f"Model      : {plan.model}",
        f"Parameters : {plan.params:,}",
        "Weights    : " + ", ".join(f"{k} {_gib(v)}" for k, v in plan.bytes_by_format.items()),
        f"KV cache   : {plan.kv_bytes_per_token:,} bytes per token "
        f"({_gib(plan.kv_bytes_per_token)})",
        f"Device     : {plan.gpu or 'CPU'}, {_gib(plan.usable_memory_bytes)} usable",
        f"Plan       : {fmt}, {_gib(plan.weights_bytes)} of weights",
        f"Context    : {plan.context_window:,} tokens fit "
        f"(model limit {plan.model_context_window:,})",
        f"Host RAM   : needs ~{_gib(plan.ram_needed_bytes)}, "
        f"{_gib(plan.ram_available_bytes)} available",
        f"Fits       : {'yes' if plan.fits else 'NO'}",
        f"Why        : {plan.reason}",
    ]
    if plan.advice:
        rows.append(f"Advice     : {plan.advice}")
    return "\n".join(rows)


# -- Tensor parallelism: one model split over N GPUs ------------------------------------------
# Arithmetic. transformers' Llama tp_plan cuts q/k/v/gate/up column-wise, o/down row-wise and
# lm_head column-wise; the embeddings and the norms stay whole on every GPU (vLLM also cuts the
# embeddings, so it needs a little less than this plan counts).


@dataclass(frozen=True)
class TensorParallelPlan:
    """How one model splits over N GPUs with tensor parallelism: the per-GPU figures, and why."""

    model: str
    gpus: int  # N: the tensor-parallel size, one process per GPU
    valid: bool  # N divides the attention heads and the KV heads
    valid_sizes: tuple[int, ...]  # every N that does
    attention_heads: int
    kv_heads: int
    dtype: str
    quantization: str | None
    weights_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    usable_memory_bytes_per_gpu: int
    context_window: int  # tokens of context that fit next to each GPU's share of the weights
    model_context_window: int
    fits: bool
    reason: str
    advice: str
    gpu: str | None = None  # the GPU's name; None: N processes on the CPU
    device: str = "cuda"
    weights_bytes: int = 0  # the whole model in the chosen format, for comparison
    ram_needed_bytes: int = 0  # host RAM for N processes while loading
    params: int = 0  # of the whole model

    @property
    def format_label(self) -> str:
        """The chosen format in words, e.g. "bfloat16" or "4-bit NF4, float16 compute"."""
        return format_label(self.dtype, self.quantization)

    def to_dict(self) -> dict:
        """Return the plan as a JSON-ready dict: `gpus`, `tensor_parallel`, per-GPU figures."""
        data = asdict(self)
        data["tensor_parallel"] = {
            "size": self.gpus,
            "valid": self.valid,
            "valid_sizes": list(self.valid_sizes),
            "attention_heads": self.attention_heads,
            "kv_heads": self.kv_heads,
        }
        for key in ("valid", "valid_sizes", "attention_heads", "kv_heads"):
            del data[key]
        return data


def _heads(config) -> tuple[int, int]:
    """(attention heads, KV heads) of a config."""
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads


def valid_tp_sizes(config) -> tuple[int, ...]:
    """Return every N that tensor parallelism can split the model into: N divides both head counts.

    Each GPU computes whole attention heads and holds whole KV heads, so N must divide the
    attention heads (64 for 70B) and the KV heads (8 for 70B, which has grouped-query attention).
    """
    common = math.gcd(*_heads(config))
    return tuple(n for n in range(1, common + 1) if common % n == 0)


def shard_weight_bytes(
    counts: ParamCounts, config, dtype: str, quantization: str | None, n: int
) -> int:
    """Return the weight bytes one GPU holds when tensor parallelism splits the model n ways.

    The decoder's Linear layers (in the format, quantized or not) and lm_head are split n ways;
    the embeddings and the norms are whole on every GPU.
    """
    size = _DTYPE_BYTES[dtype]
    head = 0 if getattr(config, "tie_word_embeddings", False) else config.vocab_size
    head *= config.hidden_size
    layers = weight_bytes(counts, dtype, quantization) - counts.kept * size
    return math.ceil(layers / n) + math.ceil(head * size / n) + (counts.kept - head) * size


# The choice.


def _usable_per_process(facts: RuntimeFacts, n: int) -> tuple[int, int]:
    """(usable bytes, reserve) of each of n devices: n GPUs, or n processes sharing the RAM."""
    if facts.gpu is not None:
        return _usable(facts)
    usable = max(0, facts.ram_available_bytes - n * HOST_OVERHEAD_BYTES) // n
    return usable, HOST_OVERHEAD_BYTES


def _choose_tp(
    counts: ParamCounts, config, facts: RuntimeFacts, n: int, quantization: str, dtype: str | None
) -> PlanChoice:
    """Pick a format for n GPUs: the first candidate whose share fits each GPU."""
    dtype = dtype or recommend_settings(facts).dtype
    usable, reserve = _usable_per_process(facts, n)
    kv = math.ceil(kv_bytes_per_token(config, dtype) / n)
    window = int(getattr(config, "max_position_embeddings", 4096))
    needed = min(MIN_CONTEXT_TOKENS, window)
    for quant in _candidates(quantization, facts):
        weights = shard_weight_bytes(counts, config, dtype, quant, n)
        fits = weights + needed * kv <= usable
        if fits:
            break
    context = _context(usable, weights, kv, window)
    return PlanChoice(dtype, quant, weights, kv, context, usable, reserve, fits)


# The wording.


def _describe_tp_split(name: str, config, n: int, facts: RuntimeFacts, valid: tuple) -> str:
    """Wording: what is split, and whether n is a valid split of this model."""
    heads, kv_heads = _heads(config)
    where = f"{n} x {facts.gpu.name}" if facts.gpu is not None else f"{n} CPU process(es)"
    sizes = ", ".join(str(v) for v in valid)
    if n not in valid:
        check = (
            f"{n} is NOT a valid split: N must divide both its {heads} attention heads and its "
            f"{kv_heads} KV heads"
        )
    else:
        check = f"{n} divides its {heads} attention heads and {kv_heads} KV heads"
    return (
        f"{name} over {where} with tensor parallelism: every attention and MLP layer and the "
        f"output head are cut into {n} slice(s), one per device; the embeddings and norms stay "
        f"whole on each. {check} (valid: {sizes})."
    )


def _describe_tp_share(c: PlanChoice, n: int, window: int, valid: bool, device: str) -> str:
    """Wording: each device's share, and the context it leaves or why it does not fit."""
    fmt = format_label(c.dtype, c.quantization)
    share = (
        f"Each {device} holds {_gib(c.weights_bytes)} of weights in {fmt} and "
        f"{_gib(c.kv_bytes_per_token)} of KV cache per token (1/{n} of the KV heads), "
        f"{_gib(c.usable_bytes)} usable."
    )
    if not valid:
        return share
    if not c.fits:
        return share + (
            f" Does not fit: that share plus {MIN_CONTEXT_TOKENS:,} tokens of context needs "
            f"{_gib(c.weights_bytes + MIN_CONTEXT_TOKENS * c.kv_bytes_per_token)}."
        )
    return share + (
        f" Plan: room for {c.context_window:,} tokens of context (the model allows {window:,})."
    )


def _advise_tp(name, counts, config, facts, n: int, c: PlanChoice, valid: tuple) -> str:
    """Decision's advice: a valid N, more GPUs, or the commands that run the plan."""
    if n not in valid:
        choices = [str(v) for v in valid if v > 1] or ["1"]
        listed = ", ".join(choices[:-1]) + " or " if len(choices) > 1 else ""
        return f"Use --gpus {listed}{choices[-1]}."
    if not c.fits:
        for more in (v for v in valid if v > n):
            if _choose_tp(counts, config, facts, more, "auto", c.dtype).fits:
                return f"{more} of these GPUs would hold it: --gpus {more}."
        return "No valid split over this GPU holds it: plan for a bigger GPU (--gpu H100)."
    nf4 = ""
    if c.quantization == "nf4":
        nf4 = (
            " 4-bit NF4 across GPUs: vLLM quantizes while loading (--quantization bitsandbytes);"
            " transformers' tensor parallelism loads 16-bit weights only."
        )
    return (
        f"Run it: `torchrun --nproc-per-node {n} -m llama2_colab demo PROMPT --model {name}` "
        f"(transformers' tensor parallelism), or serve it with vLLM's --tensor-parallel-size {n}"
        f" (docs/serving.md).{nf4}"
    )


def make_tp_plan(
    model_name: str,
    facts: RuntimeFacts,
    gpus: int,
    quantization: str = "auto",
    dtype: str | None = None,
) -> TensorParallelPlan:
    """Decide how a model splits over `gpus` GPUs like facts' GPU (or CPU processes), and why."""
    _check_plan_args(quantization, dtype)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a whole number of at least 1, not {gpus!r}")
    config, name = load_config(model_name)
    counts = count_parameters(config)
    valid = valid_tp_sizes(config)
    c = _choose_tp(counts, config, facts, gpus, quantization, dtype)
    window = int(getattr(config, "max_position_embeddings", 4096))
    heads, kv_heads = _heads(config)
    fits = c.fits and gpus in valid
    device = "GPU" if facts.gpu is not None else "process"
    lines = [
        _describe_tp_split(name, config, gpus, facts, valid),
        _describe_tp_share(c, gpus, window, gpus in valid, device),
    ]
    return TensorParallelPlan(
        model=name,
        gpus=gpus,
        valid=gpus in valid,
        valid_sizes=valid,
        attention_heads=heads,
        kv_heads=kv_heads,
        dtype=c.dtype,
        quantization=c.quantization,
        weights_bytes_per_gpu=c.weights_bytes,
        kv_bytes_per_token_per_gpu=c.kv_bytes_per_token,
        usable_memory_bytes_per_gpu=c.usable_bytes,
        context_window=c.context_window if fits else 0,
        model_context_window=window,
        fits=fits,
        reason=" ".join(lines),
        advice=_advise_tp(name, counts, config, facts, gpus, c, valid),
        gpu=facts.gpu.name if facts.gpu is not None else None,
        device="cuda" if facts.gpu is not None else "cpu",
        weights_bytes=weight_bytes(counts, c.dtype, c.quantization),
        ram_needed_bytes=gpus * (HOST_OVERHEAD_BYTES + 4 * counts.largest_tensor),
        params=counts.total,
    )


def format_tp_plan(plan: TensorParallelPlan) -> str:
    """Return a tensor-parallel plan as a short text report (`plan MODEL --gpus N`)."""
    where = f"{plan.gpus} x {plan.gpu}" if plan.gpu else f"{plan.gpus} CPU process(es)"
    valid = ", ".join(str(v) for v in plan.valid_sizes)
    rows = [
        f"Model      : {plan.model}",
        f"GPUs       : {where}, tensor parallel size {plan.gpus}",
        f"Valid N    : {valid} ({plan.attention_heads} attention heads, {plan.kv_heads} KV heads)"
        + ("" if plan.valid else f"; {plan.gpus} is not one of them"),
        f"Format     : {plan.format_label} ({_gib(plan.weights_bytes)} for the whole model)",
        f"Per GPU    : {_gib(plan.weights_bytes_per_gpu)} of weights, "
        f"{_gib(plan.kv_bytes_per_token_per_gpu)} of KV cache per token, "
        f"{_gib(plan.usable_memory_bytes_per_gpu)} usable",
        f"Context    : {plan.context_window:,} tokens fit "
        f"(model limit {plan.model_context_window:,})",
        f"Host RAM   : ~{_gib(plan.ram_needed_bytes)} for {plan.gpus} process(es) while loading",
        f"Fits       : {'yes' if plan.fits else 'NO'}",
        f"Why        : {plan.reason}",
        f"Advice     : {plan.advice}",
    ]
    return "\n".join(rows)
