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
    env.pop("TRANSFORMERS_OFFLINE", None)  # huggingface_hub reads it as HF_HUB_OFFLINE
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


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """This process as a fresh one would be with HF_ENDPOINT at the stand-in Hub and no login.

    huggingface_hub reads HF_HOME's cache, HF_HUB_OFFLINE and the token file's path when it is
    imported, so those are set on its constants; HF_ENDPOINT (which this package passes on
    explicitly) and HF_TOKEN are read when used. transformers' own downloads build URLs from
    import-time constants, so the tests that load through transformers run in a fresh process.
    """
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def use_token(token: str | None) -> None:
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        else:
            monkeypatch.delenv("HF_TOKEN", raising=False)

    return use_token


def _cli(capfd, *args: str) -> tuple[int, str, str]:
    """Run `python -m llama2_colab ARGS` in this process; return (status, stdout, stderr)."""
    from llama2_colab.cli import main

    status = main(list(args))
    out, err = capfd.readouterr()
    for token in TOKENS:
        assert token not in out + err
    return status, out, err


def _access(capfd, repo: str) -> tuple[int, str]:
    status, out, _ = _cli(capfd, "access", repo)
    return status, out


def test_granted_token_has_access_through_the_real_command(hub, tmp_path):
    # A fresh process, as a user runs it: HF_ENDPOINT and HF_TOKEN come from the environment.
    run = _run(
        ["-m", "llama2_colab", "access", "meta-llama/Llama-2-7b-chat-hf"],
        _env(tmp_path, hub.url, GOOD),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Access  : yes" in run.stdout
    assert f"Token   : hf_...{GOOD[-4:]}" in run.stdout
    assert f"Hub     : {hub.url}" in run.stdout  # HF_ENDPOINT is honoured


def test_no_token_on_a_gated_repo_says_log_in(online, capfd):
    online(None)
    status, out = _access(capfd, "meta-llama/Llama-2-7b-chat-hf")
    assert status == 3
    assert "not logged in" in out and "HF_TOKEN" in out


def test_invalid_token_is_rejected_with_its_own_message(online, capfd):
    online(BAD)
    status, out = _access(capfd, "meta-llama/Llama-2-7b-chat-hf")
    assert status == 3
    assert "rejected your token" in out and "https://huggingface.co/settings/tokens" in out


def test_gate_not_granted_explains_both_forms_same_email_and_wait(online, capfd, hub):
    online(OTHER)
    status, out = _access(capfd, "meta-llama/Llama-2-13b-chat-hf")
    assert status == 4
    assert "not been granted" in out
    assert f"{hub.url}/meta-llama/Llama-2-13b-chat-hf" in out  # the model page, to request
    assert META_FORM in out and "same email" in out and "1-2 days" in out


def test_missing_repo_suggests_the_closest_catalog_name(online, capfd):
    online(GOOD)
    status, out = _access(capfd, "meta-llama/Llama-2-7b-chat")
    assert status == 5
    assert "no model repository" in out
    assert "Did you mean meta-llama/Llama-2-7b-chat-hf" in out


def test_a_bare_catalog_name_is_checked_under_its_owner(online, capfd):
    online(GOOD)
    status, out = _access(capfd, "llama-2-7b-chat-hf")
    assert status == 0 and "Model   : meta-llama/Llama-2-7b-chat-hf" in out
    status, out = _access(capfd, "Llama-2-7b-chta")
    assert status == 5 and "meta-llama/Llama-2-7b-chat-hf" in out


def test_hub_error_500_is_not_mistaken_for_an_access_problem(online, capfd):
    online(GOOD)
    status, out = _access(capfd, "test-org/broken")
    assert status == 7
    assert "HTTP 500" in out and "Try again" in out


def test_unreachable_hub_and_offline_mode_say_so(online, capfd, monkeypatch):
    online(GOOD)
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    status, out = _access(capfd, "meta-llama/Llama-2-7b-chat-hf")
    assert status == 6 and "Could not reach the Hub" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, out = _access(capfd, "meta-llama/Llama-2-7b-chat-hf")
    assert status == 6 and "Offline mode is on" in out


ACCESS_WITHOUT_HTTPX2 = """
import sys
sys.modules["httpx2"] = None  # as on a machine where httpx2 is not installed
from llama2_colab.cli import main
raise SystemExit(main(["access", "meta-llama/Llama-2-7b-chat-hf"]))
"""


@pytest.mark.parametrize("httpx2", ["installed", "missing"])
def test_unreachable_hub_is_a_message_on_every_http_client(hub, tmp_path, httpx2):
    # huggingface_hub 1.x (Colab: 1.27) talks httpx, 2.x httpx2; Colab may or may not have httpx2.
    import huggingface_hub

    if httpx2 == "missing" and int(huggingface_hub.__version__.split(".")[0]) >= 2:
        pytest.skip("huggingface_hub 2.x needs httpx2 itself")
    if httpx2 == "installed":
        pytest.importorskip("httpx2")
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    script = (
        ACCESS_WITHOUT_HTTPX2
        if httpx2 == "missing"
        else ACCESS_WITHOUT_HTTPX2.replace('sys.modules["httpx2"] = None', "pass")
    )
    run = _run(["-c", script], _env(tmp_path, dead, GOOD))
    assert run.returncode == 6, run.stdout + run.stderr[-2000:]
    assert "Could not reach the Hub" in run.stdout


def test_access_json_has_the_masked_token_only(online, capfd):
    online(OTHER)
    status, out, _ = _cli(capfd, "access", "meta-llama/Llama-2-13b-chat-hf", "--json")
    data = json.loads(out)
    assert status == 4 and data["status"] == "gated" and data["ok"] is False
    assert data["token"] == mask_token(OTHER)


@pytest.fixture(scope="module")
def tiny_params(tiny_model_and_tokenizer) -> int:
    """The tiny model's parameter count, as loaded locally."""
    return tiny_model_and_tokenizer[0].num_parameters()


def test_plan_fetches_an_unknown_models_config_from_the_hub(online, capfd, tiny_params):
    online(GOOD)
    status, out, _ = _cli(capfd, "plan", "test-org/tiny-llama", "--gpu", "T4", "--json")
    assert status == 0
    assert json.loads(out)["params"] == tiny_params
    status, _, err = _cli(capfd, "plan", "meta-llama/Llama-2-7b-chat", "--gpu", "T4")
    assert status == 1 and "Did you mean meta-llama/Llama-2-7b-chat-hf" in err


GATED_LOAD_SCRIPT = """
from llama2_colab import UserFacingError, load_with_plan, make_plan, preset_runtime
plan = make_plan("meta-llama/Llama-2-13b-chat-hf", preset_runtime("A100-80GB"))
try:
    load_with_plan(plan)
except UserFacingError as err:
    print("USER", err.what, "|", err.todo)
"""


def test_loading_a_gated_model_without_access_is_a_message_not_a_traceback(hub, tmp_path):
    run = _run(["-c", GATED_LOAD_SCRIPT], _env(tmp_path, hub.url, OTHER), timeout=240)
    assert "USER" in run.stdout, run.stderr[-2000:]
    assert "not been granted" in run.stdout and "same email" in run.stdout


LOAD_SCRIPT = """
from llama2_colab.plan import make_plan
from llama2_colab.models import load_with_plan
from llama2_colab.runtime import preset_runtime
plan = make_plan("test-org/tiny-llama", preset_runtime("cpu"))
model, tokenizer = load_with_plan(plan)
print("loaded", type(model).__name__, model.num_parameters(), plan.dtype)
"""


def test_tiny_model_downloads_with_progress_survives_a_drop_and_loads(hub, tmp_path, tiny_params):
    weights = hub.repos["test-org/tiny-llama"].files["model.safetensors"]
    hub.drop_after["test-org/tiny-llama/model.safetensors"] = len(weights) // 2
    hub.log.clear()
    run = _run(["-c", LOAD_SCRIPT], _env(tmp_path, hub.url, GOOD), timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"loaded LlamaForCausalLM {tiny_params} float32" in run.stdout
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
