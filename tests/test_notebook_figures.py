"""The figures a learner reads in the markdown are the ones the cells print, on every stack.

A lesson often quotes what a cell just printed ("room for 2,451 tokens", "About 100 GiB"). The
cell's figure comes from code and from the offline model, so it can change (a new tiny model, a
new library version); the sentence does not change by itself. Each quote is listed here as two
patterns, never as a value: where the markdown says the figure, and where a cell prints it. The
test runs the notebook once (tests/notebook_kernel.py), reads both figures and checks that they
agree to the precision the markdown gives ("about 24" agrees with 24.2, "12.31" with 12.31).

A figure from elsewhere (the paper, a spec sheet) is not listed: its source is named in the text.
When you edit a quoted sentence, keep its pattern here matching; when you quote a new printed
figure, add it.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


class Quote(NamedTuple):
    """A figure a notebook's markdown quotes from its output: group `n` of both patterns."""

    said: str  # where the markdown says it (every match is checked)
    printed: str  # where a cell prints it (the last match: the figure the learner saw last)


QUOTES: dict[str, list[Quote]] = {
    "00_meet_llama2": [
        Quote(r"\((?P<n>\d+) per parameter for 7B\)", r"^7B\s+(?P<n>[\d,]+)$"),
        Quote(r"loss (?P<n>[\d.]+)%", r"ChatGPT\s+[\d.]+\s+[\d.]+\s+(?P<n>[\d.]+)"),
        Quote(r"context \((?P<n>\d+)x Llama 1\)", r"context is (?P<n>\d+)x Llama 1's"),
    ],
    "01_setup": [
        Quote(r"(?P<n>[\d.]+) GiB of weights", r"7B weights, float16 : (?P<n>[\d.]+) GiB"),
        Quote(
            r"(?:torch can use|gives torch|the T4's) (?P<n>[\d.]+) GiB",
            r"torch can use\s+: (?P<n>[\d.]+) GiB",
        ),
        Quote(
            r"about (?P<n>[\d.]+) GiB is left|part of the (?P<n2>[\d.]+) GiB",
            r"Left after the weights\s+: (?P<n>[\d.]+) GiB",
        ),
        Quote(r"RAM Colab leaves you\*\* \((?P<n>[\d.]+) GiB", r"system RAM\s+: (?P<n>[\d.]+) GiB"),
        Quote(r"(?P<n>[\d.]+) MiB (?:of \*KV cache\*|each)", r"per token\s+: (?P<n>[\d.]+) MiB"),
        Quote(
            r"room for (?P<n>[\d,]+) tokens of conversation|(?P<n2>[\d,]+) tokens of KV cache fit",
            r"Tokens of context that fit: (?P<n>[\d,]+)",
        ),
        Quote(r"not Llama 2's full (?P<n>[\d,]+)", r"that fit: [\d,]+ of (?P<n>[\d,]+)"),
    ],
    "03_pipeline": [
        Quote(r"up to (?P<n>\d+) new tokens", r"left room for (?P<n>\d+) new tokens"),
        Quote(
            r"the (?P<n>\d+)-token prompt|same count: (?P<n2>\d+) tokens",
            r"^Prompt tokens: (?P<n>\d+)",
        ),
    ],
    "04_generation": [
        Quote(r"1 / (?P<n>[\d,]+) =", r"Vocabulary: (?P<n>[\d,]+) tokens"),
        Quote(r"1 / [\d,]+ = (?P<n>[\d.]+) %", r"1/V = (?P<n>[\d.]+)%"),
        Quote(r"ln\(32,000\) = (?P<n>[\d.]+)", r"ln\(V\) = (?P<n>[\d.]+)"),
        Quote(
            r"toy scores top-p 0\.9 keeps (?P<n>\w+) tokens",
            r"toy scores, top_p=0\.9: (?P<n>\d+) tokens",
        ),
        Quote(
            r"reads (?P<n>[\d.]+) GiB per token|add about \d+ MiB to (?P<n2>[\d.]+) GiB",
            r"(?P<n>[\d.]+) GiB of weights read per token",
        ),
        Quote(
            r"cannot pass about (?P<n>\d+)\s+tokens|a limit of (?P<n2>\d+)|"
            r"gives (?P<n3>[\d.]+)\s+tokens/s at no context",
            r"T4 limit at 320 GB/s \(\d+ GiB/s\): (?P<n>[\d.]+) tokens/s",
        ),
        Quote(r"(?P<n>[\d.]+) at 2,048", r"with 2,048 tokens of context: (?P<n>[\d.]+) tokens/s"),
    ],
    "05_chat_prompting": [
        Quote(r"three pieces \((?P<n>`[^)]*`)\)", r"'▁Hi', (?P<n>.*?), '▁there'"),
    ],
    "06_chat_app": [
        Quote(
            r"7B fits in float16 with room for (?P<n>[\d,]+) tokens",
            r"A free Colab T4:\n\s+Llama 2 7B chat: fits \(float16, (?P<n>[\d,]+) tokens",
        ),
    ],
    "07_bigger_models": [
        Quote(
            r"(?:13B download is|downloads|13B's|skips the) (?P<n>[\d.]+)\s+GiB",
            r"^13b\s+[\d,]+\s+(?P<n>[\d.]+) GiB",
        ),
        Quote(
            r"\(about (?P<n>[\d.]+) GiB\)|about (?P<n2>[\d.]+) GiB of GPU memory|"
            r"NF4 \((?P<n3>[\d.]+) GiB",
            r"^13b\s+[\d,]+\s+[\d.]+ GiB\s+(?P<n>[\d.]+) GiB",
        ),
        Quote(
            r"70B's weights are (?P<n>[\d.]+) GiB|70B needs (?P<n2>[\d.]+) GiB",
            r"^70b\s+[\d,]+\s+[\d.]+ GiB\s+(?P<n>[\d.]+) GiB",
        ),
        Quote(r"from (?P<n>[\d.]+) GiB to", r"^7b\s+[\d,]+\s+(?P<n>[\d.]+) GiB"),
        Quote(r"GiB to (?P<n>[\d.]+) GiB", r"^7b\s+[\d,]+\s+[\d.]+ GiB\s+(?P<n>[\d.]+) GiB"),
        Quote(r"a T4 gives (?P<n>[\d.]+) GiB after", r"Tesla T4: (?P<n>[\d.]+) GiB usable"),
        Quote(r"need (?P<n>[\d.]+) GiB of cache", r"4,096 tokens: (?P<n>[\d.]+) GiB instead"),
        Quote(
            r"make (?P<n>[\d,]+) tokens|A (?P<n2>[\d,]+)-token chat",
            r"MiB/token x (?P<n>[\d,]+) =",
        ),
        Quote(
            r"Llama 2 7B's (?P<n>[\d,]+):|with (?P<n2>[\d,]+) tokens of room|"
            r"\((?P<n3>[\d,]+) in float16\)",
            r"^7b\s.*float16, (?P<n>[\d,]+) tokens of context",
        ),
        Quote(
            r"13B for (?P<n>[\d,]+)\.|has room for (?P<n2>[\d,]+)\.",
            r"13b-Instruct-hf .* float16 compute, (?P<n>[\d,]+) tokens",
        ),
        Quote(
            r"trained on (?P<n>[\d,]+)-token sequences|its (?P<n2>[\d,]+) tokens fit",
            r"capped at (?P<n>[\d,]+)",
        ),
    ],
    "08_fine_tuning": [
        Quote(r"About (?P<n>\d+) GiB: more than", r"fine-tuning, total\s+(?P<n>[\d.]+) GiB"),
        Quote(r"About (?P<n>[\d.]+) GiB, with the rest", r"QLoRA, total\s+(?P<n>[\d.]+) GiB"),
        Quote(
            r"float16\s+weights \((?P<n>[\d.]+) GiB\)|next to (?P<n2>[\d.]+)\s+GiB",
            r"7B in float16: (?P<n>[\d.]+) GiB",
        ),
        Quote(
            r"(?P<n>[\d,]+) on the tiny model|But (?P<n2>[\d,]+)\s+numbers",
            r"(?P<n>[\d,]+) for the tiny model",
        ),
        Quote(r"(?P<n>[\d,]+) on 7B", r"(?P<n>[\d,]+) parameters for 7B"),
        Quote(r"About (?P<n>\d+) KiB for the tiny", r"model\.safetensors\s+(?P<n>[\d.]+) KiB"),
        Quote(r"accuracy climbs to (?P<n>\d+)%", r"token accuracy (?P<n>\d+)%"),
    ],
}


