"""Lean lessons: a word budget for each notebook's markdown, and asserts only where they teach.

The budget, in STYLE terms: one idea a learner finishes in one sitting is at most 1,500 words of
markdown in the whole notebook (about ten minutes of reading next to the running cells),
"## Going further" and the collapsed `<details>` solutions included, and no lesson cell over 300
words. Words are runs of letters and digits (the regex `\\w+`), so "T4's" is two. Depth goes
to `docs/going-further.md`, runnable depth to a notebook of its own (10 took 08's RLHF part).

Notebooks written before the budget are listed in OVER_BUDGET with the words they have now: they
may shrink, never grow, and leave the list once they fit (the test says so).

Asserts: a lesson asserts what it teaches (`ids.count(BOS) == 1`); checks a test needs read the
executed notebook from tests/test_notebook_values.py. So no assert only on the tiny model, none
inside a block, and no cell may grow the number of asserts past ASSERTS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
BUDGET_WORDS = 1500
CELL_WORDS = 300
# Words of markdown now (2026-11-27), for the notebooks still over the budget: shrink only.
OVER_BUDGET: dict[str, int] = {}
# The asserts each lesson keeps (they teach); moving a check to tests/ lowers the number.
ASSERTS = {
    "00_meet_llama2": 6,
    "01_setup": 7,
    "02_login": 4,
    "03_pipeline": 8,
    "04_generation": 13,
    "05_chat_prompting": 20,
    "06_chat_app": 4,
    "07_bigger_models": 10,
    "08_fine_tuning": 13,
    "09_code_llama": 0,
    "10_rlhf_in_miniature": 3,
    "11_serve_and_scale_out": 2,
}
GOING_FURTHER = re.compile(r"^#+\s*going further", re.I | re.M)
DETAILS = re.compile(r"<details>.*?</details>", re.S)


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


def lesson_markdown(name: str) -> list[str]:
    """The markdown a learner reads on the way through: up to "Going further", no solutions."""
    out = []
    for cell in _cells(name):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        if GOING_FURTHER.search(text):
            out.append(DETAILS.sub("", text[: GOING_FURTHER.search(text).start()]))
            break
        out.append(DETAILS.sub("", text))
    return out


def count_words(text: str) -> int:
    return len(re.findall(r"\S+", text))


def all_markdown(name: str) -> str:
    """Every markdown cell of the notebook, Going further and solutions included."""
    return "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "markdown")


@pytest.mark.parametrize("name", NAMES)
def test_markdown_fits_the_word_budget(name):
    words = len(re.findall(r"\w+", all_markdown(name)))
    cap = OVER_BUDGET.get(name, BUDGET_WORDS)
    assert words <= cap, f"{name}: {words} words of markdown, budget {cap}"
    if name in OVER_BUDGET:
        assert words > BUDGET_WORDS, f"{name} fits the budget now: remove it from OVER_BUDGET"


@pytest.mark.parametrize("name", NAMES)
def test_no_markdown_cell_is_a_wall_of_text(name):
    longest = max(count_words(t) for t in lesson_markdown(name))
    assert longest <= CELL_WORDS, f"{name}: a markdown cell of {longest} words"


def _code(name: str) -> list[str]:
    return ["".join(c["source"]) for c in _cells(name) if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_asserts_teach_and_do_not_test(name):
    code = _code(name)
    asserts = sum(len(re.findall(r"^assert\b", src, re.M)) for src in code)
    assert asserts <= ASSERTS[name], f"{name}: {asserts} asserts; checks belong in tests/"
    for src in code:
        # An assert inside a block (`if choice.is_tiny:`) checks the test run, not a fact.
        indented = [m.group(0) for m in re.finditer(r"^[ \t]+assert\b.*", src, re.M)]
        allowed = INDENTED_OK.get(name, set())
        assert set(indented) <= allowed, f"{name}: assert inside a block: {indented}"
    markdown = "\n".join(lesson_markdown(name))
    assert "checks the test suite runs" not in markdown


# Asserts inside a loop that state the lesson's point for every case (kept, listed).
INDENTED_OK = {
    "04_generation": {"    assert n >= k", "    assert fast_ids == plain_ids"},
    "05_chat_prompting": {
        "    assert fit.prompt_tokens + fit.max_new_tokens <= 400",
        '    assert fit.messages[0] == {"role": "system", "content": SYSTEM}',
        '    assert fit.messages[-1]["content"].startswith(f"Turn {turn}.")',
    },
    "08_fine_tuning": {
        "    assert ask(merged, EXAMPLES[0][0]) == answers[EXAMPLES[0][0]]",
        '    assert type(merged).__name__ == "LlamaForCausalLM"',
    },
}


def test_every_lesson_has_an_exercise_with_a_solution():
    for name in NAMES:
        text = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "markdown")
        assert "## Exercises" in text and "<details><summary>Solution</summary>" in text, name
