"""Every test, and every notebook nbval runs, uses the offline tiny Llama 2 with no network."""

from __future__ import annotations

import os

import pytest
from serve_process import tiny_server  # noqa: F401 - a served tiny model, for any test module


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives notebooks in headless Chromium (tests/test_browser.py)"
    )
    # Set before nbval starts any kernel: kernels inherit this process's environment.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LLAMA2_COLAB_MODEL"] = "tiny"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_dir():
    """The cached offline tiny Llama 2 directory (built once)."""
    from llama2_colab import ensure_tiny_llama

    return ensure_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_dir):
    """(model, tokenizer) of the tiny Llama 2 in float32 on the CPU, loaded once per session."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def executed():
    """executed("05_chat_prompting"): that notebook run once per session, its kernel kept up."""
    from notebook_kernel import execute_notebook

    runs: dict = {}

    def get(name: str):
        if name not in runs:
            runs[name] = execute_notebook(name)
        return runs[name]

    yield get
    for nb in runs.values():
        nb.close()
