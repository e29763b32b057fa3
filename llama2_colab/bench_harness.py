"""The maintainer's benchmark harness: a model loaded or built for this machine, timed, as JSON.

`bench_model` is what `python -m llama2_colab bench` and `scripts/gpu_check.sh` run. In small
steps it picks the model (`models.choose_model`), plans it (`plan.make_plan`: does it fit, in
which format, how big a static cache), loads it or builds it with random weights right on the
device (`build_random_model`, 4-bit NF4 layer by layer), and times it with
`bench_loaded_model`: `bench.run_bench`'s two paths plus the opt-in fast paths (`FAST_PATHS`)
and each path's peak memory (GPU allocator, or the process's RSS high-water mark on a CPU).
Then it adds what a figure needs to be compared later: the machine, the versions, the load
time, the copy bandwidth and the bandwidth limit. `format_bench` prints the same figures as
text; the JSON keys are listed in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import sys
import time
from collections.abc import Callable

from .auth import find_token
from .bench import (
    BenchPath,
    BenchWork,
    PathTiming,
    bandwidth_limit_tokens_per_s,
    compare_paths,
    measure_copy_bandwidth,
    package_path,
    paired_ratio,
    prepare_paths,
    time_paths,
    weights_read_bytes,
)
from .checks import check_bench_numbers, check_model_dir, looks_like_local_path
from .errors import UserFacingError
from .fast_decode import FastDecoder, fast_stream_generate
from .generation import fast_generate_kwargs
from .models import (
    DEFAULT_MODEL,
    TINY,
    ModelChoice,
    choose_model,
    cpu_threads_for,
    load_model_and_tokenizer,
    load_with_plan,
    oom_as_advice,
)
from .plan import LoadPlan, kv_bytes_per_token, load_config, make_plan
from .runtime import ATTENTION, GiB, RuntimeFacts, Settings, detect_runtime, recommend_settings
from .tiny import ensure_tiny_llama

__all__ = [
    "FAST_PATHS",
    "bench_loaded_model",
    "bench_model",
    "build_random_model",
    "check_fast_paths",
    "format_bench",
    "measure_peak_memory",
]

FAST_PATHS = {
    "graph": "static KV cache, decode step recorded once as a CUDA graph (eager on a CPU)",
    "static": "static KV cache + torch.compile (CUDA graphs on a GPU)",
    "lookup": "prompt-lookup decoding (10 tokens copied from the prompt per guess)",
    "eager": "eager attention instead of SDPA",
}
PROMPT_LOOKUP_TOKENS = 10


def build_random_model(
    model_name: str,
    device: str = "cpu",
    dtype: str = "float32",
    quantization: str | None = None,
    config=None,
):
    """Return a model with a catalog model's real architecture and random weights, on the device.

    The weights are drawn straight on the device: no download, no token, no copy in host RAM.
    `quantization="nf4"` (or `"int8"`, LLM.int8) builds every decoder Linear layer as a
    bitsandbytes layer, one layer at a time, so 13B fits a T4 the way it would loaded in 4-bit.
    Pass `config` to use another architecture (a scaled-down one in tests); `device="meta"`
    gives shapes only.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if config is None:
        config, _ = load_config(model_name)
    torch_dtype = getattr(torch, dtype)
    if quantization is None:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, attn_implementation=ATTENTION
            )
        return model.eval()
    if quantization not in ("nf4", "int8"):
        raise ValueError(
            f"random weights support quantization None, 'nf4' or 'int8', not {quantization!r}"
        )
    return _build_random_quantized(config, device, torch_dtype, quantization).eval()


