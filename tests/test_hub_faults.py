"""Every call to the Hub ends within a deadline, and every answer is checked before it is used.

A real TCP server on 127.0.0.1 that accepts connections and never answers stands for a Hub
behind a dead proxy (before, `access` printed nothing for minutes, and `plan` retried past two).
Each command runs in a fresh process with HF_ENDPOINT pointing at it, and the subprocess timeout
is only the guard: no speed is asserted, only that the command ends, says the Hub timed out and
what to do. huggingface_hub 1.x (httpx) and 2.x (httpx2) differ here; CI runs both stacks.

The stand-in Hub (tests/hub_server.py) serves repositories whose config.json is not JSON, says
200,000 layers, or that lack tokenizer files: each is named before anything is built or loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_runner import run_cli
from hub_server import FakeRepo, start_hub, start_portal_server, start_silent_server

GUARD_S = 240  # the subprocess timeout: far above any deadline, so only a hang trips it


@pytest.fixture(scope="module")
def silent_hub():
    url, close = start_silent_server()
    yield url
    close()


def _env(tmp_path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=endpoint, NO_PROXY="127.0.0.1")
    env.update(extra)
    return env


COMMANDS = [
    (["access", "meta-llama/Llama-2-7b-chat-hf"], 6),
    (["plan", "someone/some-model", "--gpu", "T4"], 1),
    (["demo", "--model", "someone/some-model"], 1),
    (["bench", "--model", "someone/some-model", "--no-bandwidth"], 1),
]


@pytest.mark.parametrize(
    ("argv", "code"), COMMANDS, ids=lambda a: a[0] if isinstance(a, list) else a
)
def test_a_hub_that_never_answers_is_named_not_waited_for(silent_hub, tmp_path, argv, code):
    env = _env(tmp_path, silent_hub, LLAMA2_COLAB_HUB_TIMEOUT="3")
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=GUARD_S,
    )
    said = run.stdout + run.stderr
    assert run.returncode == code, said[-2000:]
    assert "did not answer within 3 s" in said and "timed out" in said
    assert "Check the internet connection" in said and "HF_ENDPOINT" in said
    assert "Traceback" not in said


def test_the_default_deadline_ends_access_well_within_a_minute(silent_hub, tmp_path):
    # The default, not a test setting: what a learner gets. The guard is generous on purpose.
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "access", "meta-llama/Llama-2-7b-chat-hf"],
        capture_output=True,
        text=True,
        env=_env(tmp_path, silent_hub),
        timeout=GUARD_S,
    )
    assert run.returncode == 6
    assert "did not answer within 20 s" in run.stdout and "timed out" in run.stdout


def test_a_timeout_setting_that_is_no_number_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLAMA2_COLAB_HUB_TIMEOUT", "soon")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    from llama2_colab.faults import hub_timeout_s

    with pytest.raises(Exception, match="LLAMA2_COLAB_HUB_TIMEOUT='soon' is not a number"):
        hub_timeout_s()


@pytest.fixture(scope="module")
def portal():
    url, close = start_portal_server()
    yield url
    close()


def test_a_captive_portal_is_never_taken_for_access(portal, tmp_path):
    # A network login page answers 200 to the auth check too: only the Hub's JSON says yes.
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "access", "meta-llama/Llama-2-7b-chat-hf"],
        capture_output=True,
        text=True,
        env=_env(tmp_path, portal),
        timeout=GUARD_S,
    )
    assert run.returncode == 6, run.stdout + run.stderr[-2000:]
    assert "Access  : NO (offline)" in run.stdout and "confirmed" not in run.stdout
    assert "not as the Hugging Face Hub does" in run.stdout and "HF_ENDPOINT" in run.stdout


@pytest.mark.parametrize(
    "endpoint", ["http://[::1", "not a url", "ftp://mirror.example", "http://"]
)
@pytest.mark.parametrize("argv", [["access", "meta-llama/Llama-2-7b-chat-hf"], ["tiny", "t"]])
def test_an_hf_endpoint_that_is_no_url_is_named(tmp_path, endpoint, argv):
    # huggingface_hub reads HF_ENDPOINT when imported: a fresh process, as a user runs it.
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path, endpoint),
        timeout=GUARD_S,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"HF_ENDPOINT={endpoint!r} is not the URL of a Hub" in run.stderr
    assert "Unset HF_ENDPOINT" in run.stderr and not (tmp_path / "t").exists()


@pytest.mark.parametrize("endpoint", ["http://[::1", "not a url"])
def test_an_hf_endpoint_set_in_a_notebook_is_named(monkeypatch, endpoint):
    # Set after huggingface_hub was imported (a notebook cell): the HTTP client would raise
    # httpx's InvalidURL from inside check_access.
    from llama2_colab.auth import check_access
    from llama2_colab.errors import UserFacingError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(UserFacingError, match="is not the URL of a Hub") as caught:
        check_access("meta-llama/Llama-2-7b-chat-hf", token=None)
    assert "Unset HF_ENDPOINT" in caught.value.todo


@pytest.mark.parametrize("repo", ["../../etc/passwd", "a/b/c", "me/x..y", "https://evil/x"])
def test_access_refuses_what_is_no_repository_id_before_asking(online, capsys, repo):
    asked = len(online.log)
    code, out, err = run_cli(capsys, "access", repo)
    assert code == 5 and f"{repo!r} is not a valid Hub repository id" in out, out + err
    assert len(online.log) == asked  # the Hub was not asked


# --- answers checked before they are used -----------------------------------------------------


@pytest.fixture(scope="module")
def odd_hub(tiny_dir):
    """The stand-in Hub with damaged or incomplete copies of the tiny model."""
    files = {p.name: p.read_bytes() for p in tiny_dir.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    hub, server, thread = start_hub(set())

    def repo(**changes) -> FakeRepo:
        return FakeRepo(files={**files, **changes})

    hub.repos["odd/not-json"] = repo(**{"config.json": b"{not json"})
    hub.repos["odd/layers"] = repo(
        **{"config.json": json.dumps({**config, "num_hidden_layers": 200_000}).encode()}
    )
    hub.repos["odd/heads"] = repo(
        **{
            "config.json": json.dumps(
                {**config, "num_attention_heads": 5, "num_key_value_heads": 5, "head_dim": None}
            ).encode()
        }
    )
    hub.repos["odd/size-text"] = repo(
        **{"config.json": json.dumps({**config, "hidden_size": "64"}).encode()}
    )
    hub.repos["odd/no-tokenizer"] = FakeRepo(
        files={k: v for k, v in files.items() if not k.startswith("tokenizer")}
    )
    hub.repos["odd/no-config"] = FakeRepo(files={"README.md": b"# nothing here\n"})
    for name, changes in {
        "rope": {"rope_parameters": {"rope_type": "bogus", "rope_theta": 10000.0}},
        "dtype": {"dtype": "bogus"},
        "pad": {"pad_token_id": 50_000},
        "layers-x2": {"num_hidden_layers": 2 * config["num_hidden_layers"]},
        "vocab-half": {"vocab_size": config["vocab_size"] // 2},
    }.items():
        hub.repos[f"odd/{name}"] = repo(
            **{"config.json": json.dumps({**config, **changes}).encode()}
        )
    hidden = f'"hidden_size": {config["hidden_size"]}'
    digits = json.dumps(config).replace(hidden, '"hidden_size": 1' + "0" * 5000)
    hub.repos["odd/digits"] = repo(**{"config.json": digits.encode()})
    hub.repos["odd/bad-tokenizer"] = repo(
        **{"tokenizer.json": b'{"not": "a tokenizer"}', "tokenizer.model": b"garbage"}
    )
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def online(odd_hub, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setenv("HF_ENDPOINT", odd_hub.url)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return odd_hub


HUB_CASES = [
    ("odd/not-json", r"odd/not-json's config.json is not valid JSON"),
    ("odd/layers", r"num_hidden_layers=200,000: it must be from 1 to 1,024"),
    ("odd/heads", r"hidden size \d+ with 5 attention heads: 5 does not divide it"),
    ("odd/size-text", r"hidden_size='64': it must be a whole number, not str"),
    ("odd/no-config", r"odd/no-config has no config.json"),
    ("odd/rope", r"config.json says rope_type='bogus' \(in rope_parameters\)"),
    ("odd/dtype", r"config.json says dtype='bogus': a Llama model's weights are floating"),
    ("odd/pad", r"config.json says pad_token_id=50000: a token id must be a whole number"),
    ("odd/digits", r"config.json is not readable JSON \(ValueError: Exceeds the limit"),
]


@pytest.mark.parametrize(("repo", "message"), HUB_CASES)
@pytest.mark.parametrize("command", [["plan", "--gpu", "T4"], ["demo", "--model"]])
def test_a_hub_config_is_checked_before_anything_is_built(online, capsys, repo, message, command):
    import re

    argv = [command[0], repo, *command[1:]] if command[0] == "plan" else [*command, repo]
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and re.search(message, err), err
    assert "What to do:" in err and "Loaded in" not in out and "Traceback" not in err
    fetched = [r.path for r in online.log if "/resolve/" in r.path]
    assert all(path.endswith("/config.json") for path in fetched)  # no weight was downloaded


@pytest.mark.parametrize("command", [["demo", "--model"], ["bench", "--no-bandwidth", "--model"]])
def test_a_hub_repo_without_a_tokenizer_is_named_not_sentencepiece(online, capsys, command):
    code, out, err = run_cli(capsys, *command, "odd/no-tokenizer")
    assert code == 1 and "odd/no-tokenizer has no tokenizer" in err
    assert "sentencepiece" not in err.lower() and "Traceback" not in err
    assert not [r for r in online.log if r.path.endswith(".safetensors")]


def test_bench_of_a_hub_model_offline_says_so(capsys, monkeypatch):
    # Offline (the tests' default) with nothing cached: once said, no traceback.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, "bench", "--model", "someone/some-model", "--no-bandwidth")
    assert code == 1 and "Traceback" not in err
    assert "Could not fetch the config.json of someone/some-model" in err
    assert "Offline mode is on" in err and err.count("Error:") == 1


def _demo_of(hub, repo: str, tmp_path) -> subprocess.CompletedProcess:
    """`demo --model repo` in a fresh process: huggingface_hub reads HF_ENDPOINT when imported."""
    return subprocess.run(
        [sys.executable, "-m", "llama2_colab", "demo", "--model", repo, "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        env=_env(tmp_path, hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1"),
        timeout=GUARD_S,
    )


@pytest.mark.parametrize("repo", ["odd/layers-x2", "odd/vocab-half"])
def test_a_hub_config_that_does_not_match_its_weights_is_refused(odd_hub, tmp_path, repo):
    # Before: more layers than the weights hold answered from random layers (exit 0), and
    # another vocabulary size was a RuntimeError traceback.
    run = _demo_of(odd_hub, repo, tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"{repo}: its config.json and its weights disagree" in run.stderr
    assert "Llama 2: " not in run.stdout and "Traceback" not in run.stderr


def test_a_hub_tokenizer_that_is_not_a_tokenizer_is_named(odd_hub, tmp_path):
    run = _demo_of(odd_hub, "odd/bad-tokenizer", tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "The tokenizer of odd/bad-tokenizer failed to load (KeyError: 'added_tokens')" in (
        run.stderr
    )
    assert "What to do:" in run.stderr and "Traceback" not in run.stderr
