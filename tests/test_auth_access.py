"""Access checks and downloads through the real huggingface_hub client, against a local Hub.

A stand-in Hub (tests/hub_server.py) runs on 127.0.0.1 and answers like the Hub does; the CLI
runs as a subprocess with HF_ENDPOINT pointing at it (huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE when it is imported), in a fresh HF_HOME so no saved login on this machine counts.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import COMMIT, FakeRepo, start_hub

from llama2_colab.auth import check_access, describe_token, mask_token

GOOD = "hf_" + secrets.token_hex(16)  # valid and granted the 7B gate
OTHER = "hf_" + secrets.token_hex(16)  # valid, but never granted anything gated
BAD = "hf_" + secrets.token_hex(16)  # not a token the Hub knows
TOKENS = (GOOD, OTHER, BAD)
META_FORM = "https://ai.meta.com/resources/models-and-libraries/llama-downloads/"


@pytest.fixture(scope="module")
def hub(tiny_dir):
    """The stand-in Hub with a granted gate, a gate not granted, the tiny model and a 500."""
    hub, server, thread = start_hub({GOOD, OTHER})
    hub.repos["meta-llama/Llama-2-7b-chat-hf"] = FakeRepo(
        files={"config.json": b"{}"}, gated=True, granted={GOOD}
    )
    hub.repos["meta-llama/Llama-2-13b-chat-hf"] = FakeRepo(gated=True)
    hub.repos["test-org/tiny-llama"] = FakeRepo.from_dir(Path(tiny_dir))
    hub.repos["test-org/broken"] = FakeRepo(broken=True)
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _env(tmp_path: Path, endpoint: str, token: str | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=endpoint, NO_PROXY="127.0.0.1")
    if token:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env


def _run(args: list[str], env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    for token in TOKENS:  # whatever happened, no output shows a token
        assert token not in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run


def _access(tmp_path, hub_url, repo, token, **extra) -> subprocess.CompletedProcess:
    env = _env(tmp_path, hub_url, token, **extra)
    return _run(["-m", "llama2_colab", "access", repo], env)


def test_granted_token_has_access_and_is_shown_masked(hub, tmp_path):
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-7b-chat-hf", GOOD)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Access  : yes" in run.stdout
    assert f"Token   : hf_...{GOOD[-4:]}" in run.stdout
    assert f"Hub     : {hub.url}" in run.stdout  # HF_ENDPOINT is honoured


def test_no_token_on_a_gated_repo_says_log_in(hub, tmp_path):
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-7b-chat-hf", None)
    assert run.returncode == 3
    assert "not logged in" in run.stdout and "HF_TOKEN" in run.stdout


def test_invalid_token_is_rejected_with_its_own_message(hub, tmp_path):
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-7b-chat-hf", BAD)
    assert run.returncode == 3
    assert "rejected your token" in run.stdout
    assert "https://huggingface.co/settings/tokens" in run.stdout


def test_gate_not_granted_explains_both_forms_same_email_and_wait(hub, tmp_path):
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-13b-chat-hf", OTHER)
    assert run.returncode == 4
    out = run.stdout
    assert "not been granted" in out
    assert f"{hub.url}/meta-llama/Llama-2-13b-chat-hf" in out  # the model page, to request
    assert META_FORM in out and "same email" in out and "1-2 days" in out


def test_missing_repo_suggests_the_closest_catalog_name(hub, tmp_path):
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-7b-chat", GOOD)
    assert run.returncode == 5
    assert "no model repository" in run.stdout
    assert "Did you mean meta-llama/Llama-2-7b-chat-hf" in run.stdout


def test_hub_error_500_is_not_mistaken_for_an_access_problem(hub, tmp_path):
    run = _access(tmp_path, hub.url, "test-org/broken", GOOD)
    assert run.returncode == 7
    assert "HTTP 500" in run.stdout and "Try again" in run.stdout


def test_unreachable_hub_and_offline_mode_say_so(hub, tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    run = _access(tmp_path, dead, "meta-llama/Llama-2-7b-chat-hf", GOOD)
    assert run.returncode == 6 and "Could not reach the Hub" in run.stdout
    run = _access(tmp_path, hub.url, "meta-llama/Llama-2-7b-chat-hf", GOOD, HF_HUB_OFFLINE="1")
    assert run.returncode == 6 and "Offline mode is on" in run.stdout
    assert not [r for r in hub.log if r.path.endswith("/auth-check") and r.status == 0]


def test_access_json_has_the_masked_token_only(hub, tmp_path):
    env = _env(tmp_path, hub.url, OTHER)
    run = _run(["-m", "llama2_colab", "access", "meta-llama/Llama-2-13b-chat-hf", "--json"], env)
    data = json.loads(run.stdout)
    assert data["status"] == "gated" and data["ok"] is False
    assert data["token"] == mask_token(OTHER)


def test_plan_fetches_an_unknown_models_config_from_the_hub(hub, tmp_path):
    env = _env(tmp_path, hub.url, GOOD)
    run = _run(["-m", "llama2_colab", "plan", "test-org/tiny-llama", "--gpu", "T4", "--json"], env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["params"] == 268_352
    missing = _run(["-m", "llama2_colab", "plan", "meta-llama/Llama-2-7b-chat", "--gpu", "T4"], env)
    assert missing.returncode == 1 and "Did you mean" in missing.stderr


LOAD_SCRIPT = """
from llama2_colab.plan import make_plan
from llama2_colab.models import load_with_plan
from llama2_colab.runtime import preset_runtime
plan = make_plan("test-org/tiny-llama", preset_runtime("cpu"))
model, tokenizer = load_with_plan(plan)
print("loaded", type(model).__name__, model.num_parameters(), plan.dtype)
"""


def test_tiny_model_downloads_with_progress_survives_a_drop_and_loads(hub, tmp_path):
    weights = hub.repos["test-org/tiny-llama"].files["model.safetensors"]
    hub.drop_after["test-org/tiny-llama/model.safetensors"] = len(weights) // 2
    hub.log.clear()
    run = _run(["-c", LOAD_SCRIPT], _env(tmp_path, hub.url, GOOD), timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded LlamaForCausalLM 268352 float32" in run.stdout
    assert "model.safetensors" in run.stderr and "100%" in run.stderr  # the progress bar
    assert "Trying to resume download" in run.stderr
    gets = [r for r in hub.log if r.method == "GET" and r.path.endswith("model.safetensors")]
    assert len(gets) == 2 and all(r.authenticated for r in gets)
    snapshot = tmp_path / "hf_home" / "hub" / "models--test-org--tiny-llama" / "snapshots"
    assert (snapshot / COMMIT / "model.safetensors").read_bytes() == weights
    for path in (tmp_path / "hf_home").rglob("*"):  # the token is written nowhere
        if path.is_file():
            assert GOOD.encode() not in path.read_bytes()


RESUME_SCRIPT = """
from huggingface_hub import hf_hub_download
print(hf_hub_download("test-org/big-shard", "model-00001-of-00002.safetensors"))
"""


def test_a_dropped_download_resumes_where_it_stopped(hub, tmp_path):
    # huggingface_hub writes in 10 MiB chunks, so a shard dropped after 15 MiB has 10 MiB on
    # disk; the retry must ask for the rest only (a Range request) and keep those 10 MiB.
    shard = bytes(range(256)) * (24 * 4096)  # 24 MiB
    hub.repos["test-org/big-shard"] = FakeRepo(files={"model-00001-of-00002.safetensors": shard})
    hub.drop_after["test-org/big-shard/model-00001-of-00002.safetensors"] = 15 * 1024**2
    hub.log.clear()
    run = _run(["-c", RESUME_SCRIPT], _env(tmp_path, hub.url, GOOD), timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    gets = [r for r in hub.log if r.method == "GET" and "big-shard" in r.path]
    assert [r.status for r in gets] == [200, 206]
    assert gets[1].range == f"bytes={10 * 1024**2}-"  # the first 10 MiB were not lost
    assert Path(run.stdout.strip()).read_bytes() == shard


GATED_LOAD_SCRIPT = """
from llama2_colab.errors import UserFacingError
from llama2_colab.models import load_with_plan
from llama2_colab.plan import make_plan
from llama2_colab.runtime import preset_runtime
plan = make_plan("meta-llama/Llama-2-13b-chat-hf", preset_runtime("A100-80GB"))
try:
    load_with_plan(plan)
except UserFacingError as err:
    print("USER", err.what, "|", err.todo)
"""


def test_loading_a_gated_model_without_access_is_a_message_not_a_traceback(hub, tmp_path):
    run = _run(["-c", GATED_LOAD_SCRIPT], _env(tmp_path, hub.url, OTHER), timeout=240)
    assert "USER" in run.stdout and "not been granted" in run.stdout, run.stderr[-2000:]
    assert "same email" in run.stdout


def test_describe_token_names_the_source_and_masks_it(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD)
    text = describe_token()
    assert text == f"hf_...{GOOD[-4:]} (from $HF_TOKEN)" and GOOD not in text
    assert "Colab Secrets" in describe_token("")


def test_check_access_in_process_is_offline_under_the_test_settings():
    result = check_access("meta-llama/Llama-2-7b-chat-hf", token=GOOD)
    assert result.status == "offline" and result.exit_code != 0
    assert GOOD not in repr(result) and result.token == mask_token(GOOD)
    assert check_access("tiny").ok