def _bnb_layer(module, weight, torch_dtype, quantization: str):
    """A bitsandbytes layer (on the meta device until moved) holding `weight` for `module`."""
    import bitsandbytes as bnb

    if quantization == "int8":  # as transformers loads it: int8 weights, outliers above 6.0
        layer = bnb.nn.Linear8bitLt(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            has_fp16_weights=False,
            threshold=6.0,
            device="meta",
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        return layer
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
    return layer


def _build_random_quantized(config, device: str, torch_dtype, quantization: str):
    """Build on the meta device; each Linear becomes a random bitsandbytes layer, the rest real."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    std = getattr(config, "initializer_range", 0.02)
    with init_empty_weights(include_buffers=False):  # buffers (RoPE frequencies) stay real
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype, attn_implementation=ATTENTION
        )
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear and not name.endswith("lm_head"):
            weight = torch.empty(
                module.out_features, module.in_features, dtype=torch_dtype, device=device
            ).normal_(0.0, std)
            layer = _bnb_layer(module, weight, torch_dtype, quantization)
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(
                    torch.zeros(module.out_features, dtype=torch_dtype, device=device),
                    requires_grad=False,
                )
            layer = layer.to(device)  # quantizes the weight
            if quantization == "nf4" and not layer.weight.bnb_quantized:
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
            setattr(module, bname, buffer.to(device))  # nn.Module keeps it a buffer
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


def check_fast_paths(fast: tuple[str, ...]) -> None:
    """Raise UserFacingError, listing the choices, if a fast path's name is unknown."""
    unknown = [f for f in fast if f not in FAST_PATHS]
    if unknown:
        raise UserFacingError(
            f"Unknown fast path(s): {', '.join(unknown)}.",
            f"Choose from: {', '.join(FAST_PATHS)} (or all).",
        )


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


def _graph_path(model, tokenizer, input_ids, n: int, decoder: FastDecoder) -> BenchPath:
    """`fast_decode` on one decoder: its first call records the CUDA graph, later calls replay."""

    def call(k: int) -> list[int]:
        greedy = {"max_new_tokens": k, "min_new_tokens": k}
        return fast_stream_generate(model, tokenizer, input_ids, **greedy, decoder=decoder)[1]

    return BenchPath(call, lambda: call(n))


def _fast_path(
    name: str, model, tokenizer, ids: list[int], work: BenchWork, cap: int | None, notes: dict
):
    """Return the fast path's BenchPath, or the reason it cannot run (a string)."""
    import torch

    n = work.new_tokens
    input_ids, needed = torch.tensor([ids]), len(ids) + n
    if name == "lookup":
        extra = fast_generate_kwargs(prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS)
        return package_path(model, tokenizer, input_ids, n, extra)
    if name == "eager":
        path = package_path(model, tokenizer, input_ids, n)

        def eager(k: int):
            with _attn_switch(model, "eager"):
                return path.call(k)

        return BenchPath(eager, lambda: eager(n))
    if cap is not None and needed > cap:
        return (
            f"prompt + new tokens ({needed}) exceed the static cache the plan allows ({cap} tokens)"
        )
    if name == "graph":
        notes[name] = FastDecoder(model, needed)
        return _graph_path(model, tokenizer, input_ids, n, notes[name])
    extra = fast_generate_kwargs(
        static_cache=True, max_cache_len=needed, device_type=model.device.type
    )
    path = package_path(model, tokenizer, input_ids, n, extra)
    if work.warmup == 0:  # its first calls compile and record CUDA graphs: one more is never timed
        return path._replace(first=lambda: (path.first(), path.call(n))[0])
    return path


def _with_peak_memory(paths: dict[str, BenchPath], device: str, peaks: dict) -> dict:
    """Wrap each path's first call so that its peak memory lands in peaks[name]."""

    def measured(name: str, path: BenchPath) -> BenchPath:
        def first() -> list[int]:
            ids: list[int] = []
            peaks[name] = measure_peak_memory(device, lambda: ids.extend(path.first()))
            return ids

        return path._replace(first=first)

    return {name: measured(name, path) for name, path in paths.items()}


def _graph_notes(decoder: FastDecoder | None) -> dict:
    """Whether the graph path really replayed a CUDA graph, and why not if it did not."""
    if decoder is None:
        return {}
    return {"cuda_graph": decoder.graph is not None, "graph_error": decoder.graph_error}


def _fast_figures(
    fast, timings: dict[str, PathTiming], errors: dict, peaks: dict, notes: dict
) -> dict:
    """Each fast path's figures next to the package path's, or the reason it failed."""
    pkg = timings["package"]
    out = {}
    for name in fast:
        if name in errors:
            out[name] = {"what": FAST_PATHS[name], "error": errors[name]}
            continue
        t = timings[name]
        paired, paired_iqr = paired_ratio(t, timings["baseline"])
        out[name] = {
            "what": FAST_PATHS[name],
            "tokens_per_s": t.tokens_per_s,
            "tokens_per_s_iqr": list(t.tokens_per_s_iqr),
            "ratio_to_default": t.tokens_per_s / pkg.tokens_per_s if pkg.tokens_per_s else 0.0,
            "ttft_s": t.ttft_s,
            "warmup_s": t.warmup_s,
            "peak_memory_bytes": peaks[name][0],
            "generated_tokens": len(t.new_ids),
            "same_output_as_default": t.new_ids == pkg.new_ids,
            "paired_ratio_to_pipeline": paired,
            "paired_ratio_to_pipeline_iqr": paired_iqr,
            **_graph_notes(notes.get(name)),
        }
    return out


def bench_loaded_model(
    model,
    tokenizer,
    work: BenchWork,
    fast: tuple[str, ...] = (),
    max_cache_len: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """`bench.run_bench` plus the opt-in fast paths and each path's peak memory.

    `max_cache_len` caps the static cache (from the plan); a static path whose prompt plus new
    tokens exceeds it is reported as an error instead of run.
    """
    check_fast_paths(fast)
    ids, paths = prepare_paths(model, tokenizer, work)
    device, errors, notes = str(model.device), {}, {}
    for name in fast:
        path = _fast_path(name, model, tokenizer, ids, work, max_cache_len, notes)
        if isinstance(path, str):
            errors[name] = path
        else:
            paths[name] = path
    peaks: dict[str, tuple[int, str]] = {}
    timings, failed = time_paths(_with_peak_memory(paths, device, peaks), work, device, log)
    errors.update(failed)
    return {
        **work.as_figures(device, len(ids)),
        **compare_paths(timings),
        "peak_memory_bytes": peaks["package"][0],
        "baseline_peak_memory_bytes": peaks["baseline"][0],
        "peak_memory_kind": peaks["package"][1],
        "fast_paths": _fast_figures(fast, timings, errors, peaks, notes),
    }


def _plan_for_bench(
    choice: ModelChoice, facts: RuntimeFacts, dtype: str, quantization: str | None, random: bool
) -> LoadPlan | None:
    """The plan for exactly the format that will load (a Hub model's config is fetched first).

    A model whose config cannot be had (offline, no answer, not a Llama) is refused here, once,
    before anything loads.
    """
    if choice.name != TINY and looks_like_local_path(choice.name):
        check_model_dir(choice.name)  # before the plan reads its config
    return make_plan(choice.name, facts, quantization=quantization or "auto", dtype=dtype)


def _load_for_bench(choice, plan, settings: Settings, quantization, random: bool, token, say):
    """Return (model, tokenizer): built with random weights, loaded by the plan, or as is."""
    if random:
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
        return model, AutoTokenizer.from_pretrained(ensure_tiny_llama())
    if plan is not None:
        say(
            f"loading {choice.name} ({settings.dtype}{', ' + quantization if quantization else ''})"
        )
        return load_with_plan(plan, token=token)
    say(f"loading {choice.name} ({settings.dtype})")
    return load_model_and_tokenizer(choice, settings, token)


def _describe_run(model, choice, random: bool, quantization, load_s: float, threads) -> dict:
    """What a figure needs to be compared later: model, machine, dtype, versions, load time."""
    import torch

    on_gpu = model.device.type == "cuda"
    return {
        "model": choice.name,
        "random_weights": random,
        "device": model.device.type,
        "device_name": torch.cuda.get_device_name(model.device) if on_gpu else _cpu_name(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantization": quantization,
        "attn_implementation": model.config._attn_implementation,
        "load_s": load_s,
        "threads": threads or torch.get_num_threads(),
        **_versions(),
    }


def _bandwidth_figures(model, result: dict, measure: bool, say) -> dict:
    """Bytes read per token and, when measured, the copy bandwidth and the limit it sets."""
    import torch

    weights = weights_read_bytes(model)
    kv = kv_bytes_per_token(model.config, result["dtype"])
    figures = {"weights_read_bytes": weights, "kv_bytes_per_token": kv}
    if not measure:
        return figures
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        nbytes = int(min(1 << 30, free // 4))
    else:
        nbytes = 64 << 20
    say("measuring copy bandwidth")
    bandwidth = measure_copy_bandwidth(model.device.type, nbytes)
    context = result["prompt_tokens"] + result["new_tokens"] // 2  # the average while decoding
    limit = bandwidth_limit_tokens_per_s(bandwidth, weights, kv, context)
    return {
        **figures,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "bandwidth_limit_tokens_per_s": limit,
        "fraction_of_bandwidth_limit": result["tokens_per_s"] / limit if limit else 0.0,
    }


def _quantization_to_load(plan: LoadPlan | None, quantization: str | None) -> str | None:
    """The plan's format; without a plan, what was asked for ("none" and None: no quantization)."""
    if plan is not None:
        return plan.quantization
    return None if quantization in (None, "none") else quantization


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
    (no download, no token). `quantization` None lets the plan (`plan.make_plan`) choose; the plan
    also decides whether it fits and caps the static cache. `threads` sets torch's CPU threads;
    None keeps torch's default, except for the tiny model on a CPU, which runs on one thread.
    """
    check_fast_paths(fast)
    check_bench_numbers(prompt_tokens, new_tokens, repeats, warmup, threads)
    say = log or (lambda _msg: None)
    facts = detect_runtime()
    settings = recommend_settings(facts)
    settings = dataclasses.replace(settings, dtype=dtype) if dtype else settings
    token = None if random_weights else find_token()
    requested = model_name or (DEFAULT_MODEL if random_weights else None)
    choice = choose_model(facts, requested=requested, has_token=bool(token) or random_weights)
    on_gpu = settings.device == "cuda"
    threads = cpu_threads_for(choice, settings.device) if threads is None else threads
    new_tokens = (128 if on_gpu else 64) if new_tokens is None else new_tokens
    repeats = (5 if on_gpu else 15) if repeats is None else repeats
    plan = _plan_for_bench(choice, facts, settings.dtype, quantization, random_weights)
    if plan is not None:
        context = plan.model_context_window
        check_bench_numbers(prompt_tokens, new_tokens, repeats, warmup, threads, context)
        if not plan.fits and choice.name != TINY:
            raise UserFacingError(
                f"{choice.name} does not fit this machine. {plan.reason}", plan.advice
            )
    quant = _quantization_to_load(plan, quantization)
    start = time.perf_counter()
    model, tokenizer = _load_for_bench(choice, plan, settings, quant, random_weights, token, say)
    load_s = time.perf_counter() - start
    cap = plan.context_window if (plan and on_gpu and plan.context_window) else None
    with _torch_threads(threads):
        work = BenchWork(prompt_tokens, new_tokens, repeats, warmup)
        figures = bench_loaded_model(model, tokenizer, work, fast, cap, say)
    result = {**_describe_run(model, choice, random_weights, quant, load_s, threads), **figures}
    result.update(_bandwidth_figures(model, result, measure_bandwidth, say))
    del model  # the next step of gpu_check.sh needs all of the GPU's memory
    if on_gpu:
        import torch

        torch.cuda.empty_cache()
    return result


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_bench(result: dict) -> str:
    """Return the figures as a short text report (what `python -m llama2_colab bench` prints)."""

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
        f"Peak memory: {result['peak_memory_bytes'] / GiB:.2f} GiB ({result['peak_memory_kind']})",
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
                f"default, {fp['paired_ratio_to_pipeline']:.2f}x the pipeline (paired); first "
                f"token {fp['ttft_s'] * 1000:.0f} ms; warm-up {fp['warmup_s']:.1f} s; "
                f"same output: {fp['same_output_as_default']}"
                + (f"; CUDA graph: {fp['cuda_graph']}" if "cuda_graph" in fp else "")
            )
    return "\n".join(lines)
