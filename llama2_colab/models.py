"""Choosing a model (a pure decision) and loading it with the runtime's settings (the action)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors

from .auth import explain_hub_error, find_hub_error, find_token
from .checks import check_model_dir, check_model_name, looks_like_local_path
from .errors import UserFacingError, redact_log_records
from .faults import describe_fault, library_message
from .hub import check_tokenizer_files, fetch_config
from .runtime import T4_MENU_PATH, GiB, RuntimeFacts, Settings, settings_for
from .tiny import ensure_tiny_llama
from .weight_report import WeightDiff, refuse_weight_mismatch

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "TINY",
    "ModelChoice",
    "choose_model",
    "resolve_model_path",
    "cpu_threads_for",
    "load_model_and_tokenizer",
    "load_pipeline",
    "make_quantization_config",
    "load_with_plan",
    "oom_as_advice",
]

DEFAULT_MODEL = "meta-llama/Llama-2-7b-chat-hf"
MODEL_ENV = "LLAMA2_COLAB_MODEL"
TINY = "tiny"
# What a learner is told whenever the tiny model stands in for Llama 2.
TINY_IS = (
    "a toy this course trained (Llama 2's architecture, tokenizer and chat format, 9 million "
    "parameters), not Llama 2; it knows only what the course taught it and makes up the rest"
)


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and, in words, why."""

    name: str  # "tiny", a Hub repo id, or a local directory
    reason: str

    @property
    def is_tiny(self) -> bool:
        """True for the offline tiny Llama 2."""
        return self.name == TINY


def choose_model(
    facts: RuntimeFacts,
    requested: str | None = None,
    env: dict[str, str] | None = None,
    has_token: bool = True,
) -> ModelChoice:
    """Decide which model to use: an explicit request, then $LLAMA2_COLAB_MODEL, then the default.

    An explicit choice is always honoured. The default (Llama-2-7b-chat) falls back to the tiny
    model when there is no GPU (7B in float32 needs 27 GB of RAM and minutes per token) or no
    Hugging Face token (the repository is gated), and the reason says so.
    """
    env = os.environ if env is None else env
    if requested and requested.strip():
        return ModelChoice(requested.strip(), "you asked for it")
    from_env = (env.get(MODEL_ENV) or "").strip()
    if from_env:
        return ModelChoice(from_env, f"set by ${MODEL_ENV}")
    if facts.gpu is None:
        return ModelChoice(
            TINY,
            "no GPU found, so the offline tiny Llama 2 stands in for "
            f"{DEFAULT_MODEL}: {TINY_IS}. On Colab: {T4_MENU_PATH}.",
        )
    if not has_token:
        return ModelChoice(
            TINY,
            f"no Hugging Face token found and {DEFAULT_MODEL} is gated, so the offline tiny "
            f"Llama 2 stands in: {TINY_IS}. Add HF_TOKEN to Colab "
            "Secrets or run `hf auth login`, then run again.",
        )
    return ModelChoice(DEFAULT_MODEL, f"the default; {facts.gpu.name} can run it")


def cpu_threads_for(choice: ModelChoice, device: str) -> int | None:
    """Return the torch CPU threads to use for the choice on device (None: torch's default).

    The tiny model on a CPU gets one thread: its hidden-64 matrices gain nothing from a second
    one, and on a busy 2-core machine the threads' hand-offs made it ~5x slower (measured).
    """
    return 1 if choice.is_tiny and device == "cpu" else None


def resolve_model_path(choice: ModelChoice) -> str:
    """Return what `from_pretrained` should get: the tiny model's directory, or the name as is.

    A local folder is checked first (config, tokenizer, weights, Llama family): a problem is a
    `UserFacingError` that says what to do, never a traceback from deep inside transformers.
    """
    if choice.is_tiny:
        return str(ensure_tiny_llama())
    check_model_name(choice.name)
    if looks_like_local_path(choice.name):
        check_model_dir(choice.name)
        return str(Path(choice.name).expanduser())
    return choice.name


