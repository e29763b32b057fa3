"""llama2_colab: the helper library behind the Llama 2 on Colab T4 notebooks.

Data flows one way: facts about the machine (`detect_runtime`) -> a decision
(`recommend_settings`, `choose_model`) -> loading (`load_model_and_tokenizer`) -> generation
(`stream_generate`). Importing this package has no side effects.
"""

from .app import ChatApp, describe_models
from .auth import (
    AccessResult,
    check_access,
    describe_token,
    find_token,
    format_access,
    mask_token,
)
from .bench import bandwidth_limit_tokens_per_s, bench_model, format_bench, run_bench
from .chat import (
    ChatSession,
    DialogFit,
    check_dialog,
    encode_dialog,
    fit_dialog,
    read_context_limit,
    render_dialog,
)
from .colab import badge_markdown, colab_url
from .errors import UserFacingError
from .generation import GenerationStats, fast_generate_kwargs, stream_generate
from .models import (
    DEFAULT_MODEL,
    MODEL_ENV,
    TINY,
    ModelChoice,
    choose_model,
    load_model_and_tokenizer,
    load_pipeline,
    load_with_plan,
    make_quantization_config,
    oom_as_advice,
    resolve_model_path,
)
from .plan import LoadPlan, format_plan, make_plan
from .runtime import (
    GPU_PRESETS,
    GpuFacts,
    RuntimeFacts,
    Settings,
    detect_runtime,
    format_report,
    preset_runtime,
    recommend_settings,
)
from .tiny import LLAMA2_CHAT_TEMPLATE, build_tiny_llama, ensure_tiny_llama

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "GPU_PRESETS",
    "LLAMA2_CHAT_TEMPLATE",
    "MODEL_ENV",
    "TINY",
    "GenerationStats",
    "GpuFacts",
    "ModelChoice",
    "RuntimeFacts",
    "Settings",
    "UserFacingError",
    "ChatApp",
    "ChatSession",
    "DialogFit",
    "check_dialog",
    "describe_models",
    "encode_dialog",
    "fit_dialog",
    "read_context_limit",
    "render_dialog",
    "badge_markdown",
    "build_tiny_llama",
    "choose_model",
    "colab_url",
    "detect_runtime",
    "ensure_tiny_llama",
    "find_token",
    "format_report",
    "load_model_and_tokenizer",
    "load_pipeline",
    "mask_token",
    "preset_runtime",
    "recommend_settings",
    "resolve_model_path",
    "stream_generate",
    "bandwidth_limit_tokens_per_s",
    "bench_model",
    "fast_generate_kwargs",
    "format_bench",
    "run_bench",
    "AccessResult",
    "LoadPlan",
    "check_access",
    "describe_token",
    "format_access",
    "format_plan",
    "load_with_plan",
    "make_plan",
    "make_quantization_config",
    "oom_as_advice",
]
