"""The offline tiny Llama 2 behaves like Llama 2 where it matters, and the demo runs on it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from llama2_colab import (
    DEFAULT_MODEL,
    LLAMA2_CHAT_TEMPLATE,
    TINY,
    build_tiny_llama,
    choose_model,
    load_model_and_tokenizer,
    preset_runtime,
    recommend_settings,
    stream_generate,
)


def _digest(directory):
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        h.update(name.encode())
        with open(os.path.join(directory, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def test_build_is_deterministic(tmp_path, tiny_dir):
    assert _digest(build_tiny_llama(tmp_path / "again")) == _digest(tiny_dir)


def test_real_llama_architecture_and_special_tokens(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.max_position_embeddings == 4096
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert tok.chat_template == LLAMA2_CHAT_TEMPLATE
    # Llama 2 puts BOS (only) in front, and encodes a newline as the byte token <0x0A> = id 13.
    ids = tok.encode("Hi\nthere")
    assert ids[0] == 1 and 2 not in ids and 13 in ids
    # Byte fallback: any text round-trips, Japanese and emoji included.
    text = "人工知能の分野 ☃ 🦙"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_chat_template_renders_the_llama2_format(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    rendered = tok.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        tokenize=False,
    )
    assert rendered == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]"
    )


def test_default_model_falls_back_to_tiny_without_gpu_or_token():
    no_gpu = choose_model(preset_runtime("cpu"), env={})
    assert no_gpu.name == TINY and "no GPU" in no_gpu.reason
    no_token = choose_model(preset_runtime("T4"), env={}, has_token=False)
    assert no_token.name == TINY and "token" in no_token.reason
    assert choose_model(preset_runtime("T4"), env={}).name == DEFAULT_MODEL


def test_explicit_choice_wins_env_then_argument():
    env = {"LLAMA2_COLAB_MODEL": "meta-llama/Llama-2-13b-chat-hf"}
    assert choose_model(preset_runtime("cpu"), env=env).name == env["LLAMA2_COLAB_MODEL"]
    picked = choose_model(preset_runtime("cpu"), requested="tiny", env=env)
    assert picked.name == TINY


def test_load_and_stream_with_timing():
    settings = recommend_settings(preset_runtime("cpu"))
    model, tok = load_model_and_tokenizer(choose_model(preset_runtime("cpu"), env={}), settings)
    assert model.dtype == torch.float32
    pieces = []
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], return_tensors="pt", return_dict=True
    )["input_ids"]
    text, new_ids, stats = stream_generate(
        model, tok, ids, on_text=pieces.append, max_new_tokens=12, do_sample=False
    )
    assert stats.new_tokens == len(new_ids) <= 12
    assert "".join(pieces).strip() == text.strip()
    assert 0 < stats.ttft_s <= stats.total_s
    assert stats.prompt_tokens == ids.shape[1]


@pytest.mark.parametrize("seed", [0])
def test_demo_streams_a_reply_from_the_tiny_model(seed, tmp_path):
    import torch

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    # No token anywhere (a fresh HF_HOME has no saved login) and offline.
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    env.pop("LLAMA2_COLAB_MODEL", None)  # the demo's own default must pick tiny here
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama2_colab",
            "demo",
            "--max-new-tokens",
            "8",
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    # Without a GPU the tiny model stands in for lack of one; on a GPU, for lack of a token.
    why = "no Hugging Face token found" if torch.cuda.is_available() else "no GPU found"
    assert f"Model   : tiny ({why}" in run.stdout
    # The toy's reply is labelled as the toy: a learner never takes it for Llama 2.
    assert "\ntiny Llama 2 (toy): " in run.stdout and "tokens/s" in run.stdout
    assert "\nLlama 2: " not in run.stdout


def test_tiny_command_writes_a_loadable_model(tmp_path):
    from transformers import pipeline

    out = tmp_path / "tiny"
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "tiny", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout
    generator = pipeline("text-generation", model=str(out))
    result = generator("Hello", max_new_tokens=5, do_sample=False)
    assert result[0]["generated_text"].startswith("Hello")


def test_cached_tiny_model_is_reused_not_rebuilt(tmp_path):
    from llama2_colab import ensure_tiny_llama

    first = ensure_tiny_llama(tmp_path / "cache")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = ensure_tiny_llama(tmp_path / "cache")
    assert again == first
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".tiny-build-")]


def test_load_pipeline_uses_the_runtime_dtype():
    from llama2_colab import load_pipeline

    facts = preset_runtime("cpu")
    generator = load_pipeline(choose_model(facts, env={}), recommend_settings(facts))
    assert generator.model.dtype == torch.float32
    assert generator.model.config._attn_implementation == "sdpa"
    out = generator([{"role": "user", "content": "Hi"}], max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_only_the_tiny_model_on_a_cpu_is_pinned_to_one_thread():
    from llama2_colab import cpu_threads_for

    tiny = choose_model(preset_runtime("cpu"), env={})
    real = choose_model(preset_runtime("T4"), env={})
    assert cpu_threads_for(tiny, "cpu") == 1
    assert cpu_threads_for(tiny, "cuda") is None  # the GPU does the work; leave torch alone
    assert cpu_threads_for(real, "cpu") is None  # a real model's matrices do use both cores