def _model_kwargs(settings: Settings, quantization_config=None) -> dict:
    kwargs = {
        "dtype": settings.torch_dtype,
        "attn_implementation": settings.attn_implementation,
    }
    if settings.device_map is not None:
        kwargs["device_map"] = settings.device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return kwargs


def load_model_and_tokenizer(
    choice: ModelChoice,
    settings: Settings,
    token: str | None = None,
    quantization_config=None,
    cache_dir: str | None = None,
    model_kwargs: dict | None = None,
):
    """Load (model, tokenizer) for the choice with the settings' dtype, attention and placement.

    A Hub refusal (not logged in, access not granted, offline) becomes a `UserFacingError`
    saying what to do; files already downloaded stay in the cache, so the next try resumes.
    Weights that do not fill the config's model exactly are refused (transformers' loading
    report), never run with random values; files that fail to load are named.
    `model_kwargs` go to `from_pretrained` as well (e.g. `distributed_config`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    redact_log_records()  # transformers' load report names the folder, which may hold a token
    stage = ["tokenizer"]  # what was loading when something failed

    def load(path: str):
        if not choice.is_tiny and not Path(path).is_dir():  # a Hub id: its config first (KBs)
            fetch_config(path, token, cache_dir)  # checked, before anything downloads
            check_tokenizer_files(path, token)
        stage[0] = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(path, token=token, cache_dir=cache_dir)
        stage[0] = "weights"
        kwargs = {"output_loading_info": True, "ignore_mismatched_sizes": True}
        kwargs |= _model_kwargs(settings, quantization_config) | (model_kwargs or {})
        model, info = AutoModelForCausalLM.from_pretrained(
            path, token=token, cache_dir=cache_dir, **kwargs
        )
        diff = WeightDiff.from_loading_info(model, info)
        refuse_weight_mismatch(diff, model.config.to_dict(), path)
        return model, tokenizer

    path = resolve_model_path(choice)
    try:
        model, tokenizer = load(path)
    except (torch.OutOfMemoryError, UserFacingError):
        raise
    except Exception as err:
        fault = describe_fault(err, f"Cannot load {path}")
        if fault is not None and find_hub_error(err) is None:  # the disk, a link, permissions
            raise fault from err
        if choice.is_tiny and isinstance(err, _file_errors()):  # rebuilt, once
            warnings.warn(
                f"The cached tiny Llama 2 failed to load ({type(err).__name__}); rebuilding it.",
                stacklevel=2,
            )
            model, tokenizer = load(str(ensure_tiny_llama(rebuild=True)))
        else:
            if isinstance(err, OSError) and not Path(path).is_dir():
                _raise_hub_error(err, choice, token)
            raise _load_failure(err, path, stage[0]) from err
    _check_special_tokens(tokenizer, path)
    model.eval()
    return model, tokenizer


def _load_failure(err: Exception, path: str, stage: str) -> UserFacingError:
    """The message for files that passed the checks but failed to load (stage: what was loading)."""
    import transformers

    if stage == "tokenizer":
        return UserFacingError(
            f"The tokenizer of {path} failed to load ({library_message(err)}): its tokenizer "
            "files (tokenizer.json, tokenizer.model, tokenizer_config.json) are damaged or not "
            "a tokenizer.",
            "Download the model again, or copy its tokenizer files from the model's repository "
            "(every Llama 2 has the same tokenizer: meta-llama/Llama-2-7b-hf's).",
        )
    return UserFacingError(
        f"{path} passed the checks but its weights failed to load ({library_message(err)}).",
        "Its files may be damaged, or need a newer transformers than this "
        f"{transformers.__version__}: download the model again, or upgrade transformers.",
    )


def _check_special_tokens(tokenizer, path: str) -> None:
    """Raise UserFacingError unless the tokenizer has the BOS and EOS every Llama prompt uses."""
    missing = [
        name for name in ("bos_token_id", "eos_token_id") if getattr(tokenizer, name) is None
    ]
    if missing:
        raise UserFacingError(
            f"The tokenizer of {path} has no {' or '.join(m[:3].upper() for m in missing)} "
            "token, which every Llama 2 prompt begins or ends with: its tokenizer_config.json "
            "is missing or damaged.",
            "Copy tokenizer_config.json (and special_tokens_map.json) from the model's "
            "repository into the folder, or save them with tokenizer.save_pretrained(folder).",
        )


def _file_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a damaged model file raises while loading (bad JSON, bad safetensors)."""
    return (OSError, ValueError, getattr(safetensors, "SafetensorError", OSError))


