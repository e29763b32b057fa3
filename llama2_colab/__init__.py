"""llama2_colab: the helper library behind the Llama 2 on Colab T4 notebooks.

Data flows one way: facts about the machine (`detect_runtime`) -> decisions
(`recommend_settings`, `choose_model`, `make_plan`) -> loading (`load_with_plan`) -> generation
(`stream_generate`, `ChatSession` on a `LocalModel` or an `Endpoint`) -> display (`ChatApp`);
or serving (`BackgroundServer`).

Importing the package has no side effects and is cheap: each name below is imported from its
module on first use, so `python -m llama2_colab access` answers without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that holds it, grouped by module.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "runtime": (
        "GPU_PRESETS",
        "GpuFacts",
        "RuntimeFacts",
        "Settings",
        "detect_runtime",
        "format_report",
        "preset_runtime",
        "recommend_settings",
    ),
    "models": (
        "DEFAULT_MODEL",
        "MODEL_ENV",
        "ModelChoice",
        "TINY",
        "choose_model",
        "cpu_threads_for",
        "load_model_and_tokenizer",
        "load_pipeline",
        "load_with_plan",
        "make_quantization_config",
        "oom_as_advice",
        "resolve_model_path",
    ),
    "tiny": ("LLAMA2_CHAT_TEMPLATE", "build_tiny_llama", "ensure_tiny_llama"),
    "generation": ("GenerationStats", "fast_generate_kwargs", "stream_generate"),
    "fast_decode": ("FastDecoder", "fast_stream_generate"),
    "chat": (
        "DialogFit",
        "Message",
        "check_dialog",
        "encode_dialog",
        "fit_dialog",
        "read_context_limit",  # the old name of read_context_window (warns)
        "read_context_window",
        "render_dialog",
    ),
    "session": ("ChatSession", "SessionBusyError", "SessionState"),
    "local_model": ("LocalModel",),
    "endpoint": ("Endpoint", "EndpointError"),
    "app": ("ChatApp", "describe_models"),
    "auth": (
        "AccessResult",
        "check_access",
        "describe_token",
        "find_token",
        "format_access",
        "mask_token",
    ),
    "plan": (
        "LoadPlan",
        "TensorParallelPlan",
        "format_plan",
        "format_tp_plan",
        "make_plan",
        "make_tp_plan",
    ),
    "chat_template": ("reference_chat_template",),
    "catalog": ("speaker_name",),
    "engine_commands": ("client_snippet", "vllm_command"),
    "background_server": ("BackgroundServer",),
    "tensor_parallel": ("load_tensor_parallel",),
    "bench": ("BenchWork", "PathTiming", "bandwidth_limit_tokens_per_s", "run_bench"),
    "bench_harness": ("bench_loaded_model", "bench_model", "format_bench"),
    "convert": ("convert_meta_checkpoint", "inspect_meta_checkpoint"),
    "codellama": (
        "decode_infilling",
        "encode_completion",
        "encode_infilling",
        "encode_instruct",
        "ensure_tiny_code_llama",
        "infill_tokens",
    ),
    "colab": ("badge_markdown", "colab_url"),
    "errors": ("UserFacingError",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Import a public name from its module the first time someone asks for it."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
