"""Proof by generation: hypothesis writes the command lines, configs and damaged files.

Each property is an invariant a user relies on, checked on whatever hypothesis generates:

- every subcommand, with generated arguments: no traceback, an exit status the command
  documents, no token in any output, nothing of the user's changed, no work folder left behind;
- config.json with generated field values: `plan` plans it or names what is wrong, and a size
  that is not a positive whole number is never planned;
- params.json with generated field values: `convert` converts or refuses before writing;
- damaged files (cut short, bytes flipped, a link that loops, a folder where a file belongs,
  a file gone, an unreadable file): `plan`, `demo` and `convert` name the damage or work, and
  never change the files they were given.

CI runs a fixed set of examples (`derandomize=True`, counts in `EXAMPLES`), so the suite takes
the same time and finds the same things on every run; `LLAMA2_COLAB_FUZZ_SCALE=10` runs ten times
as many, drawn afresh, to look for new failures.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli as _run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_convert import make_params, write_meta_folder

from llama2_colab.config_values import CONFIG_LIMITS

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token; not one
SCALE = max(1, int(os.environ.get("LLAMA2_COLAB_FUZZ_SCALE", "1") or 1))
EXAMPLES = {"cli": 60, "config": 120, "params": 50, "model_damage": 30, "meta_damage": 30}
# Exit statuses the CLI documents: 0 done, 1 a message, 2 a usage error or "does not fit",
# 3-7 the answers of `access` (auth.ACCESS_EXIT_CODES), 130 Ctrl-C, 141 a closed pipe.
EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7}


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name] * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under root and what it is: a file's digest, a link's target, or a folder."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            found[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            try:
                found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:  # unreadable on purpose: its size and mode stand in
                found[str(p.relative_to(root))] = f"{p.stat().st_size}:{p.stat().st_mode}"
        else:
            found[str(p.relative_to(root))] = "/"
    return found


def _leftovers(root: Path) -> list[str]:
    """Work folders of tiny or convert, anywhere under root."""
    return [
        str(p) for p in root.rglob(".*") if ".tiny-build-" in p.name or ".converting-" in p.name
    ]


def _assert_clean(code, out: str, err: str, allowed=EXIT_CODES) -> None:
    assert code in allowed, (code, err[-3000:])
    assert "Traceback" not in err and "this is a bug" not in err, err[-3000:]
    assert TOKEN not in out + err


# --- a world of the user's files, and the command lines hypothesis writes ---------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    """The user's files: a model folder, a Meta download, notes, a link loop; outputs go to new/.

    Commands run from new/ with HOME at home/, so a relative or `~` path stays in this world.
    """
    root = tmp_path_factory.mktemp("world")
    (root / "home").mkdir()
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my notes\n")
    shutil.copytree(tiny_dir, root / "model")
    write_meta_folder(root / "download", make_params(2), 1)
    (root / "loop").symlink_to(root / "loop")
    (root / "new").mkdir()
    return root


NEW = itertools.count()

NUMBERS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from(["0", "1", "2", "-1", "1.5", "two", "", " 8", "1e3", "٣", TOKEN, "0x10"]),
)
SMALL = st.sampled_from(["1", "2", "3", "0", "-1", "x", "1000000", TOKEN])


def _names(world: Path) -> st.SearchStrategy[str]:
    fixed = [
        "tiny",
        "TINY ",
        "meta-llama/Llama-2-7b-chat-hf",
        "Llama-2-13b-chat-hf",
        "someone/some-model",
        "",
        "  ",
        "x" * 300,
        "a" * 5000,
        TOKEN,
        f"./{TOKEN}",
        f"my_{TOKEN}",
        "../nope",
        "/",
        ".",
        "~",
        "~/nope",
        "日本語",
        "caf\udcff",
        "a/b/c",
        "-",
        str(world / "model"),
        str(world / "mine"),
        str(world / "mine" / "notes.txt"),
        str(world / "loop"),
        str(world / "download" / "llama-2-tiny"),
    ]
    return st.one_of(st.sampled_from(fixed), st.text(max_size=20))


def _flags(pairs: dict[str, st.SearchStrategy], switches: list[str]):
    """Some of the options, each with a generated value, and some of the switches."""
    options = (
        st.lists(st.sampled_from(sorted(pairs)), unique=True, max_size=len(pairs)).flatmap(
            lambda keys: st.tuples(*[st.tuples(st.just(k), pairs[k]) for k in keys])
        )
        if pairs
        else st.just(())
    )
    chosen = st.lists(st.sampled_from(switches), unique=True) if switches else st.just([])
    return st.tuples(options, chosen).map(
        lambda both: [x for pair in both[0] for x in pair] + list(both[1])
    )


def _argv(world: Path) -> st.SearchStrategy[list[str]]:
    names = _names(world)
    gpus = st.sampled_from(["T4", "t4", "H100", "cpu", "TPU", "", TOKEN])
    dtypes = st.sampled_from(["float16", "bfloat16", "float32", "int4", ""])
    new_dir = st.builds(lambda: str(world / "new" / f"out-{next(NEW)}"))
    outs = st.one_of(new_dir, names)
    return st.one_of(
        st.tuples(st.just(["doctor"]), _flags({}, ["--json"])),
        st.tuples(
            st.tuples(st.just("plan"), names).map(list),
            _flags(
                {"--gpu": gpus, "--dtype": dtypes, "--quantization": st.sampled_from(["nf4", "q"])},
                ["--json", "--list"],
            ),
        ),
        st.tuples(st.tuples(st.just("access"), names).map(list), _flags({}, ["--json"])),
        st.tuples(
            st.tuples(
                st.just("demo"), st.sampled_from(["hi", "", "a [INST] b", TOKEN, "日本語"])
            ).map(list),
            _flags({"--model": names, "--max-new-tokens": SMALL, "--seed": NUMBERS}, []),
        ),
        st.tuples(
            st.just(["bench", "--repeats", "1", "--prompt-tokens", "8", "--warmup", "0"]),
            _flags(
                {
                    "--model": names,
                    "--new-tokens": SMALL,
                    "--threads": NUMBERS,
                    "--fast": st.sampled_from(["eager", "lookup", "turbo", "", TOKEN]),
                    "--dtype": dtypes,
                },
                ["--json", "--no-bandwidth"],
            ),
        ),
        st.tuples(st.tuples(st.just("tiny"), outs).map(list), st.just([])),
        st.tuples(st.tuples(st.just("convert"), names, outs).map(list), st.just([])),
    ).map(lambda parts: parts[0] + parts[1])


@_settings("cli")
@given(data=st.data())
def test_no_command_line_traces_back_leaks_or_loses_anything(world, tiny_dir, capsys, data):
    argv = data.draw(_argv(world), label="argv")
    before = _snapshot(world / "mine") | _snapshot(world / "model")
    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.update(HOME=str(world / "home"), LLAMA2_COLAB_CACHE=str(tiny_dir.parent))
    os.chdir(world / "new")
    try:
        code, out, err = run_cli(capsys, argv)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    event(f"{argv[0]} exit {code}")  # --hypothesis-show-statistics: what was covered
    _assert_clean(code, out, err)
    assert _snapshot(world / "mine") | _snapshot(world / "model") == before
    assert not _leftovers(world)


# --- config.json field values -----------------------------------------------------------------

PLAUSIBLE = st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 4096, 32000, 1e-5, 1e-6])
ANY_VALUE = st.one_of(
    PLAUSIBLE,
    PLAUSIBLE,  # twice: about half the values could be a real model's
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from([0, 1, 2, 3, 64, 4096, 200_000, 2**31, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
FIELDS = [*CONFIG_LIMITS, "rms_norm_eps", "rope_parameters", "hidden_act", "model_type"]


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory, tiny_dir):
    folder = tmp_path_factory.mktemp("config") / "model"
    shutil.copytree(tiny_dir, folder)
    return folder


@_settings("config")
@given(changes=st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, min_size=1, max_size=4))
def test_any_config_is_planned_or_named(config_folder, tiny_dir, capsys, changes):
    config = json.loads((tiny_dir / "config.json").read_text())
    text = json.dumps({**config, **changes})  # NaN and Infinity too, as Python's json writes them
    (config_folder / "config.json").write_text(text)
    code, out, err = run_cli(capsys, ["plan", str(config_folder), "--gpu", "T4"])
    event(f"plan exit {code}")
    _assert_clean(code, out, err, {0, 1, 2})
    if code == 1:
        assert "What to do:" in err
    bad_size = any(
        key in CONFIG_LIMITS
        and value is not None
        and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        for key, value in changes.items()
    )
    if bad_size:  # a size that is not a positive whole number is never planned
        assert code == 1 and "config.json" in err, (changes, out)


# --- params.json field values -----------------------------------------------------------------

PARAMS = ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of"]
PARAMS += ["ffn_dim_multiplier", "norm_eps", "rope_theta"]


@pytest.fixture(scope="module")
def meta_scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta-scratch")
    folder, _ = write_meta_folder(root, make_params(2), 1)
    return folder


@_settings("params")
@given(changes=st.dictionaries(st.sampled_from(PARAMS), ANY_VALUE, min_size=1, max_size=3))
def test_any_params_json_is_converted_or_refused_before_writing(meta_scratch, capsys, changes):
    params = make_params(2)
    (meta_scratch / "params.json").write_text(json.dumps({**params, **changes}))
    out_dir = meta_scratch.parent.parent / "params-out" / f"hf-{next(NEW)}"
    before = _snapshot(meta_scratch)
    code, out, err = run_cli(capsys, ["convert", str(meta_scratch), str(out_dir)])
    event(f"convert exit {code}")
    _assert_clean(code, out, err, {0, 1})
    assert _snapshot(meta_scratch) == before
    assert (code == 0) == out_dir.is_dir()
    assert not _leftovers(out_dir.parent) and not _leftovers(meta_scratch.parent)


# --- damaged files ----------------------------------------------------------------------------


def _damage(folder: Path, data: st.DataObject) -> str:
    """Damage one file of folder the way hypothesis picks; return what was done."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    target = data.draw(st.sampled_from(files), label="file")
    kind = data.draw(
        st.sampled_from(["truncate", "flip", "loop", "folder", "remove", "unreadable", "empty"]),
        label="damage",
    )
    raw = target.read_bytes()
    if kind == "truncate":
        target.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="at")])
    elif kind == "flip":
        flipped = bytearray(raw)
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            flipped[i] ^= data.draw(st.integers(1, 255), label="bits")
        target.write_bytes(bytes(flipped))
    elif kind == "loop":
        target.unlink()
        target.symlink_to(target)
    elif kind == "folder":
        target.unlink()
        target.mkdir()
    elif kind == "remove":
        target.unlink()
    elif kind == "unreadable":
        target.chmod(0)  # no effect for root, who reads it anyway
    else:
        target.write_bytes(b"")
    return f"{kind} {target.name}"


