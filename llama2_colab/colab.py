"""Colab glue: the repository's links, the notebooks' Setup cell, the install check, Drive.

`REPO` is the one place that names the repository: `scripts/clean_notebooks.py` writes the badges
and the Setup cell's install URL of every notebook, `colab_badge.md` and the README's badges from
it, and the tests check that they agree. Publishing under another owner is a one-line change.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

from .errors import UserFacingError

__all__ = [
    "REPO",
    "BRANCH",
    "DRIVE_MOUNT",
    "STACK_PACKAGES",
    "colab_url",
    "badge_markdown",
    "install_url",
    "setup_cell_source",
    "stack_versions",
    "stale_imports",
    "describe_install",
    "drive_cache_dir",
]

REPO = "llama2-colab/llama2-colab"
BRANCH = "main"
DRIVE_MOUNT = "/content/drive"  # where `google.colab.drive.mount` puts your Drive
_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"

# (distribution, module) of what the notebooks run on, in the order the Setup cell prints them.
STACK_PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("huggingface_hub", "huggingface_hub"),
    ("accelerate", "accelerate"),
    ("peft", "peft"),
    ("ipywidgets", "ipywidgets"),
    ("bitsandbytes", "bitsandbytes"),
)


def colab_url(notebook_path: str) -> str:
    """Return the Open-in-Colab URL for a notebook path relative to the repository root."""
    path = notebook_path.replace("\\", "/").lstrip("./")
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{path}"


def badge_markdown(notebook_path: str) -> str:
    """Return the Markdown Open-in-Colab badge for a notebook path."""
    return f"[![Open In Colab]({_BADGE_SVG})]({colab_url(notebook_path)})"


def install_url() -> str:
    """Return the pip URL the notebooks install the helper from."""
    return f"git+https://github.com/{REPO}@{BRANCH}"


def setup_cell_source() -> str:
    """Return the code of every notebook's Setup cell (clean_notebooks.py writes it)."""
    return f"""import sys

if "google.colab" in sys.modules:
    import torch  # Colab ships torch: the install below never touches it

    # Only what Colab lacks is installed; on a GPU that includes bitsandbytes for 4-bit.
    extras = "notebooks,quant" if torch.cuda.is_available() else "notebooks"
    %pip install -q "llama2-colab[{{extras}}] @ {install_url()}"

from llama2_colab.colab import describe_install

print(describe_install())"""


def _imported_version(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    return getattr(module, "__version__", None) if module is not None else None


def stack_versions() -> dict[str, str | None]:
    """Return the installed version of each package the notebooks use (None: not installed)."""
    versions: dict[str, str | None] = {}
    for dist, _ in STACK_PACKAGES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def stale_imports() -> list[tuple[str, str, str]]:
    """Return (package, imported version, installed version) for each module pip changed.

    A module already imported keeps its old code until the runtime restarts: that is the case
    in which Colab's "Restart session" is really needed.
    """
    stale = []
    installed = stack_versions()
    for dist, module in STACK_PACKAGES:
        imported = _imported_version(module)
        now = installed[dist]
        if imported and now and imported.split("+")[0] != now.split("+")[0]:
            stale.append((dist, imported, now))
    return stale


def describe_install() -> str:
    """Return the versions this kernel runs on and whether a restart is needed, in words."""
    versions = stack_versions()
    running = ", ".join(f"{dist} {ver or '(not installed)'}" for dist, ver in versions.items())
    lines = [f"Python {sys.version.split()[0]}; {running}."]
    stale = stale_imports()
    if stale:
        changed = "; ".join(f"{d} {a} is imported but {b} is installed" for d, a, b in stale)
        lines.append(
            f"Restart needed: {changed}. Runtime > Restart session, then run the notebook again "
            "from the top (the install is already done)."
        )
    else:
        lines.append("No restart needed: nothing this kernel had imported was changed.")
    return "\n".join(lines)


def drive_cache_dir(
    mount_point: str = DRIVE_MOUNT,
    folder: str = "llama2-colab/hf-cache",
    need_bytes: int = 0,
) -> Path | None:
    """Return a weights cache folder on a mounted Google Drive (created), or None if unmounted.

    Pass it as `cache_dir=` to `from_pretrained`/`load_with_plan`, so a new Colab session finds
    the weights on Drive instead of downloading them again. With `need_bytes`, refuse (with a
    `UserFacingError`) when the Drive has less free space than that, before anything is written.
    """
    drive = Path(mount_point) / "MyDrive"
    if not drive.is_dir():
        return None
    free = shutil.disk_usage(drive).free
    if need_bytes and free < need_bytes:
        raise UserFacingError(
            f"Your Google Drive has {free / 1e9:.1f} GB free; caching this model there needs "
            f"{need_bytes / 1e9:.1f} GB.",
            "Free space on Drive (or buy more), or leave USE_DRIVE off: the weights then download "
            "again in each new session.",
        )
    path = drive / folder
    path.mkdir(parents=True, exist_ok=True)
    return path