def _markdown(name: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _figure(match: re.Match) -> str:
    """The figure a match found: group `n`, or the first other group that matched."""
    found = [v for k, v in match.groupdict().items() if v is not None and k.startswith("n")]
    return found[0]


def _parse(text: str) -> Decimal | tuple[str, ...]:
    """A figure as a number ("2,451", "0.0031%", "three"), or quoted pieces as a tuple."""
    quoted = re.findall(r"[`'](.*?)[`']", text)
    if quoted:
        return tuple(quoted)
    text = text.replace(",", "").rstrip("%").strip()
    return Decimal(NUMBER_WORDS.get(text.lower(), text))


def agree(said: str, printed: str) -> bool:
    """True when the two figures can be the same number, each to the precision it is given."""
    a, b = _parse(said), _parse(printed)
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a == b
    slack = Decimal(10) ** a.as_tuple().exponent / 2 + Decimal(10) ** b.as_tuple().exponent / 2
    return abs(a - b) < slack


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_the_markdown_quotes_what_the_cells_print(executed, name):
    nb = executed(name)
    printed = "\n".join(nb.printed[i] for i in sorted(nb.printed))
    markdown = _markdown(name)
    wrong = []
    for quote in QUOTES[name]:
        said = list(re.finditer(quote.said, markdown, re.M))
        shown = list(re.finditer(quote.printed, printed, re.M))
        assert said, f"{name}: the markdown no longer says /{quote.said}/: update QUOTES"
        assert shown, f"{name}: no cell prints /{quote.printed}/ any more: update QUOTES"
        figure = _figure(shown[-1])
        for match in said:
            if not agree(_figure(match), figure):
                wrong.append(f"the markdown says {match.group(0)!r}, a cell prints {figure!r}")
    assert wrong == [], f"{name}:\n" + "\n".join(wrong)


def test_figures_agree_to_the_precision_they_are_given():
    assert agree("24", "24.2") and agree("about 24".split()[-1], "24.4")
    assert agree("12.31", "12.31") and not agree("12.31", "12.34")
    assert agree("0.003", "0.0031") and not agree("0.003", "0.0061")
    assert agree("2,451", "2,451") and not agree("2,451", "2,450")
    assert agree("4.2", "4.15") and not agree("4.2", "4.08")
    assert agree("three", "3") and agree("100", "100")
    assert agree("`▁</`, `s`, `>`", "'▁</', 's', '>'") and not agree("`▁</`, `s`", "'▁</'")
