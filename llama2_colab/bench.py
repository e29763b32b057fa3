"""Measured speed: this package's generation against plain transformers and the bandwidth limit.

`bench_model` loads (or builds with random weights) one model and hands it to `run_bench`, which
times batch-1 greedy decoding of a fixed number of new tokens after a 512-token prompt, through:

- `package`: `generation.stream_generate`, the path every notebook, the demo and the chat use;
- `baseline`: a `transformers` `text-generation` pipeline with default settings, called the way
  the seed article calls it (text in, text out), on the very same model object;
- any opt-in fast paths asked for: `static` (static KV cache + `torch.compile`), `lookup`
  (prompt-lookup decoding), `eager` (eager attention instead of SDPA).

Every path gets the same prompt ids and produces exactly the same number of new tokens (greedy,
`min_new_tokens` = `max_new_tokens`), so a ratio compares overhead only. Each path is timed the
same way, from outside: a call for N new tokens and a call for 1 new token, so decode speed is
(N - 1) / (t_N - t_1) and time to first token is t_1. The paths take turns within every
repetition (the machine may be shared and noisy), warm-up calls are not timed, and medians with
the interquartile range are reported.

On a GPU the device's copy bandwidth is measured too, and decode speed is set against the
bandwidth limit: bandwidth / (bytes of weights read per token + KV-cache bytes at the context).
"""

from __future__ import annotations

import contextlib
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import resources

from .errors import UserFacingError

__all__ = [
    "FAST_PATHS",
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "bandwidth_limit_tokens_per_s",
    "bench_model",
    "build_random_model",
    "check_bench_numbers",
    "format_bench",
    "make_bench_prompt",
    "measure_copy_bandwidth",
    "measure_peak_memory",
    "run_bench",
    "weights_read_bytes",
]

FAST_PATHS = {
    "static": "static KV cache + torch.compile (CUDA graphs on a GPU)",
    "lookup": "prompt-lookup decoding (10 tokens copied from the prompt per guess)",
    "eager": "eager attention instead of SDPA",
}
PROMPT_LOOKUP_TOKENS = 10
# Sane bounds for the numbers a user gives, checked before anything loads.
MIN_PROMPT_TOKENS = 8  # a prompt of fewer tokens cannot be made exactly (BOS + one word)
MIN_NEW_TOKENS = 2  # decode speed is (N - 1) / (t_N - t_1): one token measures no decoding
MAX_REPEATS = 1000
MAX_WARMUP = 100


def check_bench_numbers(
    prompt_tokens: int,
    new_tokens: int | None,
    repeats: int | None,
    warmup: int,
    threads: int | None = None,
    context_limit: int | None = None,
) -> None:
    """Raise UserFacingError, saying the allowed range, unless the benchmark's numbers make sense.

    None means "the default" for new_tokens, repeats and threads. With `context_limit` (the
    model's positions), the prompt plus the new tokens must fit in it.
    """
    import os

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
    if context_limit is not None:
        total = prompt_tokens + (new_tokens or 0)
        if total > context_limit:
            raise UserFacingError(
                f"A {prompt_tokens:,}-token prompt plus {new_tokens or 0:,} new tokens is "
                f"{total:,} positions; the model has {context_limit:,}.",
                f"Keep --prompt-tokens plus --new-tokens within {context_limit:,} (the default "
                "512 + 128 does).",
            )


