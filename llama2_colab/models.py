"""Choosing a model (a pure decision) and loading it with the runtime's settings (the action)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .runtime import RuntimeFacts, Settings

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "TINY",
    "ModelChoice",
    "choose_model",
    "resolve_model_path",
    "load_model_and_tokenizer",
    "load_pipeline",
]

DEFAULT_MODEL = "meta-llama/Llama-2-7b-chat-hf"
MODEL_ENV = "LLAMA2_COLAB_MODEL"
TINY = "tiny"


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
    if requested:
        return ModelChoice(requested.strip(), "you asked for it")
    from_env = (env.get(MODEL_ENV) or "").strip()
    if from_env:
        return ModelChoice(from_env, f"set by ${MODEL_ENV}")
    if facts.gpu is None:
        return ModelChoice(
            TINY,
            "no GPU found, so the offline tiny Llama 2 stands in for "
            f"{DEFAULT_MODEL} (real architecture and chat format, random weights: expect "
            "gibberish). On Colab: Runtime > Change runtime type > T4 GPU.",
        )
    if not has_token:
        return ModelChoice(
            TINY,
            f"no Hugging Face token found and {DEFAULT_MODEL} is gated, so the offline tiny "
            "Llama 2 stands in (random weights: expect gibberish). Add HF_TOKEN to Colab "
            "Secrets or run `huggingface-cli login`, then run again.",
        )
    return ModelChoice(DEFAULT_MODEL, f"the default; {facts.gpu.name} can run it")


def resolve_model_path(choice: ModelChoice) -> str:
    """Return what `from_pretrained` should get: the tiny model's directory, or the name as is."""
    if choice.is_tiny:
        from .tiny import ensure_tiny_llama

        return str(ensure_tiny_llama())
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
):
    """Load (model, tokenizer) for the choice with the settings' dtype, attention and placement."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(choice)
    tokenizer = AutoTokenizer.from_pretrained(path, token=token)
    model = AutoModelForCausalLM.from_pretrained(
        path, token=token, **_model_kwargs(settings, quantization_config)
    )
    model.eval()
    return model, tokenizer


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
