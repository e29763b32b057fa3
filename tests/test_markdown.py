"""Every notebook's markdown renders as its author meant, in a CommonMark renderer.

Jupyter, Colab and GitHub render notebook markdown as CommonMark (plus tables), where raw HTML
follows rules that are easy to trip: a line such as `</details>` starts an HTML block that runs
to the next blank line, so an exercise "2. ..." written right under it is shown as raw text, not
as a list item, and its markdown is never rendered. markdown-it-py (Colab ships it) parses each
cell the way those front ends do, and these tests read its tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# The HTML the lessons use on purpose: collapsed solutions. Any other tag in prose is most likely
# a Llama 2 token written without backticks (`<s>`, `<<SYS>>`), which a browser hides.
HTML_TAGS = {"details", "summary"}
TAG = re.compile(r"</?([A-Za-z][\w-]*)")


def _renderer() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def _markdown_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "markdown"]


def structural_problems(text: str) -> list[str]:
    """What in this markdown would not render as written: each problem, with its line."""
    problems = []
    tokens = _renderer().parse(text)
    lines = text.splitlines()
    for token in tokens:
        if token.type == "html_block":
            # An HTML block may hold only tags: anything else in it is shown raw, unrendered.
            for offset, line in enumerate(token.content.splitlines()):
                if line.strip() and not line.lstrip().startswith("<"):
                    number = token.map[0] + offset + 1
                    problems.append(f"line {number} is swallowed by an HTML block: {line!r}")
            problems += _unknown_tags(token.content, token.map[0] + 1)
        elif token.type == "inline":
            for child in token.children or []:
                if child.type == "html_inline":
                    problems += _unknown_tags(child.content, token.map[0] + 1)
        elif token.type == "fence" and not _closed(token, lines):
            problems.append(f"the code block from line {token.map[0] + 1} is never closed")
    opened, closed = text.count("<details>"), text.count("</details>")
    if opened != closed:
        problems.append(f"{opened} <details> but {closed} </details>")
    return problems


def _unknown_tags(html: str, line: int) -> list[str]:
    """The HTML tags a lesson does not use on purpose (a hidden `<s>`, say)."""
    found = {m[1].lower() for m in TAG.finditer(html)} - HTML_TAGS
    hint = "is read as HTML, and hidden; put it in backticks"
    return [f"line {line}: <{tag}> {hint}" for tag in found]


def _closed(fence, lines: list[str]) -> bool:
    """True when the fence's last line closes it (an unclosed fence runs to the end of the cell)."""
    first, end = fence.map
    return end - 1 > first and lines[end - 1].strip().startswith(fence.markup)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_markdown_cell_renders_as_written(path):
    problems = [
        f"cell {index}: {problem}"
        for index, text in _markdown_cells(path)
        for problem in structural_problems(text)
    ]
    assert problems == [], "\n".join(problems)


def test_the_check_catches_what_a_learner_would_see_broken():
    # The exercise list of the issue: "2." right under "</details>" is raw text, not an item.
    broken = "1. One?\n\n<details><summary>Solution</summary>\n\nYes.\n\n</details>\n2. Two?\n"
    assert any("swallowed by an HTML block: '2. Two?'" in p for p in structural_problems(broken))
    assert structural_problems(broken.replace("</details>\n2.", "</details>\n\n2.")) == []
    assert structural_problems("The prompt starts with <s> here.") != []
    assert structural_problems("The prompt starts with `<s>` here.") == []
    assert structural_problems("<details><summary>Solution</summary>\n\nYes.\n") != []
    assert structural_problems("Code:\n\n```python\nx = 1\n") != []
    assert structural_problems("Code:\n\n```python\nx = 1\n```") == []
