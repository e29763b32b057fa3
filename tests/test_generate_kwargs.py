"""The package's generate() call is the pipeline's call: no extra kwarg, no extra warning.

A lent H200 measured the package's path 5% slower than a plain pipeline, and one run blamed
`max_length=None`, which `stream_generate` used to pass to silence a warning. Reading
transformers' generate (5.15, 5.17, 5.24) shows no per-token step that depends on it, but the
rule that makes the comparison fair is simple: the package hands generate() nothing the
pipeline does not, so any speed difference is the package's own code, which these tests pin.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import pipeline

from llama2_colab.bench import make_bench_prompt
from llama2_colab.generation import stream_generate

GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
NOT_GENERATION = {"input_ids", "attention_mask", "streamer"}  # the inputs, not the config


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def generate_calls(tiny_model_and_tokenizer, monkeypatch):
    """Every generate() call's kwargs, on the real model (the call still runs)."""
    model, _ = tiny_model_and_tokenizer
    calls: list[dict] = []
    real = model.generate

    def recorded(*args, **kwargs):
        calls.append(dict(kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recorded)
    return calls


@pytest.fixture
def generate_warnings():
    """What transformers' generate() logs as warnings while the test runs."""
    recorder = _Recorder()
    hf_logger = logging.getLogger("transformers.generation.utils")
    hf_logger.addHandler(recorder)
    yield recorder.messages
    hf_logger.removeHandler(recorder)


def _generation_kwargs(call: dict) -> dict:
    return {k: v for k, v in call.items() if k not in NOT_GENERATION}


def test_package_hands_generate_only_what_the_pipeline_does(
    tiny_model_and_tokenizer, generate_calls
):
    model, tokenizer = tiny_model_and_tokenizer
    text, ids = make_bench_prompt(tokenizer, 32)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    piped = pipe(text, **GREEDY, return_tensors=True)[0]["generated_token_ids"][len(ids) :]
    _, package_ids, _ = stream_generate(model, tokenizer, torch.tensor([ids]), **GREEDY)
    pipeline_kwargs, package_kwargs = (_generation_kwargs(c) for c in generate_calls)

    assert "max_length" not in package_kwargs  # no length besides max_new_tokens
    # The one addition is pad_token_id, set to the value generate() itself falls back to.
    extra = set(package_kwargs) - set(pipeline_kwargs)
    assert extra <= {"pad_token_id"}
    assert package_kwargs.get("pad_token_id", tokenizer.eos_token_id) == tokenizer.eos_token_id
    shared = set(package_kwargs) & set(pipeline_kwargs)
    assert {k: package_kwargs[k] for k in shared} == {k: pipeline_kwargs[k] for k in shared}
    assert package_ids == list(piped)


def test_the_both_lengths_warning_stays_away_only_inside_the_package(
    tiny_model_and_tokenizer, generate_warnings
):
    # Llama 2's generation_config sets max_length=4096, so a direct generate() with
    # max_new_tokens warns that both are set; the package's call must not, and must not hide
    # the warning from anyone else's call afterwards.
    model, tokenizer = tiny_model_and_tokenizer
    assert model.generation_config.max_length == 4096
    ids = torch.tensor([tokenizer("I have tomatoes at home").input_ids])
    stream_generate(model, tokenizer, ids, **GREEDY)
    assert not [m for m in generate_warnings if m.startswith("Both `max_new_tokens`")]
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=2, **GREEDY)
    assert [m for m in generate_warnings if m.startswith("Both `max_new_tokens`")]
