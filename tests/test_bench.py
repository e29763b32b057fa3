"""The benchmark command and the fast paths: what a user reads in the JSON, and that it is honest.

No test here asserts a speed (speed is what `bench` measures, on whatever machine runs it). They
check that the baseline and the package did the same work, that the figures are consistent, that
random weights have the real architecture, and that every fast path gives the default's output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from llama2_colab import UserFacingError, stream_generate
from llama2_colab.bench import (
    BenchWork,
    bandwidth_limit_tokens_per_s,
    make_bench_prompt,
    run_bench,
    weights_read_bytes,
)
from llama2_colab.bench_harness import bench_loaded_model, build_random_model
from llama2_colab.cli import main
from llama2_colab.generation import fast_generate_kwargs
from llama2_colab.plan import load_config

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B_PARAMS = 6_738_415_616  # meta-llama/Llama-2-7b-hf, safetensors index total_size / 2
LLAMA2_13B_PARAMS = 13_015_864_320


@pytest.fixture(scope="module")
def bench_json():
    """One small `bench --model tiny --json` run through the real CLI, parsed."""
    import contextlib
    import io

    out = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "bench",
                "--model",
                "tiny",
                "--json",
                "--repeats",
                "2",
                "--new-tokens",
                "8",
                "--warmup",
                "0",
            ]
            + ["--prompt-tokens", "128"]
        )
    assert code == 0
    assert torch.get_num_threads() == threads  # the bench leaves the process as it found it
    return json.loads(out.getvalue())


def test_bench_json_has_the_documented_keys(bench_json):
    for key in (
        "model",
        "device",
        "dtype",
        "tokens_per_s",
        "baseline_tokens_per_s",
        "ratio",
        "ttft_s",
        "peak_memory_bytes",
        "bandwidth_limit_tokens_per_s",
    ):
        assert key in bench_json, key
    assert bench_json["model"] == "tiny"
    assert bench_json["device"] == "cpu"
    assert bench_json["dtype"] == "float32"
    assert bench_json["threads"] == 1  # the tiny model gains nothing from a second core
    assert bench_json["tokens_per_s"] > 0 and bench_json["baseline_tokens_per_s"] > 0
    assert bench_json["ttft_s"] > 0
    assert bench_json["peak_memory_bytes"] > 0
    lo, hi = bench_json["tokens_per_s_iqr"]
    assert lo <= bench_json["tokens_per_s"] <= hi


def _documented_keys() -> set[str]:
    """The keys docs/benchmarks.md lists after "JSON keys:"; `x(_iqr)` stands for x and x_iqr."""
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    listed = re.search(r"JSON keys: `([^`]+)`", docs).group(1)
    keys = set()
    for item in re.split(r"[,\s]+", listed):
        if item.endswith("(_iqr)"):
            keys |= {item[: -len("(_iqr)")], item[: -len("(_iqr)")] + "_iqr"}
        elif item:
            keys.add(item)
    return keys


def _keys_gpu_check_reads() -> tuple[set[str], set[str]]:
    """The keys scripts/gpu_check.sh's summary reads: of a result (r) and of a fast path (fp)."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text(encoding="utf-8")
    top = set(re.findall(r"\br(?:\['|\.get\(['\"])(\w+)", script)) | set(
        re.findall(r'"(\w+)" in r\b', script)
    )
    fast = set(re.findall(r"\bfp\['(\w+)'\]", script))
    return top, fast


def test_bench_json_keeps_the_keys_the_docs_and_gpu_check_read(bench_json):
    documented = _documented_keys()
    top, fast = _keys_gpu_check_reads()
    assert {"tokens_per_s_iqr", "baseline_ttft_s_iqr", "fraction_of_bandwidth_limit"} <= documented
    assert {"tokens_per_s", "ratio", "peak_memory_bytes", "fast_paths"} <= top
    assert {"ratio_to_default", "same_output_as_default", "error"} <= fast
    assert sorted(documented - set(bench_json)) == []
    assert sorted(top - {"error"} - set(bench_json)) == []  # "error": a step that failed


