"""The context window has one name, `context_window`; the old names still work, with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama2_colab import ChatSession, fit_dialog, make_plan, preset_runtime, read_context_window

U = {"role": "user", "content": "Hello"}


def test_read_context_limit_warns_and_reads_the_same_window(tiny_model_and_tokenizer):
    from llama2_colab import read_context_limit

    model, _ = tiny_model_and_tokenizer
    with pytest.warns(DeprecationWarning, match="`read_context_window`"):
        assert read_context_limit(model) == read_context_window(model) == 4096


def test_chat_session_context_limit_warns_and_sets_the_window(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.warns(DeprecationWarning, match="`context_limit` is now called `context_window`"):
        session = ChatSession(model, tok, max_new_tokens=8, context_limit=300)
    assert session.context_window == 300
    with pytest.warns(DeprecationWarning):
        assert session.context_limit == 300
    with pytest.warns(DeprecationWarning):
        session.context_limit = 200
    assert session.context_window == 200
    with pytest.warns(DeprecationWarning):
        assert session.limit == 200
    assert session.plan_prompt("Hello").context_window == 200


def test_fit_dialog_takes_the_old_keyword_and_the_fit_answers_to_the_old_name(tok):
    with pytest.warns(DeprecationWarning):
        fit = fit_dialog(tok, [U], context_limit=600, max_new_tokens=100)
    assert fit.context_window == 600
    with pytest.warns(DeprecationWarning):
        assert fit.context_limit == 600
    with pytest.raises(TypeError, match="Pass `context_window` only"):
        fit_dialog(tok, [U], context_limit=600, context_window=600, max_new_tokens=100)


def test_plan_old_field_names_warn_and_give_the_same_numbers():
    plan = make_plan("meta-llama/Llama-2-7b-chat-hf", preset_runtime("T4"))
    assert 1024 <= plan.context_window < plan.model_context_window == 4096
    with pytest.warns(DeprecationWarning):
        assert plan.max_context_tokens == plan.context_window
    with pytest.warns(DeprecationWarning):
        assert plan.model_context_tokens == 4096
    assert "context_window" in json.dumps(plan.to_dict())


@pytest.fixture(scope="module")
def tok(tiny_model_and_tokenizer):
    return tiny_model_and_tokenizer[1]


OLD_NAMES = ("read_context_limit", "context_limit", "max_context_tokens", "model_context_tokens")


@pytest.mark.parametrize(
    "path",
    sorted(Path(__file__).resolve().parents[1].glob("notebooks/*.ipynb")),
    ids=lambda p: p.name,
)
def test_the_lessons_teach_the_current_names(path):
    # An old name would print a DeprecationWarning in a learner's notebook.
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells)
    assert [name for name in OLD_NAMES if name in text] == []
