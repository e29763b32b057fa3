"""Colab links: the Open-in-Colab URL and badge of a notebook in this repository."""

from __future__ import annotations

__all__ = ["REPO", "BRANCH", "colab_url", "badge_markdown"]

REPO = "llama2-colab/llama2-colab"
BRANCH = "main"
_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook_path: str) -> str:
    """Return the Open-in-Colab URL for a notebook path relative to the repository root."""
    path = notebook_path.replace("\\", "/").lstrip("./")
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{path}"


def badge_markdown(notebook_path: str) -> str:
    """Return the Markdown Open-in-Colab badge for a notebook path."""
    return f"[![Open In Colab]({_BADGE_SVG})]({colab_url(notebook_path)})"