def _fresh(source: Path, folder: Path) -> None:
    if folder.exists():
        for p in folder.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(folder)
    shutil.copytree(source, folder)


@_settings("model_damage")
@given(data=st.data())
def test_a_damaged_model_folder_is_named_and_left_as_it_is(
    tiny_dir, tmp_path_factory, capsys, data
):
    folder = tmp_path_factory.getbasetemp() / "damaged-model"
    _fresh(tiny_dir, folder)
    what = _damage(folder, data)
    before = _snapshot(folder)
    for argv in (
        ["plan", str(folder), "--gpu", "T4"],
        ["demo", "hi", "--model", str(folder), "--max-new-tokens", "2"],
    ):
        code, out, err = run_cli(capsys, argv)
        event(f"{argv[0]} exit {code} after {what.split()[0]}")
        _assert_clean(code, out, err, {0, 1, 2})
        assert _snapshot(folder) == before, what


@_settings("meta_damage")
@given(data=st.data())
def test_a_damaged_meta_download_is_named_before_anything_is_written(
    meta_scratch, tmp_path_factory, capsys, data
):
    root = tmp_path_factory.getbasetemp() / "damaged-meta"
    _fresh(meta_scratch.parent, root)
    (root / "out").mkdir(exist_ok=True)
    folder = root / meta_scratch.name
    (folder / "params.json").write_text(json.dumps(make_params(2)))
    what = _damage(data.draw(st.sampled_from([folder, root]), label="where"), data)
    before = _snapshot(folder)
    out_dir = root / "out" / "hf"
    code, out, err = run_cli(capsys, ["convert", str(folder), str(out_dir)])
    event(f"convert exit {code} after {what.split()[0]}")
    _assert_clean(code, out, err, {0, 1})
    assert _snapshot(folder) == before, what
    assert (code == 0) == out_dir.is_dir(), what
    assert not _leftovers(root), what


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """The command line on an argument list (hypothesis draws lists)."""
    return _run_cli(capsys, *argv)
