"""Normalise notebooks before committing: clear outputs, set Colab T4 metadata, fix the badge.

Usage: python scripts/clean_notebooks.py [notebooks/*.ipynb]   (default: every notebook)
The tests check the same things, so run this whenever you save a notebook from Jupyter or Colab.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llama2_colab.colab import badge_markdown  # noqa: E402

BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")

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
    after = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
        return True
    return False


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for p in paths:
        if clean(p):
            print(f"cleaned {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
