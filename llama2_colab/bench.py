"""Measured speed, as a learner reads it: two paths timed the same way, and the bandwidth limit.

`run_bench` times batch-1 greedy decoding of a fixed number of new tokens after a 512-token
prompt on a model you have loaded, through:

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
the interquartile range are reported, one `PathTiming` per path.

Decode speed has a ceiling: bandwidth / (bytes of weights read per token + KV-cache bytes at the
context) (`bandwidth_limit_tokens_per_s`). The maintainer's harness (`bench_harness`: random
weights, 4-bit construction, the machine, JSON for `scripts/gpu_check.sh`) builds on this module.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

from .checks import (
    MAX_REPEATS,
    MAX_WARMUP,
    MIN_NEW_TOKENS,
    MIN_PROMPT_TOKENS,
    check_bench_numbers,
)
from .errors import UserFacingError
from .generation import fast_generate_kwargs, stream_generate

__all__ = [
    "FAST_PATHS",
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "PathTiming",
    "bandwidth_limit_tokens_per_s",
    "check_bench_numbers",
    "check_fast_paths",
    "make_bench_prompt",
    "measure_copy_bandwidth",
    "measure_peak_memory",
    "run_bench",
    "time_call",
    "weights_read_bytes",
]

FAST_PATHS = {
    "static": "static KV cache + torch.compile (CUDA graphs on a GPU)",
    "lookup": "prompt-lookup decoding (10 tokens copied from the prompt per guess)",
    "eager": "eager attention instead of SDPA",
}
PROMPT_LOOKUP_TOKENS = 10


@dataclass(frozen=True)
class PathTiming:
    """One path's figures: decode speed and time to first token (medians, with their IQR)."""

    tokens_per_s: float  # median of (N - 1) / (t_N - t_1) over the repetitions
    tokens_per_s_iqr: tuple[float, float]
    ttft_s: float  # median of t_1: prefill of the prompt plus one decode step
    ttft_s_iqr: tuple[float, float]
    rates: tuple[float, ...]  # decode speed of each repetition (for paired ratios)
    new_ids: tuple[int, ...]  # what the first, untimed call produced (empty for the pipeline)
    peak_memory_bytes: int  # during the first call
    warmup_s: float  # the first call and the warm-up calls together


class _FirstCall(NamedTuple):
    ids: list[int]  # the new tokens of the untimed first call
    peak_bytes: int  # peak memory during it
    peak_kind: str  # what that peak measured
    seconds: float  # the first call and the warm-up calls together


class _BenchPath(NamedTuple):
    call: Callable[[int], object]  # generate k new tokens (timed)
    first: Callable[[], list[int]]  # generate N new tokens and return their ids (untimed)


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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_call(device: str, work: Callable[[], object]) -> float:
    """Return the seconds work() takes, synchronising the GPU before and after (one helper)."""
    _sync(device)
    start = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - start


