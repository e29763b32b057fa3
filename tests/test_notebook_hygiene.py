"""Every notebook is committed clean, opens on a T4 from its own badge, and is listed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llama2_colab.colab import badge_markdown, colab_url

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "00_meet_llama2.ipynb",
    "01_setup.ipynb",
    "02_login.ipynb",
    "03_pipeline.ipynb",
    "04_generation.ipynb",
    "05_chat_prompting.ipynb",
    "06_chat_app.ipynb",
    "07_bigger_models.ipynb",
    "08_fine_tuning.ipynb",
    "09_code_llama.ipynb",
    "10_rlhf_in_miniature.ipynb",
    "11_serve_and_scale_out.ipynb",
]
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_walkthrough_is_complete():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_title_then_its_own_badge(path):
    cells = _load(path)["cells"]
    first = cells[0]
    assert first["cell_type"] == "markdown"
    lines = [ln for ln in "".join(first["source"]).splitlines() if ln.strip()]
    assert lines[0].startswith("# ") and not lines[0].startswith("## ")
    assert lines[1] == badge_markdown(_rel(path)), "badge must sit right under the H1"
    h1 = [
        ln
        for c in cells
        if c["cell_type"] == "markdown"
        for ln in "".join(c["source"]).splitlines()
        if ln.startswith("# ")
    ]
    assert len(h1) == 1, "one H1 per notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_asks_colab_for_a_t4(path):
    meta = _load(path)["metadata"]
    assert meta["accelerator"] == "GPU"
    assert meta["colab"]["gpuType"] == "T4"
    assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for cell in _load(path)["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: clear outputs before committing"
            assert cell["execution_count"] is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_token_in_the_notebook(path):
    assert not TOKEN_RE.search(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_structure_setup_markdown_first_summary(path):
    cells = _load(path)["cells"]
    headings = [
        ln.strip().lower()
        for c in cells
        if c["cell_type"] == "markdown"
        for ln in "".join(c["source"]).splitlines()
        if ln.startswith("## ")
    ]
    assert "## setup" in headings
    assert any(h.startswith("## summary") for h in headings)
    for prev, cell in zip(cells, cells[1:], strict=False):
        if cell["cell_type"] == "code" and prev["cell_type"] == "code":
            pytest.fail(
                f"{path.name}: code cell without markdown before it: {cell['source'][:60]!r}"
            )
    # The helper is installed on Colab only, never by an unconditional or commented-out cell.
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert 'if "google.colab" in sys.modules:' in code
    assert "# !pip" not in code and "#!pip" not in code


@pytest.mark.parametrize("doc", ["README.md", "colab_badge.md"])
def test_every_notebook_is_linked(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert colab_url(_rel(path)) in text, f"{doc} lacks the badge of {path.name}"
