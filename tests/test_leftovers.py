"""Leftovers and wrong advice: killed builds, concurrent builds, files added meanwhile, bad types.

`tiny` and `convert` share one mechanism for their work folders (`llama2_colab.workdirs`): named
by host and process, removed by the next run once their process is gone, never while it runs.
A library function given an argument of the wrong type raises TypeError saying what to pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_convert import make_params, write_meta_folder

from llama2_colab.auth import check_access
from llama2_colab.codellama import encode_completion, encode_infilling
from llama2_colab.convert import MARKER_FILE, convert_meta_checkpoint
from llama2_colab.tiny import is_tiny_folder


def _start_tiny(target: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama2_colab", "tiny", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _wait_for_work_folder(folder: Path, proc: subprocess.Popen) -> Path:
    """The tiny build's work folder in folder, once it appears (the build has started)."""
    deadline = time.monotonic() + 240  # a guard against a build that never starts
    while time.monotonic() < deadline:
        found = sorted(folder.glob(".tiny-build-*"))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no work folder appeared")


def test_a_killed_tiny_build_is_cleaned_up_by_the_next(tmp_path, capsys):
    proc = _start_tiny(tmp_path / "tiny-llama-2")
    work = _wait_for_work_folder(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)  # as the kernel's out-of-memory killer does
    proc.communicate(timeout=60)
    assert work.is_dir() and not (tmp_path / "tiny-llama-2").exists()
    code, out, err = run_cli(capsys, "tiny", str(tmp_path / "tiny-llama-2"))
    assert code == 0, err
    assert not work.exists() and is_tiny_folder(tmp_path / "tiny-llama-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama-2"]


def test_a_second_tiny_into_the_same_folder_does_not_call_the_first_ones_work_yours(
    tmp_path, capsys
):
    target = tmp_path / "tiny-llama-2"
    target.mkdir()  # an empty folder: both builds work inside it
    first = _start_tiny(target)
    try:
        work = _wait_for_work_folder(target, first)
        assert work.exists()  # the first build is still running when the second starts
        code, out, err = run_cli(capsys, "tiny", str(target))
        assert code == 0, err
        assert ".tiny-build" not in err and "already holds files" not in err
    finally:
        out_first, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, err_first
    assert is_tiny_folder(target)
    assert not list(target.glob(".tiny-build-*"))  # both work folders are gone


@pytest.fixture(scope="module")
def meta_folder(tmp_path_factory):
    folder, _ = write_meta_folder(tmp_path_factory.mktemp("meta"), make_params(2), 1)
    return folder


def test_a_file_added_to_out_dir_while_convert_runs_is_kept(meta_folder, tmp_path):
    out = tmp_path / "hf"
    convert_meta_checkpoint(meta_folder, out, dtype="float32")  # an earlier conversion

    def meanwhile(line: str) -> None:  # the moment convert is writing the new weights
        if line.startswith("wrote part"):
            (out / "adapter_notes.txt").write_text("written while convert ran\n")

    convert_meta_checkpoint(meta_folder, out, dtype="float32", log=meanwhile)
    assert (out / "adapter_notes.txt").read_text() == "written while convert ran\n"
    assert (out / "config.json").is_file() and (out / MARKER_FILE).is_file()
    listed = json.loads((out / MARKER_FILE).read_text())["files"]
    assert "adapter_notes.txt" not in listed  # yours: the next run refuses to replace it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_file_saved_meanwhile_under_a_name_convert_writes_is_not_lost(meta_folder, tmp_path):
    out = tmp_path / "hf"
    convert_meta_checkpoint(meta_folder, out, dtype="float32")

    def meanwhile(line: str) -> None:
        if line.startswith("wrote part"):
            (out / "generation_config.json").write_text('{"mine": true}\n')

    with pytest.raises(Exception, match="gained generation_config.json while convert ran"):
        convert_meta_checkpoint(meta_folder, out, dtype="float32", log=meanwhile)
    assert (out / "generation_config.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# --- library arguments of the wrong type: TypeError, saying what to pass ----------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None,), "repo_id must be a string such as 'meta-llama/Llama-2-7b-chat-hf', not NoneType"),
        ((3,), "repo_id must be a string .* not int"),
        ((b"meta-llama/Llama-2-7b-hf",), "not bytes"),
        (("meta-llama/Llama-2-7b-hf", 5), "token must be a string \\(hf_...\\) or None"),
    ],
)
def test_check_access_says_which_argument_is_wrong(args, message):
    with pytest.raises(TypeError, match=message):
        check_access(*args)


