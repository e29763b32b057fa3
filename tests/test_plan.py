"""The loading plan: exact sizes of the real models, and what it picks for a T4 and others."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llama2_colab import UserFacingError, preset_runtime
from llama2_colab.catalog import find_entry, load_catalog, suggest_names
from llama2_colab.plan import (
    GPU_RESERVE_BYTES,
    count_parameters,
    kv_bytes_per_token,
    load_config,
    make_plan,
    weight_bytes,
)

T4 = preset_runtime("T4")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("meta-llama/Llama-2-7b-chat-hf", 6_738_415_616),
        ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
        ("meta-llama/Llama-2-70b-chat-hf", 68_976_648_192),
        ("codellama/CodeLlama-7b-hf", 6_738_546_688),  # 16 infilling tokens more than Llama 2
    ],
)
def test_parameter_counts_are_those_of_the_real_models(name, params):
    config, _ = load_config(name)
    assert count_parameters(config).total == params


def test_catalog_has_every_llama2_and_code_llama_variant():
    ids = {entry.id for entry in load_catalog()}
    for size in ("7b", "13b", "70b"):
        assert f"meta-llama/Llama-2-{size}-hf" in ids
        assert f"meta-llama/Llama-2-{size}-chat-hf" in ids
    for size in ("7b", "13b", "34b"):
        for suffix in ("", "-Python", "-Instruct"):
            assert f"codellama/CodeLlama-{size}{suffix}-hf" in ids
    assert find_entry("codellama/CodeLlama-7b-hf").config["max_position_embeddings"] == 16384


def test_7b_chat_on_a_t4_loads_in_float16_with_room_for_context():
    plan = make_plan("meta-llama/Llama-2-7b-chat-hf", T4)
    assert plan.fits and plan.dtype == "float16" and plan.quantization is None
    assert plan.weights_bytes == 6_738_415_616 * 2
    assert plan.kv_bytes_per_token == 32 * 2 * 4096 * 2  # layers x (K,V) x hidden x fp16
    usable = T4.gpu.total_memory_bytes - GPU_RESERVE_BYTES
    assert plan.context_window == (usable - plan.weights_bytes) // plan.kv_bytes_per_token
    assert 1024 <= plan.context_window < 4096


def test_13b_on_a_t4_is_4bit_nf4_with_float16_compute():
    plan = make_plan("meta-llama/Llama-2-13b-chat-hf", T4)
    assert plan.fits and plan.quantization == "nf4" and plan.dtype == "float16"
    assert plan.context_window == 4096
    assert "4-bit NF4" in plan.reason


def test_13b_on_an_a100_needs_no_quantization_and_uses_bfloat16():
    plan = make_plan("meta-llama/Llama-2-13b-chat-hf", preset_runtime("A100-40GB"))
    assert plan.fits and plan.quantization is None and plan.dtype == "bfloat16"


def test_70b_on_a_t4_does_not_fit_and_says_what_would():
    plan = make_plan("meta-llama/Llama-2-70b-chat-hf", T4)
    assert not plan.fits and plan.context_window == 0
    assert "Does not fit" in plan.reason
    assert "A100-40GB" in plan.advice and "x Tesla T4" in plan.advice


def test_gqa_shrinks_the_70b_kv_cache_eightfold():
    config70, _ = load_config("meta-llama/Llama-2-70b-chat-hf")
    per_token = kv_bytes_per_token(config70, "float16")
    assert per_token == 80 * 2 * 8 * 128 * 2  # 8 KV heads instead of 64
    assert per_token * 8 == 80 * 2 * 64 * 128 * 2


def test_nf4_counts_what_stays_unquantized():
    config, _ = load_config("meta-llama/Llama-2-7b-hf")
    counts = count_parameters(config)
    embeddings_head_norms = 2 * 32000 * 4096 + (2 * 32 + 1) * 4096
    assert counts.kept == embeddings_head_norms
    nf4 = weight_bytes(counts, "float16", "nf4")
    no_dq = weight_bytes(counts, "float16", "nf4-no-dq")
    assert nf4 < no_dq  # double quantization saves the float32 block scales
    assert no_dq - counts.kept * 2 == counts.quantizable // 2 + 4 * (counts.quantizable // 64)
    assert 0.5 < nf4 / counts.total < 0.6


def test_cpu_plans_in_float32_and_refuses_7b_in_24_gib():
    cpu = preset_runtime("cpu")
    tiny = make_plan("tiny", cpu)
    assert tiny.fits and tiny.dtype == "float32" and tiny.device == "cpu"
    big = make_plan("meta-llama/Llama-2-7b-chat-hf", cpu)
    assert not big.fits and "T4" in big.advice


def test_short_names_and_mirrors_find_the_catalog_config():
    assert make_plan("llama-2-13b-chat-hf", T4).params == 13_015_864_320
    assert make_plan("NousResearch/Llama-2-7b-chat-hf", T4).model == (
        "NousResearch/Llama-2-7b-chat-hf"
    )


def test_unknown_model_names_the_closest_catalog_entry():
    assert suggest_names("meta-llama/Llama-2-7b-chta-hf")[0] == "meta-llama/Llama-2-7b-chat-hf"
    with pytest.raises(UserFacingError, match="Llama-2-13b-chat-hf"):
        make_plan("meta-llama/Llama-2-13b-chat", T4)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `python -m llama2_colab ARGS` in this process; return (status, stdout, stderr)."""
    from llama2_colab.cli import main

    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_plan_command_json_for_13b_on_a_t4(capsys):
    status, out, _ = _cli(capsys, "plan", "meta-llama/Llama-2-13b-chat-hf", "--gpu", "T4", "--json")
    assert status == 0
    data = json.loads(out)
    for key in (
        "model", "params", "dtype", "quantization", "weights_bytes",
        "kv_bytes_per_token", "context_window", "fits", "reason",
    ):  # fmt: skip
        assert key in data
    assert data["quantization"] == "nf4" and data["dtype"] == "float16" and data["fits"] is True