def make_bench_prompt(tokenizer, n_tokens: int = 512) -> tuple[str, list[int]]:
    """Return (text, ids): a prompt whose tokenization is exactly n_tokens ids, when possible.

    The text comes from the package's small corpus, repeated as needed, so a pipeline that is
    given the text tokenizes it to the same ids the package path is given.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a whole number of at least 1, not {n_tokens!r}.")
    corpus = resources.files("llama2_colab").joinpath("data/tiny_corpus.txt").read_text("utf-8")
    words = corpus.split()
    while len(words) < 4 * n_tokens:
        words = words + words

    def ids_of(k: int) -> list[int]:
        return tokenizer(" ".join(words[:k]))["input_ids"]

    lo, hi = 1, 4 * n_tokens  # the largest word count whose ids fit n_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(ids_of(mid)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    ids = ids_of(lo)
    # Top up with short words until the count is exact (a word is one or two tokens).
    for filler in (" a", " the", " I", "."):
        while len(ids) < n_tokens:
            longer = tokenizer(text + filler)["input_ids"]
            if len(longer) > n_tokens:
                break
            text, ids = text + filler, longer
    return text, ids


def weights_read_bytes(model) -> int:
    """Return the bytes of weights one decode step reads: every tensor but the input embedding.

    The input embedding is a lookup (one row per token); the output head is a full matrix
    multiply and is counted. 4-bit weights count their packed bytes and their block scales.
    """
    total = 0
    for param in model.parameters():
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        while state is not None:
            absmax = getattr(state, "absmax", None)
            if absmax is not None:
                total += absmax.numel() * absmax.element_size()
            state = getattr(state, "state2", None)
    for buffer in model.buffers():
        total += buffer.numel() * buffer.element_size()
    embed = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if embed is not None and (out is None or out.weight is not embed.weight):
        total -= embed.weight.numel() * embed.weight.element_size()
    return total


def bandwidth_limit_tokens_per_s(
    bandwidth_bytes_per_s: float, weight_bytes: int, kv_bytes_per_token: int, context_tokens: int
) -> float:
    """Return the decode speed memory bandwidth allows: bandwidth / bytes read per token."""
    per_token = weight_bytes + kv_bytes_per_token * context_tokens
    return bandwidth_bytes_per_s / per_token if per_token > 0 else 0.0


def measure_copy_bandwidth(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Return the device's copy bandwidth in bytes/s: bytes read + written by a big copy / time."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page in, pick the kernel
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    elapsed = time.perf_counter() - start
    del src, dst
    return 2 * nbytes * repeats / elapsed


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _rss_high_water_bytes() -> int:
    """Resident-set high-water mark of this process (VmHWM; ru_maxrss where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            found = re.search(r"VmHWM:\s+(\d+) kB", status.read())
        if found:
            return int(found.group(1)) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_rss_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux); return whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def measure_peak_memory(device: str, work: Callable[[], object]) -> tuple[int, str]:
    """Run work() once; return (peak bytes during it, what was measured).

    On a GPU: `torch.cuda.max_memory_allocated` (weights + cache + activations). On the CPU: the
    process's resident-set high-water mark (the whole process: Python, libraries, weights).
    """
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        work()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    reset = _reset_rss_high_water()
    work()
    kind = "process RSS high-water (VmHWM)" if reset else "process RSS high-water since start"
    return _rss_high_water_bytes(), kind


