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
