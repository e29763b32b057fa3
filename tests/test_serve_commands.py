"""What `serve` decides before it starts anything: the engine, and its command from a plan.

Pure decisions, so a T4, an A100 or 4 x H100 is checked on this CPU machine. vLLM cannot run
here; its command is what these tests check (scripts/gpu_check.sh --serve runs it on a GPU).
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys

import pytest

from llama2_colab import UserFacingError, make_plan, preset_runtime
from llama2_colab.engine_commands import (
    choose_engine,
    client_snippet,
    gpu_memory_utilization,
    served_name,
    transformers_serve_command,
    vllm_command,
)
from llama2_colab.plan import make_tp_plan
from llama2_colab.serve import check_port_free

T4 = preset_runtime("T4")
CPU = preset_runtime("cpu")
CHAT_7B = "meta-llama/Llama-2-7b-chat-hf"
CHAT_13B = "meta-llama/Llama-2-13b-chat-hf"
CHAT_70B = "meta-llama/Llama-2-70b-chat-hf"


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_vllm_when_installed_on_a_gpu_it_supports_else_transformers_serve():
    assert choose_engine(T4, vllm_installed=True) == "vllm"
    assert choose_engine(T4, vllm_installed=False) == "transformers"
    assert choose_engine(CPU, vllm_installed=True) == "transformers"
    assert choose_engine(T4, vllm_installed=True, requested="transformers") == "transformers"
    with pytest.raises(UserFacingError, match="compute capability 7.0"):
        choose_engine(CPU, vllm_installed=True, requested="vllm")


def test_transformers_serve_gets_the_plans_dtype_device_and_4bit():
    t4_7b = transformers_serve_command(make_plan(CHAT_7B, T4), CHAT_7B, "127.0.0.1", 8000)
    assert _flag(t4_7b, "--dtype") == "float16" and _flag(t4_7b, "--device") == "auto"
    assert "--quantization" not in t4_7b and _flag(t4_7b, "--attn-implementation") == "sdpa"
    assert t4_7b[t4_7b.index("serve") + 1] == CHAT_7B
    t4_13b = transformers_serve_command(make_plan(CHAT_13B, T4), CHAT_13B, "127.0.0.1", 8000)
    assert _flag(t4_13b, "--quantization") == "bnb-4bit" and _flag(t4_13b, "--dtype") == "float16"
    cpu = transformers_serve_command(make_plan("tiny", CPU), "tiny", "0.0.0.0", 9000, True)
    assert _flag(cpu, "--dtype") == "float32" and _flag(cpu, "--device") == "cpu"
    assert _flag(cpu, "--host") == "0.0.0.0" and _flag(cpu, "--port") == "9000"
    assert "--continuous-batching" in cpu
    # The paged KV cache: the plan's room (never all free memory), in 256-token blocks.
    assert _flag(cpu, "--cb-block-size") == "256" and _flag(cpu, "--cb-max-batch-tokens") == "2048"
    assert int(_flag(cpu, "--cb-num-blocks")) == 16 * 4096 // 256
    t4 = make_plan(CHAT_7B, T4)
    on_t4 = transformers_serve_command(t4, CHAT_7B, "127.0.0.1", 8000, continuous_batching=True)
    room = (t4.usable_memory_bytes - t4.weights_bytes) // t4.kv_bytes_per_token
    assert int(_flag(on_t4, "--cb-num-blocks")) == room // 256  # 7B on a T4: ~2,451 tokens


def test_vllm_flags_come_from_the_plan_on_a_t4():
    plan = make_plan(CHAT_7B, T4)
    command = vllm_command(plan, "/srv/llama", CHAT_7B, chat_template="/srv/llama/t.jinja")
    assert command[:3] == ["vllm", "serve", "/srv/llama"]
    assert _flag(command, "--served-model-name") == CHAT_7B
    assert _flag(command, "--dtype") == "float16"  # a T4: never bfloat16
    assert _flag(command, "--max-model-len") == str(plan.context_window)
    assert 1024 <= plan.context_window < 4096
    assert _flag(command, "--tensor-parallel-size") == "1"
    usable_share = plan.usable_memory_bytes / T4.gpu.total_memory_bytes
    assert float(_flag(command, "--gpu-memory-utilization")) == int(usable_share * 100) / 100
    assert _flag(command, "--chat-template") == "/srv/llama/t.jinja"
    nf4 = vllm_command(make_plan(CHAT_13B, T4), "/srv/13b", CHAT_13B)
    assert _flag(nf4, "--quantization") == "bitsandbytes"
    assert _flag(nf4, "--max-model-len") == "4096"


def test_vllm_splits_70b_over_four_h100s_in_bfloat16():
    plan = make_tp_plan(CHAT_70B, preset_runtime("H100"), 4)
    command = vllm_command(plan, "/srv/70b", CHAT_70B)
    assert _flag(command, "--tensor-parallel-size") == "4"
    assert _flag(command, "--dtype") == "bfloat16" and _flag(command, "--max-model-len") == "4096"
    assert 0.9 <= gpu_memory_utilization(plan) <= 0.95


def test_vllm_refuses_a_plan_that_does_not_fit():
    with pytest.raises(UserFacingError, match="does not fit") as refused:
        vllm_command(make_plan(CHAT_70B, T4), "/srv/70b", CHAT_70B)
    assert "A100" in refused.value.todo
    with pytest.raises(UserFacingError, match="NOT a valid split"):
        vllm_command(make_tp_plan(CHAT_70B, preset_runtime("A100-80GB"), 3), "/x", CHAT_70B)


def test_the_name_clients_send():
    assert served_name("tiny") == "tiny" and served_name(" TINY ") == "tiny"
    assert served_name(CHAT_7B) == CHAT_7B
    assert served_name("./my models/llama@v2") == "llama-v2"
    token = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # a folder named by a token: masked
    assert served_name(f"/content/{token}") == "hf_...4567"
    assert served_name(f"me/{token}") == "me/hf_...4567"


def test_the_client_snippet_is_python_that_names_url_and_model():
    code = client_snippet("http://127.0.0.1:8000/v1", "tiny")
    ast.parse(code)
    assert 'base_url="http://127.0.0.1:8000/v1"' in code and 'model="tiny"' in code


def test_a_port_in_use_and_an_unknown_host_are_messages():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserFacingError, match=f"Cannot serve on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)
    with pytest.raises(UserFacingError, match="not an address of this machine"):
        check_port_free("no-such-host.invalid", 8000)


def test_another_machines_address_is_not_called_a_port_in_use():
    # 192.0.2.1 is an address (TEST-NET-1) that is never this machine's: EADDRNOTAVAIL.
    with pytest.raises(UserFacingError) as refused:
        check_port_free("192.0.2.1", 8000)
    assert "'192.0.2.1' is not an address of this machine" in refused.value.what
    assert "holds that port" not in str(refused.value) and "--host 127.0.0.1" in refused.value.todo


def test_a_killed_servers_folder_is_swept_by_the_next_one(tmp_path):
    from llama2_colab.serve import _sweep_stale

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead, alive = tmp_path / "serve-dead", tmp_path / "serve-alive"
    for folder, pid in ((dead, finished.stdout.strip()), (alive, str(os.getpid()))):
        folder.mkdir()
        (folder / "pid").write_text(pid)
        (folder / "tiny").mkdir()
    _sweep_stale(tmp_path)
    assert not dead.exists() and alive.exists()
