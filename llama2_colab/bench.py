"""Measured speed, as a learner reads it: two paths timed the same way, and the bandwidth limit.

`run_bench` times batch-1 greedy decoding of a fixed number of new tokens after a 512-token
prompt on a model you have loaded, through two paths:

- `package`: `generation.stream_generate`, the path every notebook, the demo and the chat use;
- `baseline`: a `transformers` `text-generation` pipeline with default settings, called the way
  the seed article calls it (text in, text out), on the very same model object.

Both get the same prompt ids and produce exactly the same number of new tokens (greedy,
`min_new_tokens` = `max_new_tokens`), so their ratio compares overhead only. Each path is timed
the same way, from outside (`time_call`): a call for N new tokens and a call for 1 new token, so
decode speed is (N - 1) / (t_N - t_1) and time to first token is t_1. The paths take turns
within every repetition (the machine may be shared and noisy), warm-up calls are not timed, and
each path's medians with their interquartile range come back as a `PathTiming`.

Decode speed has a ceiling: bandwidth / (bytes of weights read per token + KV-cache bytes at the
context) (`bandwidth_limit_tokens_per_s`). The maintainer's harness (`bench_harness`: fast paths,
peak memory, random weights, 4-bit construction, the machine, JSON for `scripts/gpu_check.sh`)
is built from the steps here.
"""

from __future__ import annotations

import contextlib
import statistics
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
from .generation import stream_generate

__all__ = [
    "MAX_REPEATS",
    "MAX_WARMUP",
    "MIN_NEW_TOKENS",
    "MIN_PROMPT_TOKENS",
    "BenchPath",
    "BenchWork",
    "PathTiming",
    "bandwidth_limit_tokens_per_s",
    "baseline_path",
    "check_bench_numbers",
    "compare_paths",
    "make_bench_prompt",
    "make_paths",
    "paired_ratio",
    "prepare_paths",
    "measure_copy_bandwidth",
    "package_path",
    "run_bench",
    "time_call",
    "time_paths",
    "weights_read_bytes",
]


@dataclass(frozen=True)
class PathTiming:
    """One path's figures: decode speed and time to first token (medians, with their IQR)."""

    tokens_per_s: float  # median of (N - 1) / (t_N - t_1) over the repetitions
    tokens_per_s_iqr: tuple[float, float]
    ttft_s: float  # median of t_1: prefill of the prompt plus one decode step
    ttft_s_iqr: tuple[float, float]
    rates: tuple[float, ...]  # decode speed of each repetition (for paired ratios)
    new_ids: tuple[int, ...]  # what the first, untimed call produced
    warmup_s: float  # the first call and the warm-up calls together


@dataclass(frozen=True)
class BenchWork:
    """What every path is asked to do: the same prompt, the same new tokens, repeated."""

    prompt_tokens: int = 512  # the prompt's exact length in tokens
    new_tokens: int = 64  # N: every timed call makes exactly N (and 1) new tokens, greedy
    repeats: int = 7  # timed repetitions; medians and IQRs are over these
    warmup: int = 1  # untimed calls per path after its first

    def as_figures(self, device: str, prompt_len: int) -> dict:
        """The work as the figures report it (the prompt's length as actually tokenized)."""
        return {
            "device": device,
            "prompt_tokens": prompt_len,
            "new_tokens": self.new_tokens,
            "repeats": self.repeats,
            "warmup": self.warmup,
        }


