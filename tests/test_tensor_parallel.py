"""Tensor parallelism: the plan for N GPUs, and the model really split over 2 CPU processes.

`torchrun --nproc-per-node 2 -m llama2_colab demo --greedy` runs the tiny Llama 2 split in two
(gloo on this CPU) and must print the reply one process prints, token for token. transformers
5.15 and 5.24 both load it (see llama2_colab.tensor_parallel for why not `tp_plan="auto"`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from cli_runner import run_cli

from llama2_colab import UserFacingError, preset_runtime
from llama2_colab.plan import (
    count_parameters,
    kv_bytes_per_token,
    load_config,
    make_tp_plan,
    shard_weight_bytes,
    valid_tp_sizes,
)
from llama2_colab.tensor_parallel import load_tensor_parallel, shared_seed

CHAT_70B = "meta-llama/Llama-2-70b-chat-hf"
A100_80 = preset_runtime("A100-80GB")
T4 = preset_runtime("T4")


def test_70b_over_two_a100s_holds_half_of_each_layer_per_gpu():
    plan = make_tp_plan(CHAT_70B, A100_80, 2)
    config, _ = load_config(CHAT_70B)
    counts = count_parameters(config)
    assert plan.fits and plan.valid and plan.dtype == "bfloat16" and plan.quantization is None
    whole_head = config.vocab_size * config.hidden_size  # lm_head is split, embeddings are not
    layers = counts.total - counts.kept
    assert plan.weights_bytes_per_gpu == 2 * (
        layers // 2 + whole_head // 2 + counts.kept - whole_head
    )
    assert plan.kv_bytes_per_token_per_gpu == kv_bytes_per_token(config, "bfloat16") // 2
    assert plan.context_window == 4096


def test_a_split_must_divide_the_attention_and_kv_heads():
    config70, _ = load_config(CHAT_70B)
    assert valid_tp_sizes(config70) == (1, 2, 4, 8)  # 64 heads, 8 KV heads
    config7, _ = load_config("meta-llama/Llama-2-7b-chat-hf")
    assert valid_tp_sizes(config7) == (1, 2, 4, 8, 16, 32)
    plan = make_tp_plan(CHAT_70B, A100_80, 3)
    assert not plan.valid and not plan.fits and "NOT a valid split" in plan.reason
    assert plan.advice == "Use --gpus 2, 4 or 8."


def test_70b_over_t4s_needs_four_in_4bit_and_says_so_for_two():
    two = make_tp_plan(CHAT_70B, T4, 2)
    assert not two.fits and "--gpus 4" in two.advice
    four = make_tp_plan(CHAT_70B, T4, 4)
    assert four.fits and four.quantization == "nf4" and four.dtype == "float16"
    assert "vLLM" in four.advice and "16-bit weights only" in four.advice
    config, _ = load_config(CHAT_70B)
    counts = count_parameters(config)
    assert four.weights_bytes_per_gpu == shard_weight_bytes(counts, config, "float16", "nf4", 4)


def test_plan_gpus_json_has_the_tensor_parallel_figures():
    from llama2_colab.cli import main

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama2_colab",
            "plan",
            CHAT_70B,
            "--gpu",
            "H100",
            "--gpus",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["gpus"] == 4 and data["tensor_parallel"]["valid"] is True
    assert data["tensor_parallel"]["valid_sizes"] == [1, 2, 4, 8]
    assert data["weights_bytes_per_gpu"] < data["weights_bytes"] / 3
    assert data["kv_bytes_per_token_per_gpu"] == 80 * 2 * 8 * 128 * 2 // 4
    assert main(["plan", CHAT_70B, "--gpu", "T4", "--gpus", "2"]) == 2  # does not fit: exit 2


def test_loading_refuses_a_plan_this_launch_cannot_run(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserFacingError, match="torchrun --nproc-per-node 2"):
        load_tensor_parallel(make_tp_plan("tiny", preset_runtime("cpu"), 2))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # as torchrun sets them
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(UserFacingError, match="16-bit weights only"):
        load_tensor_parallel(make_tp_plan(CHAT_70B, T4, 4))
    assert shared_seed(1234) == 1234  # one process: the seed as given


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR and MASTER_PORT are"),
        ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 and LOCAL_RANK=0 in a world of WORLD_SIZE=1"),
        ({"RANK": "-1"}, "a rank runs from 0 to WORLD_SIZE - 1"),
    ],
    ids=["a world without torchrun", "a stale rank", "a negative rank"],
)
def test_torchruns_variables_without_torchrun_are_refused_before_loading(
    monkeypatch, capsys, env, message
):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, "demo", "hi", "--model", "tiny", "--greedy")
    assert code == 1 and message in err and "Unset RANK, LOCAL_RANK and WORLD_SIZE" in err, err
    assert "Traceback" not in err and "Model   :" not in out  # refused before anything loaded


def _demo(launcher: list[str]) -> str:
    run = subprocess.run(
        [
            *launcher,
            "-m",
            "llama2_colab",
            "demo",
            "What is a T4?",
            "--model",
            "tiny",
            "--greedy",
            "--max-new-tokens",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    return run.stdout


def test_two_processes_give_the_single_process_reply_token_for_token():
    single = _demo([sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    split = _demo(torchrun)
    reply = re.compile(r"^tiny Llama 2 \(toy\): (.*)$", re.MULTILINE)
    assert len(reply.findall(split)) == 1  # rank 0 alone prints
    assert reply.findall(split) == reply.findall(single) and reply.findall(single)[0].strip()
    found = re.search(r"each process holds ([\d,]+) of the ([\d,]+) parameters", split)
    held, total = (int(n.replace(",", "")) for n in found.groups())
    assert held < total  # each process holds a slice, not the whole model
    assert "split over 2 processes (tensor parallelism)" in split