def measure_copy_bandwidth(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Return the device's copy bandwidth in bytes/s: bytes read + written by a big copy / time."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page in, pick the kernel

    def copies() -> None:
        for _ in range(repeats):
            dst.copy_(src)

    return 2 * nbytes * repeats / time_call(device, copies)


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


def check_fast_paths(fast: tuple[str, ...]) -> None:
    """Raise UserFacingError, listing the choices, if a fast path's name is unknown."""
    unknown = [f for f in fast if f not in FAST_PATHS]
    if unknown:
        raise UserFacingError(
            f"Unknown fast path(s): {', '.join(unknown)}.",
            f"Choose from: {', '.join(FAST_PATHS)} (or all).",
        )


def _greedy(k: int) -> dict:
    return {"max_new_tokens": k, "min_new_tokens": k, "do_sample": False}


def _package_path(model, tokenizer, input_ids, n: int, extra: dict, attn: str | None):
    """stream_generate on the prompt ids, with a fast path's extra kwargs or attention."""

    def call(k: int) -> list[int]:
        with _attn_switch(model, attn):
            _, new_ids, _ = stream_generate(model, tokenizer, input_ids, **_greedy(k), **extra)
        return new_ids

    return _BenchPath(call, lambda: call(n))


def _baseline_path(pipe, text: str, prompt_len: int, n: int) -> _BenchPath:
    """The article's pipeline call: text in, text out (its ids only for the untimed first call)."""

    def first() -> list[int]:
        out = pipe(text, **_greedy(n), return_tensors=True)[0]["generated_token_ids"]
        return list(out[prompt_len:])

    return _BenchPath(lambda k: pipe(text, **_greedy(k)), first)


def _fast_path(name: str, model, tokenizer, input_ids, n: int, max_cache_len: int | None):
    """Return the fast path's _BenchPath, or the reason it cannot run (a string)."""
    needed = input_ids.shape[1] + n
    if name == "static":
        if max_cache_len is not None and needed > max_cache_len:
            return (
                f"prompt + new tokens ({needed}) exceed the static cache the plan allows "
                f"({max_cache_len} tokens)"
            )
        extra = fast_generate_kwargs(
            static_cache=True, max_cache_len=needed, device_type=model.device.type
        )
        return _package_path(model, tokenizer, input_ids, n, extra, None)
    if name == "lookup":
        extra = fast_generate_kwargs(prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS)
        return _package_path(model, tokenizer, input_ids, n, extra, None)
    return _package_path(model, tokenizer, input_ids, n, {}, "eager")


def _warm_up(name: str, path: _BenchPath, n: int, warmup: int, device: str) -> _FirstCall:
    """The untimed first call (its ids and peak memory; for `static` that includes compiling,
    which a user pays too), then `warmup` more calls."""
    start = time.perf_counter()
    ids: list[int] = []

    def first() -> None:
        ids.extend(path.first())

    peak, kind = measure_peak_memory(device, first)
    for _ in range(max(warmup, 1 if name == "static" else 0)):
        path.call(n)
    path.call(1)
    _sync(device)
    return _FirstCall(ids, peak, kind, time.perf_counter() - start)


def _timed_repetitions(paths: dict, n: int, repeats: int, device: str, say) -> tuple[dict, dict]:
    """Time every path's N-token and 1-token calls; the paths take turns in a rotating order."""
    full: dict[str, list[float]] = {name: [] for name in paths}
    one: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for rep in range(repeats):
        say(f"repetition {rep + 1}/{repeats}")
        shift = rep % len(order)
        for k, bucket in ((n, full), (1, one)):  # same-length calls of all paths adjacent
            for name in order[shift:] + order[:shift]:
                bucket[name].append(time_call(device, lambda k=k, name=name: paths[name].call(k)))
    return full, one


def _path_timing(full: list[float], one: list[float], n: int, first: _FirstCall) -> PathTiming:
    """Decode speed and time to first token from paired timings of N-token and 1-token calls."""
    rates = [(n - 1) / (a - b) for a, b in zip(full, one, strict=True) if a > b]
    return PathTiming(
        tokens_per_s=statistics.median(rates) if rates else 0.0,
        tokens_per_s_iqr=_quartiles(rates),
        ttft_s=statistics.median(one),
        ttft_s_iqr=_quartiles(one),
        rates=tuple(rates),
        new_ids=tuple(first.ids),
        peak_memory_bytes=first.peak_bytes,
        warmup_s=first.seconds,
    )


def _figures(timings: dict[str, PathTiming], prompt_len: int, n: int, peak_kind: str) -> dict:
    """The package and baseline figures as the flat dict notebooks and the JSON read."""
    pkg, base = timings["package"], timings["baseline"]
    ratio = pkg.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0
    # Per-repetition ratios: the two paths ran seconds apart, so a load burst on a shared machine
    # hits both; their median is the steadiest single figure of the overhead.
    paired = [a / b for a, b in zip(pkg.rates, base.rates, strict=False) if b > 0]
    return {
        "prompt_tokens": prompt_len,
        "new_tokens": n,
        "tokens_per_s": pkg.tokens_per_s,
        "tokens_per_s_iqr": list(pkg.tokens_per_s_iqr),
        "baseline_tokens_per_s": base.tokens_per_s,
        "baseline_tokens_per_s_iqr": list(base.tokens_per_s_iqr),
        "ratio": ratio,
        "paired_ratio_median": statistics.median(paired) if paired else 0.0,
        "paired_ratio_iqr": list(_quartiles(paired)),
        "ttft_s": pkg.ttft_s,
        "ttft_s_iqr": list(pkg.ttft_s_iqr),
        "baseline_ttft_s": base.ttft_s,
        "baseline_ttft_s_iqr": list(base.ttft_s_iqr),
        "peak_memory_bytes": pkg.peak_memory_bytes,
        "baseline_peak_memory_bytes": base.peak_memory_bytes,
        "peak_memory_kind": peak_kind,
        "generated_tokens": {name: len(t.new_ids) for name, t in timings.items()},
        "same_output_as_baseline": pkg.new_ids == base.new_ids,
    }


def _fast_figures(fast, timings: dict[str, PathTiming], errors: dict[str, str]) -> dict:
    """Each fast path's figures next to the package path's, or the reason it failed."""
    pkg = timings["package"]
    out = {}
    for name in fast:
        if name in errors:
            out[name] = {"what": FAST_PATHS[name], "error": errors[name]}
            continue
        t = timings[name]
        out[name] = {
            "what": FAST_PATHS[name],
            "tokens_per_s": t.tokens_per_s,
            "tokens_per_s_iqr": list(t.tokens_per_s_iqr),
            "ratio_to_default": t.tokens_per_s / pkg.tokens_per_s if pkg.tokens_per_s else 0.0,
            "ttft_s": t.ttft_s,
            "warmup_s": t.warmup_s,
            "peak_memory_bytes": t.peak_memory_bytes,
            "generated_tokens": len(t.new_ids),
            "same_output_as_default": t.new_ids == pkg.new_ids,
        }
    return out


def _build_paths(model, tokenizer, n: int, prompt_tokens: int, fast, max_cache_len):
    """Return (prompt ids, {name: _BenchPath}, {fast path: why it cannot run})."""
    import torch
    from transformers import pipeline

    text, ids = make_bench_prompt(tokenizer, prompt_tokens)
    input_ids = torch.tensor([ids])
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    paths = {
        "package": _package_path(model, tokenizer, input_ids, n, {}, None),
        "baseline": _baseline_path(pipe, text, len(ids), n),
    }
    errors: dict[str, str] = {}
    for name in fast:
        path = _fast_path(name, model, tokenizer, input_ids, n, max_cache_len)
        if isinstance(path, str):
            errors[name] = path
        else:
            paths[name] = path
    return ids, paths, errors


@contextlib.contextmanager
def _quiet_transformers():
    """The same quiet for every path: transformers' warnings are not work."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


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
    check_fast_paths(fast)
    window = getattr(model.config, "max_position_embeddings", None)
    check_bench_numbers(prompt_tokens, new_tokens, repeats, warmup, None, window)
    say = log or (lambda _msg: None)
    device, n = str(model.device), int(new_tokens)
    ids, paths, errors = _build_paths(model, tokenizer, n, prompt_tokens, fast, max_cache_len)
    firsts, peak_kind = {}, ""
    with _quiet_transformers():
        for name, path in list(paths.items()):
            say(f"first call and warm-up: {name}")
            try:
                firsts[name] = _warm_up(name, path, n, warmup, device)
            except Exception as err:  # a fast path that fails is a result, not a crash
                if name in ("package", "baseline"):
                    raise
                errors[name] = f"{type(err).__name__}: {err}"[:500]
                del paths[name]
                continue
            peak_kind = firsts[name].peak_kind
        full, one = _timed_repetitions(paths, n, repeats, device, say)
    timings = {name: _path_timing(full[name], one[name], n, firsts[name]) for name in paths}
    head = {"device": device, "repeats": repeats, "warmup": warmup}
    figures = _figures(timings, len(ids), n, peak_kind)
    return {**head, **figures, "fast_paths": _fast_figures(fast, timings, errors)}