def test_fast_path_figures_keep_the_keys_gpu_check_reads(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    work = BenchWork(prompt_tokens=32, new_tokens=4, repeats=1, warmup=0)
    result = bench_loaded_model(model, tok, work, fast=("lookup",))
    _, fast = _keys_gpu_check_reads()
    assert sorted(fast - {"error"} - set(result["fast_paths"]["lookup"])) == []
    assert result["generated_tokens"] == {"package": 4, "baseline": 4, "lookup": 4}


def test_run_bench_the_notebook_calls_times_the_two_paths_on_the_same_work(
    tiny_model_and_tokenizer,
):
    model, tok = tiny_model_and_tokenizer
    result = run_bench(model, tok, prompt_tokens=32, new_tokens=4, repeats=2, warmup=0)
    assert result["prompt_tokens"] == 32 and result["new_tokens"] == 4
    assert result["generated_tokens"] == {"package": 4, "baseline": 4}
    assert result["same_output_as_baseline"] is True
    assert result["ratio"] == pytest.approx(
        result["tokens_per_s"] / result["baseline_tokens_per_s"]
    )
    assert "fast_paths" not in result  # fast paths and peak memory are the harness's


def test_a_static_path_past_the_plans_cache_is_reported_not_run(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    work = BenchWork(prompt_tokens=32, new_tokens=4, repeats=1, warmup=0)
    result = bench_loaded_model(model, tok, work, fast=("static",), max_cache_len=16)
    assert result["fast_paths"]["static"]["error"].startswith("prompt + new tokens (36) exceed")
    assert result["generated_tokens"] == {"package": 4, "baseline": 4}


def test_bench_compares_the_same_work(bench_json):
    assert bench_json["prompt_tokens"] == 128
    assert bench_json["generated_tokens"] == {"package": 8, "baseline": 8}
    # Greedy, same model, same ids: the package and the pipeline agree token for token.
    assert bench_json["same_output_as_baseline"] is True


def test_bench_ratio_is_package_over_baseline(bench_json):
    expected = bench_json["tokens_per_s"] / bench_json["baseline_tokens_per_s"]
    assert bench_json["ratio"] == pytest.approx(expected)


def test_bench_prompt_tokenizes_to_exactly_the_asked_length(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    for n in (64, 512):
        text, ids = make_bench_prompt(tokenizer, n)
        assert len(ids) == n
        assert tokenizer(text)["input_ids"] == ids  # what the pipeline will feed the model
        assert ids[0] == tokenizer.bos_token_id


def test_fast_paths_give_the_default_greedy_output(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    work = BenchWork(prompt_tokens=64, new_tokens=12, repeats=1, warmup=0)
    result = bench_loaded_model(model, tokenizer, work, fast=("lookup", "eager"))
    for name in ("lookup", "eager"):
        path = result["fast_paths"][name]
        assert "error" not in path, path
        assert path["generated_tokens"] == 12
        assert path["same_output_as_default"] is True
    assert model.config._attn_implementation == "sdpa"  # eager was switched back


def test_static_cache_gives_the_default_greedy_output(tiny_model_and_tokenizer):
    # The compile itself takes a minute on a CPU, so the bench command covers it; here the static
    # cache, sized as the plan would size it, must produce the same tokens.
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("The tomatoes and the basil").input_ids])
    greedy = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
    _, default_ids, _ = stream_generate(model, tokenizer, ids, **greedy)
    fast = fast_generate_kwargs(static_cache=True, max_cache_len=64, device_type="cpu")
    assert fast["cache_implementation"] == "static"
    _, static_ids, _ = stream_generate(
        model, tokenizer, ids, **greedy, **fast, disable_compile=True
    )
    assert static_ids == default_ids


def test_static_cache_too_small_for_the_request_says_so(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("The tomatoes and the basil").input_ids])
    fast = fast_generate_kwargs(static_cache=True, max_cache_len=8, device_type="cpu")
    with pytest.raises(UserFacingError, match="does not fit the static cache"):
        stream_generate(model, tokenizer, ids, max_new_tokens=10, **fast)


def test_static_cache_and_prompt_lookup_are_exclusive():
    with pytest.raises(ValueError, match="Choose one"):
        fast_generate_kwargs(static_cache=True, prompt_lookup_tokens=10)


def test_stream_generate_text_is_the_same_with_or_without_a_listener(tiny_model_and_tokenizer):
    # Without a listener the streamer only timestamps tokens; the reply text must not change.
    model, tokenizer = tiny_model_and_tokenizer
    ids = torch.tensor([tokenizer("I have tomatoes at home").input_ids])
    greedy = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    pieces: list[str] = []
    text_heard, ids_heard, stats_heard = stream_generate(
        model, tokenizer, ids, on_text=pieces.append, **greedy
    )
    text_quiet, ids_quiet, stats_quiet = stream_generate(model, tokenizer, ids, **greedy)
    assert ids_quiet == ids_heard
    assert text_quiet == text_heard == tokenizer.decode(ids_heard, skip_special_tokens=True)
    assert "".join(pieces) == text_heard
    assert stats_quiet.new_tokens == stats_heard.new_tokens == 16


@pytest.mark.parametrize(
    "name, params, layers, hidden",
    [
        ("meta-llama/Llama-2-7b-chat-hf", LLAMA2_7B_PARAMS, 32, 4096),
        ("meta-llama/Llama-2-13b-chat-hf", LLAMA2_13B_PARAMS, 40, 5120),
    ],
)
def test_random_weights_have_the_real_architecture(name, params, layers, hidden):
    model = build_random_model(name, device="meta", dtype="float16")  # shapes, no memory
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.model.layers) == layers
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (hidden, hidden)
    assert model.lm_head.weight.shape == (32000, hidden)
    assert model.dtype == torch.float16