def _attn_switch(model, implementation: str | None):
    """Context manager: run with another attention implementation, then switch back."""
    if implementation is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def switched():
        before = model.config._attn_implementation
        model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            model.set_attn_implementation(before)

    return switched()


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else [0.0, 0.0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _summary(full: list[float], one: list[float], n: int) -> dict:
    """Decode speed and time to first token from paired timings of N-token and 1-token calls."""
    rates = [(n - 1) / (a - b) for a, b in zip(full, one, strict=True) if a > b]
    return {
        "tokens_per_s": statistics.median(rates) if rates else 0.0,
        "tokens_per_s_iqr": _quartiles(rates),
        "ttft_s": statistics.median(one),
        "ttft_s_iqr": _quartiles(one),
        "rates": rates,
    }


def _check_fast_paths(fast: tuple[str, ...]) -> None:
    unknown = [f for f in fast if f not in FAST_PATHS]
    if unknown:
        raise UserFacingError(
            f"Unknown fast path(s): {', '.join(unknown)}.",
            f"Choose from: {', '.join(FAST_PATHS)} (or all).",
        )


def run_bench(
    model,
    tokenizer,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    repeats: int = 7,
    warmup: int = 1,
    fast: tuple[str, ...] = (),
    max_cache_len: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Time package vs baseline (and fast paths) on one loaded model; return the figures as a dict.

    Each path's first call is untimed (it gives the output compared across paths and the peak
    memory); `warmup` more untimed calls follow (at least one for the static path, whose first
    calls compile and record CUDA graphs).
    `max_cache_len` caps the static cache (from the plan); a static path whose prompt plus new
    tokens exceeds it is reported as an error instead of run.
    """
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from .generation import fast_generate_kwargs, stream_generate

    _check_fast_paths(fast)
    limit = getattr(model.config, "max_position_embeddings", None)
    check_bench_numbers(prompt_tokens, new_tokens, repeats, warmup, None, limit)
    say = log or (lambda _msg: None)
    device = str(model.device)
    device_type = model.device.type
    text, ids = make_bench_prompt(tokenizer, prompt_tokens)
    input_ids = torch.tensor([ids])
    n = int(new_tokens)
    greedy = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)

    def package_call(extra: dict, attn: str | None) -> Callable[[int], list[int]]:
        def call(k: int) -> list[int]:
            with _attn_switch(model, attn):
                _, new_ids, _ = stream_generate(
                    model,
                    tokenizer,
                    input_ids,
                    **{**greedy, "max_new_tokens": k, "min_new_tokens": k},
                    **extra,
                )
            return new_ids

        return call

    def baseline_call(k: int) -> list[int]:
        pipe(text, max_new_tokens=k, min_new_tokens=k, do_sample=False)  # as the article: text
        return []

    paths: dict[str, Callable[[int], list[int]]] = {
        "package": package_call({}, None),
        "baseline": baseline_call,
    }
    errors: dict[str, str] = {}
    for name in fast:
        if name == "static":
            needed = len(ids) + n
            if max_cache_len is not None and needed > max_cache_len:
                errors[name] = (
                    f"prompt + new tokens ({needed}) exceed the static cache the plan allows "
                    f"({max_cache_len} tokens)"
                )
                continue
            extra = fast_generate_kwargs(
                static_cache=True, max_cache_len=needed, device_type=device_type
            )
            paths[name] = package_call(extra, None)
        elif name == "lookup":
            extra = fast_generate_kwargs(prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS)
            paths[name] = package_call(extra, None)
        elif name == "eager":
            paths[name] = package_call({}, "eager")

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the same quiet for every path; warnings are not work
    try:
        # First call of each path, untimed: its output and token count, and its peak memory
        # (for the static path that includes compiling, which a user pays too). Then warm-up.
        outputs: dict[str, list[int]] = {}
        warmup_s: dict[str, float] = {}
        peaks: dict[str, int] = {}
        peak_kind = ""
        for name, call in list(paths.items()):
            say(f"first call and warm-up: {name}")

            def first(name: str = name, call: Callable[[int], list[int]] = call) -> None:
                if name == "baseline":
                    out = pipe(text, **greedy, return_tensors=True)[0]["generated_token_ids"]
                    outputs[name] = list(out[len(ids) :])
                else:
                    outputs[name] = call(n)

            start = time.perf_counter()
            try:
                peaks[name], peak_kind = measure_peak_memory(device, first)
                for _ in range(max(warmup, 1 if name == "static" else 0)):
                    call(n)
                call(1)
            except Exception as err:  # a fast path that fails is a result, not a crash
                if name in ("package", "baseline"):
                    raise
                errors[name] = f"{type(err).__name__}: {err}"[:500]
                del paths[name]
                continue
            _sync(device)
            warmup_s[name] = time.perf_counter() - start

        # Timed repetitions: the paths take turns, in a rotating order.
        full: dict[str, list[float]] = {name: [] for name in paths}
        one: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for rep in range(repeats):
            say(f"repetition {rep + 1}/{repeats}")
            shift = rep % len(order)
            for k, bucket in ((n, full), (1, one)):  # same-length calls of all paths adjacent
                for name in order[shift:] + order[:shift]:
                    _sync(device)
                    start = time.perf_counter()
                    paths[name](k)
                    _sync(device)
                    bucket[name].append(time.perf_counter() - start)

    finally:
        hf_logging.set_verbosity(verbosity)

    stats = {name: _summary(full[name], one[name], n) for name in paths}
    pkg, base = stats["package"], stats["baseline"]
    ratio = pkg["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else 0.0
    # Per-repetition ratios: the two paths ran seconds apart, so a load burst on a shared machine
    # hits both; their median is the steadiest single figure of the overhead.
    paired = [a / b for a, b in zip(pkg["rates"], base["rates"], strict=False) if b > 0]
    result = {
        "device": device,
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "repeats": repeats,
        "warmup": warmup,
        "tokens_per_s": pkg["tokens_per_s"],
        "tokens_per_s_iqr": pkg["tokens_per_s_iqr"],
        "baseline_tokens_per_s": base["tokens_per_s"],
        "baseline_tokens_per_s_iqr": base["tokens_per_s_iqr"],
        "ratio": ratio,
        "paired_ratio_median": statistics.median(paired) if paired else 0.0,
        "paired_ratio_iqr": _quartiles(paired),
        "ttft_s": pkg["ttft_s"],
        "ttft_s_iqr": pkg["ttft_s_iqr"],
        "baseline_ttft_s": base["ttft_s"],
        "baseline_ttft_s_iqr": base["ttft_s_iqr"],
        "peak_memory_bytes": peaks["package"],
        "baseline_peak_memory_bytes": peaks["baseline"],
        "peak_memory_kind": peak_kind,
        "generated_tokens": {name: len(out) for name, out in outputs.items()},
        "same_output_as_baseline": outputs["package"] == outputs["baseline"],
        "fast_paths": {},
    }
    for name in fast:
        if name in errors:
            result["fast_paths"][name] = {"what": FAST_PATHS[name], "error": errors[name]}
            continue
        s = stats[name]
        result["fast_paths"][name] = {
            "what": FAST_PATHS[name],
            "tokens_per_s": s["tokens_per_s"],
            "tokens_per_s_iqr": s["tokens_per_s_iqr"],
            "ratio_to_default": s["tokens_per_s"] / pkg["tokens_per_s"]
            if pkg["tokens_per_s"]
            else 0.0,
            "ttft_s": s["ttft_s"],
            "warmup_s": warmup_s[name],
            "peak_memory_bytes": peaks[name],
            "generated_tokens": len(outputs[name]),
            "same_output_as_default": outputs[name] == outputs["package"],
        }
    return result


def build_random_model(
    model_name: str,
    device: str = "cpu",
    dtype: str = "float32",
    quantization: str | None = None,
    config=None,
):
    """Return a model with a catalog model's real architecture and random weights, on the device.

    The weights are drawn straight on the device: no download, no token, no copy in host RAM.
    `quantization="nf4"` builds every decoder Linear layer as a bitsandbytes 4-bit layer, one
    layer at a time, so 13B fits a T4 the way it would loaded in 4-bit. Pass `config` to use
    another architecture (a scaled-down one in tests); `device="meta"` gives shapes only.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if config is None:
        from .plan import load_config

        config, _ = load_config(model_name)
    torch_dtype = getattr(torch, dtype)
    if quantization is None:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, attn_implementation="sdpa"
            )
        return model.eval()
    if quantization != "nf4":
        raise ValueError(f"random weights support quantization None or 'nf4', not {quantization!r}")
    return _build_random_nf4(config, device, torch_dtype).eval()


