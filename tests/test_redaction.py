"""One output channel: a token never reaches the screen or a file, however it arrives.

The rule (`errors.redact_secrets`): a token at the start of a word is masked, and so is one of
today's exact length inside a name (after `_` or `-`), while a folder name that merely contains
`hf_` stays. Streamed text goes through `errors.StreamRedactor`, which must give exactly what
redacting the whole text gives, however the text is cut into pieces; hypothesis cuts it.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama2_colab import cli
from llama2_colab.errors import (
    StreamRedactor,
    mask_token,
    redact_log_records,
    redact_secrets,
    shorten,
)
from llama2_colab.faults import describe_fault

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token; not one
OLD_STYLE = "api_oldstyletoken1234"  # a token in the environment that looks like no token


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "text",
    [
        f"my_{TOKEN}",  # after an underscore
        f"run-{TOKEN}/out",  # after a dash, in a path
        f"/content/llama-2-7b-{TOKEN}",
        f"x{TOKEN}.txt",  # after a letter
        f"{TOKEN}",
        f"Bearer {TOKEN}",
    ],
)
def test_a_token_inside_a_name_is_masked(text):
    shown = redact_secrets(text)
    assert TOKEN not in shown and "hf_...4567" in shown


@pytest.mark.parametrize(
    "name",
    [
        "/content/llama-2-7b-hf_mergedLoraAdapterEpoch3",
        "llama-2-7b-chat-hf_q4",
        "models--meta-llama--Llama-2-7b-hf_snapshot",
        "my_hf_notes_v2",
    ],
)
def test_a_name_that_merely_contains_hf_stays(name):
    assert redact_secrets(f"saved to {name}") == f"saved to {name}"


# --- the streaming redactor, cut by hypothesis ------------------------------------------------

WORDS = st.sampled_from(
    [
        TOKEN,
        "hf_",
        "h",
        "hf",
        "hf_short",
        "llama-2-7b-hf_mergedLoraAdapterEpoch3",
        "_",
        "-",
        " ",
        "\n",
        "日本語",
        "abc",
        "Z9",
        OLD_STYLE,
    ]
)


def _cuts(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    words=st.lists(WORDS, max_size=12),
    points=st.lists(st.integers(min_value=0, max_value=500), max_size=12),
    env_token=st.booleans(),
)
def test_a_streamed_text_is_redacted_exactly_as_the_whole(words, points, env_token):
    text = "".join(words)
    old = os.environ.get("HF_TOKEN")
    if env_token:
        os.environ["HF_TOKEN"] = OLD_STYLE
    try:
        redactor = StreamRedactor()
        shown = "".join(redactor.feed(piece) for piece in _cuts(text, points)) + redactor.flush()
        assert shown == redact_secrets(text)
        assert TOKEN not in shown
        if env_token:
            assert OLD_STYLE not in shown
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old


def test_a_token_streamed_one_character_at_a_time_is_never_shown_in_part():
    redactor = StreamRedactor()
    shown = [redactor.feed(c) for c in f"key {TOKEN} done"] + [redactor.flush()]
    assert "".join(shown) == "key hf_...4567 done"
    assert not any("AbCd" in piece for piece in shown)  # no prefix of it escaped early


def test_the_redactor_holds_back_a_bounded_amount():
    redactor = StreamRedactor(max_hold=64)
    out = redactor.feed("hf_" + "a" * 200)  # a run that never ends cannot be held forever
    assert out and len(redactor.flush()) <= 64


# --- everything the CLI prints and writes -----------------------------------------------------


def test_demo_never_echoes_a_token_in_the_prompt(capsys):
    code, out, err = run_cli(capsys, "demo", f"my token is {TOKEN}", "--max-new-tokens", "4")
    assert code == 0, err
    assert TOKEN not in out + err and "You: my token is hf_...4567" in out


def test_demo_masks_a_token_split_across_streamed_pieces(capsys):
    show, finish = cli._stream_printer()
    for piece in ["The key is h", "f_AbCdEfGhIj", "KlMnOpQrStUvWx", "Yz01234567", ". Done"]:
        show(piece)
    finish()
    out, _ = capsys.readouterr()
    assert out == "The key is hf_...4567. Done"


def test_bench_and_plan_mask_a_token_in_a_folder_name(capsys, tmp_path, tiny_dir):
    folder = tmp_path / f"model-{TOKEN}"
    shutil.copytree(tiny_dir, folder)
    code, out, err = run_cli(capsys, "plan", str(folder), "--gpu", "T4")
    assert code == 0 and TOKEN not in out + err and "hf_...4567" in out
    code, out, err = run_cli(
        capsys,
        *("bench", "--model", str(folder), "--no-bandwidth", "--prompt-tokens", "8"),
        *("--new-tokens", "2", "--repeats", "1", "--warmup", "0"),
    )
    assert code == 0, err
    assert TOKEN not in out + err and "hf_...4567" in out + err


@pytest.fixture(scope="module")
def meta_folder(tmp_path_factory):
    """A one-shard Meta-format checkpoint inside a folder whose name holds a token."""
    from test_convert import make_params, write_meta_folder

    root = tmp_path_factory.mktemp("meta") / f"downloads_{TOKEN}"
    folder, _ = write_meta_folder(root, make_params(None), 1, name="llama-2-tiny")
    return folder


def test_convert_prints_and_writes_no_token(capsys, meta_folder, tmp_path):
    out_dir = tmp_path / f"hf-{TOKEN}"
    code, out, err = run_cli(capsys, "convert", str(meta_folder), str(out_dir))
    assert code == 0, err
    assert TOKEN not in out + err and "hf_...4567" in out
    for path in out_dir.rglob("*"):  # the marker records where it came from, masked
        assert TOKEN.encode() not in path.read_bytes(), path.name
    marker = json.loads((out_dir / "llama2_colab_conversion.json").read_text())
    assert mask_token(TOKEN) in marker["converted_from"]


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    argv=st.lists(
        st.sampled_from(
            [
                "plan",
                "access",
                "demo",
                "--model",
                "--json",
                "--gpu",
                "T4",
                "tiny",
                TOKEN,
                f"./{TOKEN}",
                f"x_{TOKEN}",
                "--threads",
                "bench",
                "--dtype",
            ]  # fmt: skip
        ),
        min_size=1,
        max_size=4,
    )
)
def test_no_argument_list_shows_a_token(capsys, argv):
    if argv[0] in ("demo", "bench", "tiny"):
        argv = ["plan", *argv]  # nothing loads or writes: a refusal or a plan, quickly
    code, out, err = run_cli(capsys, *argv)
    assert TOKEN not in out + err
    assert "Traceback" not in err and code in (0, 1, 2, 3, 4, 5, 6, 7)


def test_a_warning_the_cli_shows_is_masked_too(capsys, monkeypatch, tmp_path, tiny_dir):
    from llama2_colab.tiny import tiny_cache_dir

    monkeypatch.setenv("LLAMA2_COLAB_CACHE", str(tmp_path / f"cache_{TOKEN}"))
    cache = tiny_cache_dir()
    shutil.copytree(tiny_dir, cache)
    (cache / "model.safetensors").write_bytes(b"")  # damaged: rebuilt, with a warning
    code, out, err = run_cli(capsys, "plan", "tiny")
    assert code == 0, err
    assert "UserWarning: The cached tiny Llama 2 at" in err and "rebuilding it" in err
    assert TOKEN not in out + err and "hf_...4567" in err


# --- what libraries log, and names shortened --------------------------------------------------


def test_a_log_record_is_masked_whichever_logger_and_handler_prints_it():
    redact_log_records()
    redact_log_records()  # a second call changes nothing
    factory = logging.getLogRecordFactory()
    redact_log_records()
    assert logging.getLogRecordFactory() is factory
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a handler added after the redaction was installed
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("transformers.x", "huggingface_hub.y", "user")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        loggers[0].warning("LOAD REPORT from: %s", f"/content/{TOKEN}")
        loggers[1].info("downloading %s", f"me/{TOKEN}")  # below the level: never made
        loggers[1].warning("downloading %s", f"me/{TOKEN}")
        try:
            raise OSError(f"cannot open /x/{TOKEN}")
        except OSError:
            loggers[2].exception("failed", stack_info=True)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True
    shown = stream.getvalue()
    assert TOKEN not in shown
    assert "LOAD REPORT from: /content/hf_...4567" in shown and "me/hf_...4567" in shown
    assert "OSError: cannot open /x/hf_...4567" in shown and "Stack (most recent" in shown


def test_transformers_own_log_lines_are_masked(tmp_path, tiny_dir):
    # transformers' logger prints paths through its own handler (here at info level: "loading
    # configuration file <folder>/config.json"); the CLI never sees those lines.
    folder = tmp_path / f"ok-{TOKEN}"
    shutil.copytree(tiny_dir, folder)
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "demo", "--model", str(folder), "hi"]
        + ["--greedy", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "info"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loading configuration file" in run.stderr  # transformers did log the path
    assert TOKEN not in run.stdout + run.stderr
    assert f"ok-{mask_token(TOKEN)}/config.json" in run.stderr


def _shows_part_of_token(text: str) -> bool:
    """True if five characters in a row of what a mask hides are in text."""
    hidden = TOKEN[3:-4]
    return any(hidden[i : i + 5] in text for i in range(len(hidden) - 4))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    before=st.text(alphabet="aceg89._-", max_size=250),
    after=st.text(alphabet="aceg89._-", max_size=250),
    limit=st.sampled_from([40, 120, 500]),
)
def test_a_long_name_is_redacted_before_it_is_shortened(before, after, limit):
    # No stretch of the token's secret shows, wherever the cut falls; the mask stays whole.
    name = f"/data/{before}{TOKEN}{after}"
    for shown in (
        shorten(name, limit),
        describe_fault(OSError(errno.ENAMETOOLONG, "File name too long", name), "Cannot").what,
    ):
        assert not _shows_part_of_token(shown), shown
        masks = re.findall(r"hf_\.\.\.[A-Za-z0-9]{0,4}", shown)
        assert all(len(mask) == 10 for mask in masks), shown  # whole or not at all, never cut


@pytest.mark.parametrize(("length", "code_wanted"), [(230, 0), (300, 1)])
def test_a_convert_out_dir_with_a_long_name_shows_no_token(
    capsys, meta_folder, length, code_wanted
):
    # The red team's case: a legal 230-character name (convert's work folder beside it must not
    # make it too long: it converts), and a 300-character one, over the 255-byte limit; the
    # token straddles the 60th character, where a path shown is cut.
    parent = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    try:
        before = "a" * (50 - len(f"{parent}/."))
        name = before + TOKEN + "b" * (length - len(before) - len(TOKEN))
        code, out, err = run_cli(capsys, "convert", str(meta_folder), str(parent / name))
    finally:
        shutil.rmtree(parent)
    assert code == code_wanted, err
    assert code == 0 or "too long" in err, err
    assert not _shows_part_of_token(out + err), err
