"""Normalise notebooks before committing: clear outputs, set Colab T4 metadata, fix the badge.

Usage: python scripts/clean_notebooks.py [notebooks/*.ipynb]   (default: every notebook)
The tests check the same things, so run this whenever you save a notebook from Jupyter or Colab.
It also writes, from `llama2_colab.colab.REPO` (the one place that names the repository), each
notebook's Setup cell, every badge in the README, and `colab_badge.md`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama2_colab.colab import badge_markdown, setup_cell_source  # noqa: E402

BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
NOTEBOOK_BADGE_RE = re.compile(
    r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*?"
    r"/(notebooks/[\w.-]+\.ipynb)\)"
)
BADGE_PAGE_INTRO = """# Open in Colab badges

One badge per notebook, for pasting into issues, posts and slides. Each opens the notebook from
`main` on a Colab runtime that asks for a T4 GPU. This page is written by
`scripts/clean_notebooks.py`; edit the notebooks' titles, not this file.
"""

METADATA = {
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def clean(path: Path) -> bool:
    """Clean one notebook in place; return True if it changed."""
    before = path.read_text(encoding="utf-8")
    nb = json.loads(before)
    rel = path.resolve().relative_to(ROOT).as_posix()
    nb["metadata"] = METADATA | {"colab": METADATA["colab"] | {"name": path.name}}
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    for i, cell in enumerate(nb["cells"]):
        cell.setdefault("id", f"cell-{i}")
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags",)}
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        if isinstance(cell["source"], list):
            cell["source"] = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            cell["source"] = BADGE_RE.sub(badge_markdown(rel), cell["source"])
    setup = setup_cell_index(nb["cells"])
    if setup is not None:
        nb["cells"][setup]["source"] = setup_cell_source()
    after = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
        return True
    return False


def setup_cell_index(cells: list[dict]) -> int | None:
    """Return the index of the code cell right after the `## Setup` heading, if any."""
    for i, cell in enumerate(cells[:-1]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.lstrip().startswith("## Setup"):
            if cells[i + 1]["cell_type"] == "code":
                return i + 1
    return None


def notebook_title(path: Path) -> str:
    """Return a notebook's H1 title without the '# '."""
    first = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
    return first.splitlines()[0].removeprefix("# ").strip()


def badge_page(paths: list[Path]) -> str:
    """Return colab_badge.md: one section with a badge per notebook."""
    parts = [BADGE_PAGE_INTRO]
    for path in paths:
        rel = path.resolve().relative_to(ROOT).as_posix()
        parts.append(f"## {notebook_title(path)}\n\n`{rel}`\n\n{badge_markdown(rel)}\n")
    return "\n".join(parts)


def write_if_changed(path: Path, text: str) -> bool:
    """Write text to path unless it already holds it; return True if it changed."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    every = sorted((ROOT / "notebooks").glob("*.ipynb"))
    paths = [Path(p) for p in argv] or every
    for p in paths:
        if clean(p):
            print(f"cleaned {p}")
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if write_if_changed(readme, NOTEBOOK_BADGE_RE.sub(lambda m: badge_markdown(m[1]), text)):
        print("rewrote the README's badges")
    if write_if_changed(ROOT / "colab_badge.md", badge_page(every)):
        print("rewrote colab_badge.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