def test_plan_command_exits_2_when_it_does_not_fit_and_1_on_a_bad_gpu(capsys):
    status, out, _ = _cli(capsys, "plan", "meta-llama/Llama-2-70b-chat-hf", "--gpu", "T4")
    assert status == 2
    assert "Fits       : NO" in out and "A100-40GB" in out
    status, _, err = _cli(capsys, "plan", "meta-llama/Llama-2-7b-chat-hf", "--gpu", "T5")
    assert status == 1 and "Unknown GPU" in err and "T4, V100, L4" in err


def test_plan_command_runs_as_a_module_without_a_traceback():
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "plan", "Llama-2-7b-chat-hf", "--gpu", "T4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "Plan       : float16" in run.stdout
    assert "Traceback" not in run.stderr


def test_nf4_bytes_match_what_bitsandbytes_allocates(tiny_dir):
    from llama2_colab.models import load_with_plan

    plan = make_plan("tiny", preset_runtime("cpu"), quantization="nf4")
    model, _ = load_with_plan(plan)  # bitsandbytes NF4 works on the CPU for the tiny model
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    scales = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            assert state.quant_type == "nf4" and state.nested  # double quantization
            scales += state.absmax.nbytes + state.state2.absmax.nbytes
    assert scales > 0
    assert stored + scales == plan.weights_bytes


def test_quantization_config_computes_in_float16_on_a_t4_and_bfloat16_on_an_a100():
    import torch

    from llama2_colab.models import make_quantization_config

    t4 = make_quantization_config(make_plan("meta-llama/Llama-2-13b-chat-hf", T4))
    assert t4.load_in_4bit and t4.bnb_4bit_quant_type == "nf4"
    assert t4.bnb_4bit_compute_dtype == torch.float16
    l4 = make_plan("meta-llama/Llama-2-13b-chat-hf", preset_runtime("L4"))
    assert l4.quantization == "nf4"
    assert make_quantization_config(l4).bnb_4bit_compute_dtype == torch.bfloat16
    assert make_quantization_config(make_plan("meta-llama/Llama-2-7b-chat-hf", T4)) is None


def test_a_plan_that_does_not_fit_is_refused_before_any_download():
    from llama2_colab.models import load_with_plan

    plan = make_plan("meta-llama/Llama-2-70b-chat-hf", T4)
    with pytest.raises(UserFacingError) as err:
        load_with_plan(plan)
    assert "does not fit" in err.value.what and "A100-40GB" in err.value.todo


def test_cuda_out_of_memory_becomes_the_plans_advice():
    import torch

    from llama2_colab.models import oom_as_advice

    plan = make_plan("meta-llama/Llama-2-7b-chat-hf", T4)
    with pytest.raises(UserFacingError) as err:
        with oom_as_advice(plan):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    assert "ran out of memory" in err.value.what and "2,451 tokens" in err.value.what
    assert "Restart the runtime" in err.value.todo and "4-bit NF4" in err.value.todo


def test_drive_cache_dir_only_when_drive_is_mounted(tmp_path):
    from llama2_colab.colab import drive_cache_dir

    assert drive_cache_dir(str(tmp_path / "drive")) is None  # not mounted: default cache
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    path = drive_cache_dir(str(tmp_path / "drive"))
    assert path == tmp_path / "drive" / "MyDrive" / "llama2-colab" / "hf-cache" and path.is_dir()


def test_too_little_system_ram_for_loading_is_caught_before_the_crash():
    from dataclasses import replace

    starved = replace(T4, ram_available_bytes=2 * 1024**3)  # a T4 box with 2 GiB of RAM left
    plan = make_plan("meta-llama/Llama-2-7b-chat-hf", starved)
    assert not plan.fits and plan.ram_needed_bytes > plan.ram_available_bytes
    assert "System RAM" in plan.reason and "safetensors" in plan.advice
    assert make_plan("meta-llama/Llama-2-7b-chat-hf", T4).ram_needed_bytes < T4.ram_available_bytes
