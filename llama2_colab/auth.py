"""The Hugging Face token: found through huggingface_hub, shown only masked."""

from __future__ import annotations

__all__ = ["find_token", "mask_token"]


def find_token() -> str | None:
    """Return the token huggingface_hub would use (Colab secret HF_TOKEN, env, cached login)."""
    from huggingface_hub import get_token

    return get_token()


def mask_token(token: str | None) -> str:
    """Return a token safe to show: its prefix and last four characters only."""
    if not token:
        return "(none)"
    token = token.strip()
    if len(token) <= 8:
        return "*" * len(token)
    prefix = "hf_" if token.startswith("hf_") else ""
    return f"{prefix}...{token[-4:]}"
