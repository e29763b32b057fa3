"""Quiet, honest output: what a notebook writes to stderr is a warning its markdown explains.

A learner cannot act on a warning nobody explains. Each executed notebook's stderr is read line
by line; a line must match one of EXPLAINED, and then the notebook's markdown must carry the
phrase that explains it. Anything else fails with the line, so it is either fixed at its source
or explained to the learner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))

# stderr line pattern -> a phrase the notebook's markdown must contain when the line appears
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOAD_REPORT = "load report"
EXPLAINED = {
    # bitsandbytes on a CPU with AVX512-BF16 looks for an optional faster kernel on the Hub and
    # falls back to its own; on a T4 it never prints this.
    r"Failed to load CPU gemm_4bit_forward from kernels-community": "gemm_4bit_forward",
    # generation_config.max_length (4096) next to max_new_tokens: the latter wins.
    r"Both `max_new_tokens` \(=\d+\) and `max_length`\(=\d+\) seem to have been set": (
        "`max_new_tokens` and `max_length`"
    ),
    # 03 runs the article's code as written, then changes it to dtype=.
    r"`torch_dtype` is deprecated! Use `dtype` instead!": "`torch_dtype=`",
    # peft asks transformers 5 under a retiring name (08, 10).
    r"FutureWarning: `is_gradient_checkpointing` is deprecated": "is_gradient_checkpointing",
    r"^\s*warnings\.warn\($": "is_gradient_checkpointing",
    # bitsandbytes 0.46 (the floor, on the Colab stack) on a machine without a GPU (04, 07, 08, 10).
    r"bitsandbytes was compiled without GPU support": "compiled without GPU support",
    r"FutureWarning: _check_is_size will be removed": "_check_is_size",
    r"^\s*torch\._check_is_size\(blocksize\)$": "_check_is_size",
    # transformers 5.15 (Colab's): a pipeline passes a generation config and arguments (03).
    r"Passing `generation_config` together with generation-related arguments": (
        "`generation_config` together with generation-related"
    ),
    # transformers 5.15 (Colab's): the pipeline asks for a clean-up that BPE tokenizers skip (03).
    r"Ignoring clean_up_tokenization_spaces=True for BPE tokenizer": (
        "clean_up_tokenization_spaces=True for BPE tokenizer"
    ),
    # transformers 5.15 (Colab's): peft reads config.use_return_dict (10's reward model).
    r"`use_return_dict` is deprecated!": "`use_return_dict` is deprecated",
    # the reward model's load report (10): its new head is MISSING, the old one UNEXPECTED.
    r"LlamaForSequenceClassification LOAD REPORT": _LOAD_REPORT,
    r"^Key\s+\|\s+Status": _LOAD_REPORT,
    r"^-+\+-+": _LOAD_REPORT,
    r"^lm_head\.weight\s+\| UNEXPECTED": _LOAD_REPORT,
    r"^score\.weight\s+\| MISSING": _LOAD_REPORT,
    r"^Notes:$": _LOAD_REPORT,
    r"^- (UNEXPECTED|MISSING):": _LOAD_REPORT,
}


def _markdown(name: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("name", NAMES)
def test_stderr_holds_only_explained_warnings(executed, name):
    nb = executed(name)
    markdown = _markdown(name).lower()
    unexplained = []
    for index, text in nb.stderr:
        for line in _ANSI.sub("", text).splitlines():
            if not line.strip():
                continue
            pattern = next((p for p in EXPLAINED if re.search(p, line)), None)
            if pattern is None or EXPLAINED[pattern].lower() not in markdown:
                unexplained.append(f"cell {index}: {line[:200]}")
    assert not unexplained, "\n".join(unexplained)