def test_code_llama_prompts_say_which_argument_is_wrong(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(TypeError, match="encode_completion: code must be a string, not NoneType"):
        encode_completion(tokenizer, None)
    with pytest.raises(TypeError, match="encode_completion: tokenizer must be a transformers"):
        encode_completion(None, "def f():")
    with pytest.raises(TypeError, match="encode_completion: tokenizer must be .* not str"):
        encode_completion("tokenizer", "def f():")
    with pytest.raises(TypeError, match="encode_infilling: prefix must be a string, not int"):
        encode_infilling(tokenizer, 3, "x")


def test_the_readme_states_the_exception_rule():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "A library function given an argument of the wrong type raises `TypeError`" in readme


# --- SIGTERM and SIGHUP clean up as Ctrl-C does -----------------------------------------------


def _start_convert(meta: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama2_colab", "convert", str(meta), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.parametrize(
    ("command", "sig"),
    [("tiny", signal.SIGTERM), ("tiny", signal.SIGHUP), ("convert", signal.SIGTERM)],
    ids=["tiny-SIGTERM", "tiny-SIGHUP", "convert-SIGTERM"],
)
def test_a_terminated_run_removes_its_work_folder_at_once(meta_folder, tmp_path, command, sig):
    # `kill PID` or a closed terminal: before, the work folder stayed until a later run.
    proc = (
        _start_tiny(tmp_path / "out")
        if command == "tiny"
        else _start_convert(meta_folder, tmp_path / "out")
    )
    deadline = time.monotonic() + 240  # a guard against a run that never starts
    while not list(tmp_path.glob(".*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal came: nothing to test this time
        pytest.skip("the run ended before the signal arrived")
    assert proc.returncode == -sig  # ended by the signal, as without a handler
    assert list(tmp_path.iterdir()) == []  # no work folder, no half result


_SIGNAL_AT_MKDTEMP = """
import os, signal, sys, tempfile
from llama2_colab.workdirs import work_folder
made = tempfile.mkdtemp
def mkdtemp(*args, **kwargs):  # the folder exists; the signal comes before it is returned
    path = made(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return path
tempfile.mkdtemp = mkdtemp
with work_folder(sys.argv[1], "race"):
    print("the block ran")
"""


def test_a_signal_the_moment_a_work_folder_is_made_still_removes_it(tmp_path):
    # The window a `kill` right after the folder appears can hit (G5: it failed once).
    run = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT_MKDTEMP, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -signal.SIGTERM, run.stderr[-2000:]
    assert "the block ran" not in run.stdout and list(tmp_path.iterdir()) == []


# --- two commands writing one new folder at once ----------------------------------------------


def test_convert_leaves_a_folder_another_command_filled_meanwhile(meta_folder, tmp_path, capsys):
    # tiny writes OUT_DIR while convert is writing its weights: convert's result is not kept,
    # and the tiny model is not mixed with it (before, both said "Wrote" and X held a mix).
    out = tmp_path / "X"
    said = []

    def meanwhile(line: str) -> None:
        if line.startswith("wrote part") and not said:
            said.append(run_cli(capsys, "tiny", str(out)))

    with pytest.raises(Exception, match="appeared while convert ran") as refused:
        convert_meta_checkpoint(meta_folder, out, dtype="float32", log=meanwhile)
    assert said[0][0] == 0 and "this conversion is not kept" in str(refused.value)
    assert is_tiny_folder(out) and not (out / MARKER_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]


def test_tiny_leaves_a_folder_another_command_filled_meanwhile(meta_folder, tmp_path, capsys):
    out = tmp_path / "X"
    tiny = _start_tiny(out)
    try:
        _wait_for_work_folder(tmp_path, tiny)  # the build has started; convert ends first
        convert_meta_checkpoint(meta_folder, out, dtype="float32")
        weights = (out / "model.safetensors").read_bytes()
    finally:
        _, err = tiny.communicate(timeout=300)
    assert tiny.returncode == 1 and b"already holds files" in err, err.decode()[-2000:]
    assert (out / MARKER_FILE).is_file() and not (out / "README.md").exists()
    assert (out / "model.safetensors").read_bytes() == weights  # the conversion, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]


def test_a_tiny_readme_beside_other_files_does_not_make_them_tiny_s(meta_folder, tmp_path, capsys):
    # A converted model that also holds tiny's README.md: `tiny X` must not write over it.
    from llama2_colab.tiny import _CONVERSION_RECORD, MARKER, build_tiny_llama

    assert _CONVERSION_RECORD == MARKER_FILE  # tiny's copy of convert's name is the same

    out = convert_meta_checkpoint(meta_folder, tmp_path / "X", dtype="float32")
    build_tiny_llama(tmp_path / "t")
    (out / MARKER).write_bytes((tmp_path / "t" / MARKER).read_bytes())
    weights = (out / "model.safetensors").read_bytes()
    assert not is_tiny_folder(out)
    code, _, err = run_cli(capsys, "tiny", str(out))
    assert code == 1 and "already holds files" in err, err
    assert (out / "model.safetensors").read_bytes() == weights
