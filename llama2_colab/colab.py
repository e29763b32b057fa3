"""Colab links: the Open-in-Colab URL and badge of a notebook in this repository."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO", "BRANCH", "DRIVE_MOUNT", "colab_url", "badge_markdown", "drive_cache_dir"]

REPO = "llama2-colab/llama2-colab"
BRANCH = "main"
DRIVE_MOUNT = "/content/drive"  # where `google.colab.drive.mount` puts your Drive
_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook_path: str) -> str:
    """Return the Open-in-Colab URL for a notebook path relative to the repository root."""
    path = notebook_path.replace("\\", "/").lstrip("./")
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{path}"


def badge_markdown(notebook_path: str) -> str:
    """Return the Markdown Open-in-Colab badge for a notebook path."""
    return f"[![Open In Colab]({_BADGE_SVG})]({colab_url(notebook_path)})"


def drive_cache_dir(
    mount_point: str = DRIVE_MOUNT, folder: str = "llama2-colab/hf-cache"
) -> Path | None:
    """Return a weights cache folder on a mounted Google Drive (created), or None if unmounted.

    Pass it as `cache_dir=` to `from_pretrained`/`load_with_plan`, so a new Colab session finds
    the weights on Drive instead of downloading them again.
    """
    drive = Path(mount_point) / "MyDrive"
    if not drive.is_dir():
        return None
    path = drive / folder
    path.mkdir(parents=True, exist_ok=True)
    return path