def _raise_hub_error(err: OSError, choice: ModelChoice, token: str | None) -> None:
    """Raise a UserFacingError for a Hub refusal inside err; return if there is none."""
    hub_err = find_hub_error(err)
    if hub_err is None:
        return
    _, what, todo = explain_hub_error(hub_err, choice.name, bool(token or find_token()))
    raise UserFacingError(what, todo) from err


def load_pipeline(
    choice: ModelChoice,
    settings: Settings,
    token: str | None = None,
    quantization_config=None,
):
    """Return a `text-generation` pipeline for the choice, loaded with the settings."""
    from transformers import pipeline

    model, tokenizer = load_model_and_tokenizer(choice, settings, token, quantization_config)
    return pipeline("text-generation", model=model, tokenizer=tokenizer)


def make_quantization_config(plan):
    """Return the `BitsAndBytesConfig` a plan asks for (NF4 or int8), or None for 16-bit.

    NF4 computes in the plan's dtype: float16 on a T4 (no bfloat16 tensor cores there), bfloat16
    from Ampere up. Double quantization stores the block scales in 8 bits as well.
    """
    if plan.quantization is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserFacingError(
            f"{plan.model} is planned in {plan.quantization}, which needs the bitsandbytes "
            "package, and it is not installed (Colab does not ship it).",
            "On Colab: run `%pip install bitsandbytes` in a cell (the Setup cell does this on a "
            "GPU runtime), then run this cell again; no restart is needed. Elsewhere: "
            "`pip install bitsandbytes`.",
        ) from None

    if plan.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=getattr(torch, plan.dtype),
        bnb_4bit_use_double_quant=True,  # the block scales in 8 bits too (plan counts them so)
    )


@contextmanager
def oom_as_advice(plan, doing: str = "generating") -> Iterator[None]:
    """Turn a CUDA out-of-memory error inside the block into a `UserFacingError` with advice."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise UserFacingError(
            f"The GPU ran out of memory while {doing} with {plan.model} "
            f"({plan.format_label}: {plan.weights_bytes / GiB:.2f} GiB of "
            f"weights; the plan leaves room for about {plan.context_window:,} tokens of "
            "context). Memory still held by an earlier model counts too.",
            "Restart the runtime (Runtime > Restart session) so only this model is in memory. "
            + plan.advice,
        ) from err


def load_with_plan(plan, token: str | None = None, cache_dir: str | None = None):
    """Load (model, tokenizer) the way a `LoadPlan` says; refuse early if it does not fit.

    The plan's dtype and quantization become the loading settings; a CUDA out-of-memory error
    while loading becomes the plan's advice, and a Hub refusal a clear message, not a traceback.
    """
    if not plan.fits:
        raise UserFacingError(f"{plan.model} does not fit: {plan.reason}", plan.advice)
    settings = settings_for(plan.device, plan.dtype, plan.reason)
    with oom_as_advice(plan, "loading"):
        return load_model_and_tokenizer(
            ModelChoice(plan.model, "from the plan"),
            settings,
            token=token,
            quantization_config=make_quantization_config(plan),
            cache_dir=cache_dir,
        )