def _build_random_nf4(config, device: str, torch_dtype):
    """Build on the meta device, then make each Linear a random NF4 layer and the rest real."""
    import bitsandbytes as bnb
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    std = getattr(config, "initializer_range", 0.02)
    with init_empty_weights(include_buffers=False):  # buffers (RoPE frequencies) stay real
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype, attn_implementation="sdpa"
        )
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear and not name.endswith("lm_head"):
            weight = torch.empty(
                module.out_features, module.in_features, dtype=torch_dtype, device=device
            ).normal_(0.0, std)
            layer = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                compute_dtype=torch_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, compress_statistics=True, quant_type="nf4"
            )
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(
                    torch.zeros(module.out_features, dtype=torch_dtype, device=device),
                    requires_grad=False,
                )
            layer = layer.to(device)  # quantizes the weight
            if not layer.weight.bnb_quantized:
                layer.weight = layer.weight._quantize(device)
            model.set_submodule(name, layer)
            del weight
    for module in model.modules():  # embeddings, norms, lm_head: 16-bit, random or ones
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.device.type != "meta":
                continue
            data = torch.empty(param.shape, dtype=torch_dtype, device=device)
            if "norm" in type(module).__name__.lower():
                data.fill_(1.0)
            else:
                data.normal_(0.0, std)
            setattr(module, pname, torch.nn.Parameter(data, requires_grad=False))
        for bname, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[bname] = buffer.to(device)
    return model


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run the block with torch on `threads` CPU threads (None: unchanged), then restore."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_name() -> str:
    """The CPU's model name and core count, e.g. 'Intel Xeon ... (2 cores)'."""
    import os

    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            found = re.search(r"model name\s*:\s*(.+)", info.read())
        if found:
            name = found.group(1).strip()
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def _versions() -> dict:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def bench_model(
    model_name: str | None = None,
    random_weights: bool = False,
    dtype: str | None = None,
    quantization: str | None = None,
    fast: tuple[str, ...] = (),
    prompt_tokens: int = 512,
    new_tokens: int | None = None,
    repeats: int | None = None,
    warmup: int = 1,
    measure_bandwidth: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Load or build the model this machine would use, benchmark it, and return the figures.

    `model_name` None means what `choose_model` picks (the tiny model with no GPU). With
    `random_weights`, a catalog model's architecture is built with random weights on the device
    (no download, no token). The plan (`plan.make_plan`) decides whether it fits and caps the
    static cache. `threads` sets torch's CPU threads; None keeps torch's default, except for the
    tiny model on a CPU, which runs on one thread.
    """
    import dataclasses

    import torch

    from .auth import find_token
    from .models import (
        TINY,
        choose_model,
        cpu_threads_for,
        load_model_and_tokenizer,
        load_with_plan,
        oom_as_advice,
    )
    from .plan import kv_bytes_per_token, load_config, make_plan
    from .runtime import detect_runtime, recommend_settings
    from .tiny import ensure_tiny_llama

    _check_fast_paths(fast)
    check_bench_numbers(prompt_tokens, new_tokens, repeats, warmup, threads)
    say = log or (lambda _msg: None)
    facts = detect_runtime()
    settings = recommend_settings(facts)
    if dtype is not None:
        settings = dataclasses.replace(settings, dtype=dtype)
    token = None if random_weights else find_token()
    if random_weights and not model_name:
        from .models import DEFAULT_MODEL

        model_name = DEFAULT_MODEL
    choice = choose_model(facts, requested=model_name, has_token=bool(token) or random_weights)
    on_gpu = settings.device == "cuda"
    if threads is None:
        threads = cpu_threads_for(choice, settings.device)
    if new_tokens is None:
        new_tokens = 128 if on_gpu else 64
    if repeats is None:
        repeats = 5 if on_gpu else 15
    if model_name is not None and choice.name != TINY:
        from .checks import check_model_dir, looks_like_local_path

        if looks_like_local_path(choice.name):
            check_model_dir(choice.name)  # before the plan reads its config

    from .checks import NotLlamaError

    try:
        plan = make_plan(choice.name, facts, quantization=quantization or "auto")
    except NotLlamaError:
        raise
    except UserFacingError:
        if random_weights:  # random weights need an architecture the catalog knows
            raise
        plan = None  # a Hub model outside the catalog: load it and see
    if plan is not None:
        check_bench_numbers(
            prompt_tokens, new_tokens, repeats, warmup, threads, plan.model_context_tokens
        )
        if quantization is None and plan.quantization is not None and on_gpu:
            quantization = plan.quantization
        if not plan.fits and choice.name != TINY:
            raise UserFacingError(
                f"{choice.name} does not fit this machine. {plan.reason}", plan.advice
            )
    if quantization == "none":
        quantization = None

    start = time.perf_counter()
    if random_weights:
        from transformers import AutoTokenizer

        say(f"building {choice.name} with random weights on {settings.device} ({settings.dtype})")
        config, _ = load_config(choice.name)
        guard = oom_as_advice(plan, "building") if plan is not None else contextlib.nullcontext()
        with guard:
            model = build_random_model(
                choice.name, settings.device, settings.dtype, quantization, config=config
            )
        # The real tokenizer is gated too; the tiny model's Llama-2-layout tokenizer gives
        # valid ids (all below 32000), and speed does not depend on which words they are.
        tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_llama())
    elif plan is not None:
        say(
            f"loading {choice.name} ({settings.dtype}{', ' + quantization if quantization else ''})"
        )
        chosen = dataclasses.replace(plan, dtype=settings.dtype, quantization=quantization)
        model, tokenizer = load_with_plan(chosen, token=token)
    else:
        say(f"loading {choice.name} ({settings.dtype})")
        model, tokenizer = load_model_and_tokenizer(choice, settings, token)
    load_s = time.perf_counter() - start

    cap = plan.max_context_tokens if (plan and on_gpu and plan.max_context_tokens) else None
    with _torch_threads(threads):
        result = run_bench(
            model,
            tokenizer,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            repeats=repeats,
            warmup=warmup,
            fast=fast,
            max_cache_len=cap,
            log=say,
        )
    device_name = torch.cuda.get_device_name(model.device) if on_gpu else _cpu_name()
    model_dtype = str(model.dtype).removeprefix("torch.")
    head = {
        "model": choice.name,
        "random_weights": random_weights,
        "device": model.device.type,
        "device_name": device_name,
        "dtype": model_dtype,
        "quantization": quantization,
        "attn_implementation": model.config._attn_implementation,
        "load_s": load_s,
        "threads": threads or torch.get_num_threads(),
        **_versions(),
    }
    result = {**head, **result}

    weights = weights_read_bytes(model)
    kv = kv_bytes_per_token(model.config, model_dtype)
    context = result["prompt_tokens"] + new_tokens // 2  # the average context while decoding
    result.update({"weights_read_bytes": weights, "kv_bytes_per_token": kv})
    if measure_bandwidth:
        if on_gpu:
            free, _ = torch.cuda.mem_get_info()
            nbytes = int(min(1 << 30, free // 4))
        else:
            nbytes = 64 << 20
        say("measuring copy bandwidth")
        bandwidth = measure_copy_bandwidth(model.device.type, nbytes)
        limit = bandwidth_limit_tokens_per_s(bandwidth, weights, kv, context)
        result.update(
            {
                "copy_bandwidth_bytes_per_s": bandwidth,
                "bandwidth_limit_tokens_per_s": limit,
                "fraction_of_bandwidth_limit": result["tokens_per_s"] / limit if limit else 0.0,
            }
        )
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_bench(result: dict) -> str:
    """Return the figures as a short text report (what `python -m llama2_colab bench` prints)."""
    gib = 1024**3

    def iqr(values: list[float], fmt: str) -> str:
        return f"[{format(values[0], fmt)}-{format(values[1], fmt)}]"

    def speed(tokens_per_s: float, iqr_values: list[float]) -> str:
        if not tokens_per_s:  # no N-token call took longer than its 1-token call
            return "n/a (not measured: raise the new tokens)"
        return f"{tokens_per_s:.1f} tok/s {iqr(iqr_values, '.1f')}"

    quant = f", {result['quantization']}" if result.get("quantization") else ""
    lines = [
        f"Model      : {result['model']}"
        + (" (random weights)" if result["random_weights"] else ""),
        f"Device     : {result['device_name']} ({result['device']}), {result['dtype']}{quant}, "
        f"{result['attn_implementation']} attention, {result['threads']} CPU thread(s)",
        f"Work       : {result['prompt_tokens']}-token prompt, {result['new_tokens']} new tokens, "
        f"greedy, batch 1; median of {result['repeats']} (IQR in brackets)",
        f"Package    : {speed(result['tokens_per_s'], result['tokens_per_s_iqr'])}, "
        f"first token {result['ttft_s'] * 1000:.0f} ms",
        f"Baseline   : "
        f"{speed(result['baseline_tokens_per_s'], result['baseline_tokens_per_s_iqr'])}, "
        f"first token {result['baseline_ttft_s'] * 1000:.0f} ms "
        "(transformers text-generation pipeline)",
        f"Ratio      : {result['ratio']:.3f}x the baseline (ratio of medians); paired per "
        f"repetition {result['paired_ratio_median']:.3f}x {iqr(result['paired_ratio_iqr'], '.3f')}",
        f"Peak memory: {result['peak_memory_bytes'] / gib:.2f} GiB ({result['peak_memory_kind']})",
    ]
    if "bandwidth_limit_tokens_per_s" in result:
        lines.append(
            f"Bandwidth  : {result['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s copy; limit "
            f"{result['bandwidth_limit_tokens_per_s']:.1f} tok/s "
            f"({_size(result['weights_read_bytes'])} of weights + KV read per token); "
            f"package at {100 * result['fraction_of_bandwidth_limit']:.0f}% of it"
        )
    for name, fp in result["fast_paths"].items():
        if "error" in fp:
            lines.append(f"Fast {name:<6}: failed: {fp['error']}")
        else:
            lines.append(
                f"Fast {name:<6}: {fp['tokens_per_s']:.1f} tok/s = {fp['ratio_to_default']:.2f}x "
                f"default; first token {fp['ttft_s'] * 1000:.0f} ms; warm-up "
                f"{fp['warmup_s']:.1f} s; same output: {fp['same_output_as_default']}"
            )
    return "\n".join(lines)