def _scaled_down_13b():
    config, _ = load_config("meta-llama/Llama-2-13b-chat-hf")
    config.hidden_size, config.intermediate_size = 128, 384  # bitsandbytes' CPU packing: tiny.py
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 2, 4, 4
    return config


def test_random_weights_generate_on_the_device_in_16_bit_4_bit_and_int8(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    config = _scaled_down_13b()
    ids = torch.tensor([tokenizer("Hello there").input_ids])
    full = build_random_model("13b", device="cpu", dtype="float32", config=config)
    nf4 = build_random_model(
        "13b", device="cpu", dtype="float32", quantization="nf4", config=config
    )
    assert type(nf4.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert nf4.model.norm.weight.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in nf4.parameters())  # nothing left on meta
    # Each decoder weight shrinks from 4 bytes to about half a byte plus its block scales
    # (embeddings and lm_head stay unquantized, as bitsandbytes leaves them).
    layer_bytes = sum(
        m.weight.numel() * 4 for m in full.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )
    saved = weights_read_bytes(full) - weights_read_bytes(nf4)
    assert 0.8 * layer_bytes < saved < layer_bytes
    int8 = build_random_model(
        "13b", device="cpu", dtype="float32", quantization="int8", config=config
    )
    assert type(int8.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    assert int8.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    # LLM.int8: one byte per decoder weight plus a float32 scale per output row.
    rows = sum(
        m.weight.shape[0] for m in full.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )
    assert weights_read_bytes(full) - weights_read_bytes(int8) == 3 * layer_bytes // 4 - 4 * rows
    for model in (full, nf4, int8):
        _, new_ids, _ = stream_generate(
            model, tokenizer, ids, max_new_tokens=4, min_new_tokens=4, do_sample=False
        )
        assert len(new_ids) == 4


def test_weights_read_per_token_skip_the_input_embedding(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    everything += sum(b.numel() * b.element_size() for b in model.buffers())
    embedding = model.get_input_embeddings().weight
    assert weights_read_bytes(model) == everything - embedding.numel() * embedding.element_size()


def test_t4_bandwidth_limit_for_fp16_7b_is_about_24_tokens_per_s():
    # 320 GB/s over the fp16 7B weights read per token (all but the input embedding).
    weights = LLAMA2_7B_PARAMS * 2 - 32000 * 4096 * 2
    assert bandwidth_limit_tokens_per_s(320e9, weights, 524_288, 0) == pytest.approx(24.2, abs=0.05)
    # 2k tokens of fp16 KV cache add about 1.07 GB per token read: the limit drops to ~22.4.
    assert bandwidth_limit_tokens_per_s(320e9, weights, 524_288, 2048) == pytest.approx(
        22.4, abs=0.05
    )


def test_bench_of_a_model_that_does_not_fit_explains_instead_of_crashing(capsys):
    # 70B in float32 on a CPU: 275 GB of weights. The plan refuses before allocating anything.
    code = main(["bench", "--model", "meta-llama/Llama-2-70b-chat-hf", "--random-weights"])
    err = capsys.readouterr().err
    assert code != 0
    assert "does not fit" in err and "Traceback" not in err


def test_bench_rejects_an_unknown_fast_path(capsys):
    code = main(["bench", "--model", "tiny", "--fast", "turbo", "--repeats", "1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "Unknown fast path" in err and "static" in err