class BenchPath(NamedTuple):
    """One way to generate: `call(k)` makes k new tokens (timed); `first()` makes N and returns
    their ids (the untimed first call, whose output is compared across paths)."""

    call: Callable[[int], object]
    first: Callable[[], list[int]]


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
    multiply and is counted. 4-bit weights count their packed bytes and their block scales,
    int8 (LLM.int8) weights their bytes and one float32 scale per output row (`SCB`).
    """
    total = 0
    for param in model.parameters():
        total += param.numel() * param.element_size()
        row_scales = getattr(param, "SCB", None)
        if row_scales is not None:
            total += row_scales.numel() * row_scales.element_size()
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


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else [0.0, 0.0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _greedy(k: int) -> dict:
    return {"max_new_tokens": k, "min_new_tokens": k, "do_sample": False}


def package_path(model, tokenizer, input_ids, n: int, extra: dict | None = None) -> BenchPath:
    """`stream_generate` on the prompt ids (with a fast path's extra generate() kwargs)."""

    def call(k: int) -> list[int]:
        _, new_ids, _ = stream_generate(model, tokenizer, input_ids, **_greedy(k), **(extra or {}))
        return new_ids

    return BenchPath(call, lambda: call(n))


def baseline_path(pipe, text: str, prompt_len: int, n: int) -> BenchPath:
    """The article's pipeline call: text in, text out (its ids only for the untimed first call)."""

    def first() -> list[int]:
        out = pipe(text, **_greedy(n), return_tensors=True)[0]["generated_token_ids"]
        return list(out[prompt_len:])

    return BenchPath(lambda k: pipe(text, **_greedy(k)), first)


def make_paths(model, tokenizer, prompt_tokens: int, n: int):
    """Return (prompt ids, {"package": ..., "baseline": ...}) for the same exact-length prompt."""
    import torch
    from transformers import pipeline

    text, ids = make_bench_prompt(tokenizer, prompt_tokens)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    paths = {
        "package": package_path(model, tokenizer, torch.tensor([ids]), n),
        "baseline": baseline_path(pipe, text, len(ids), n),
    }
    return ids, paths


def _warm_up(name: str, path: BenchPath, n: int, warmup: int, device: str):
    """The untimed first call (for a compiled path that includes compiling, which a user pays
    too), then `warmup` more calls; return (the first call's ids, seconds)."""
    start = time.perf_counter()
    ids = path.first()
    for _ in range(max(warmup, 1 if name == "static" else 0)):
        path.call(n)
    path.call(1)
    _sync(device)
    return ids, time.perf_counter() - start


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


def _path_timing(full: list[float], one: list[float], n: int, first) -> PathTiming:
    """Decode speed and time to first token from paired timings of N-token and 1-token calls."""
    ids, warmup_s = first
    rates = [(n - 1) / (a - b) for a, b in zip(full, one, strict=True) if a > b]
    return PathTiming(
        tokens_per_s=statistics.median(rates) if rates else 0.0,
        tokens_per_s_iqr=_quartiles(rates),
        ttft_s=statistics.median(one),
        ttft_s_iqr=_quartiles(one),
        rates=tuple(rates),
        new_ids=tuple(ids),
        warmup_s=warmup_s,
    )


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


def time_paths(
    paths: dict[str, BenchPath], work: BenchWork, device: str, log=None
) -> tuple[dict[str, PathTiming], dict[str, str]]:
    """Warm up and time every path; return ({name: PathTiming}, {name: why it failed}).

    The package and baseline paths must work; any other path that fails is a result (its error),
    not a crash.
    """
    say = log or (lambda _msg: None)
    n, firsts, errors, paths = work.new_tokens, {}, {}, dict(paths)
    with _quiet_transformers():
        for name, path in list(paths.items()):
            say(f"first call and warm-up: {name}")
            try:
                firsts[name] = _warm_up(name, path, n, work.warmup, device)
            except Exception as err:  # a fast path that fails is a result, not a crash
                if name in ("package", "baseline"):
                    raise
                errors[name] = f"{type(err).__name__}: {err}"[:500]
                del paths[name]
        full, one = _timed_repetitions(paths, n, work.repeats, device, say)
    return {name: _path_timing(full[name], one[name], n, firsts[name]) for name in paths}, errors


def paired_ratio(path: PathTiming, other: PathTiming) -> tuple[float, list[float]]:
    """Median and IQR of path's speed over other's, repetition by repetition.

    The two ran seconds apart in each repetition, so a load burst on a shared machine hits
    both; the median of these ratios is the steadiest single figure of the difference.
    """
    paired = [a / b for a, b in zip(path.rates, other.rates, strict=False) if b > 0]
    return (statistics.median(paired) if paired else 0.0), list(_quartiles(paired))


def compare_paths(timings: dict[str, PathTiming]) -> dict:
    """The package path against the baseline, as the flat figures notebooks and the JSON read."""
    pkg, base = timings["package"], timings["baseline"]
    ratio = pkg.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0
    paired, paired_iqr = paired_ratio(pkg, base)
    return {
        "tokens_per_s": pkg.tokens_per_s,
        "tokens_per_s_iqr": list(pkg.tokens_per_s_iqr),
        "baseline_tokens_per_s": base.tokens_per_s,
        "baseline_tokens_per_s_iqr": list(base.tokens_per_s_iqr),
        "ratio": ratio,
        "paired_ratio_median": paired,
        "paired_ratio_iqr": paired_iqr,
        "ttft_s": pkg.ttft_s,
        "ttft_s_iqr": list(pkg.ttft_s_iqr),
        "baseline_ttft_s": base.ttft_s,
        "baseline_ttft_s_iqr": list(base.ttft_s_iqr),
        "warmup_s": pkg.warmup_s,
        "baseline_warmup_s": base.warmup_s,
        "generated_tokens": {name: len(t.new_ids) for name, t in timings.items()},
        "same_output_as_baseline": pkg.new_ids == base.new_ids,
    }


def prepare_paths(model, tokenizer, work: BenchWork) -> tuple[list[int], dict[str, BenchPath]]:
    """Check the work against the model's positions; return (prompt ids, the two paths)."""
    window = getattr(model.config, "max_position_embeddings", None)
    check_bench_numbers(
        work.prompt_tokens, work.new_tokens, work.repeats, work.warmup, None, window
    )
    return make_paths(model, tokenizer, work.prompt_tokens, work.new_tokens)


def run_bench(
    model,
    tokenizer,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    repeats: int = 7,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Time this package's generation against the article's pipeline; return the figures.

    Each path's first call is untimed (it gives the output compared across paths); `warmup`
    more untimed calls follow. The dict holds the work (`prompt_tokens`, `new_tokens`, ...),
    each path's speed and first-token time, and their `ratio`.
    """
    work = BenchWork(prompt_tokens, new_tokens, repeats, warmup)
    ids, paths = prepare_paths(model, tokenizer, work)
    timings, _ = time_paths(paths, work, str(model.device), log)
    return {**work.as_figures(str(model.device), len(ids)), **compare_paths(timings)}
