"""One boundary for faults of the machine: each caused for real, each named, nothing left behind.

The faults are caused, not imitated: a file-size limit (`RLIMIT_FSIZE` with SIGXFSZ ignored, so
a write fails with EFBIG, as on a full disk, and no root is needed), stdout on /dev/full, a
read-only mount (in a user namespace, where the kernel allows one), a folder another user owns,
symbolic link loops, names longer than a file system takes, a HOME that does not exist, an
ASCII console. safetensors, tokenizers and Python report the same fault in different types;
`faults.describe_fault` must name each the same way, and nothing half-written may stay behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_convert import make_params, write_meta_folder

from llama2_colab.errors import UserFacingError
from llama2_colab.faults import describe_fault, fault_errno

GUARD_S = 300


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (folders too) and a digest of each file's bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


# Root may write anywhere; in a user namespace of its own it is an ordinary owner, whom the
# permission bits bind. Unprivileged users need no namespace.
UNPRIVILEGED = ["unshare", "-U"] if os.geteuid() == 0 else []


def _run(argv: list[str], cwd: Path, fsize: int | None = None, user: bool = False, **env):
    """Run the CLI in a fresh process: with a file-size limit, or bound by permission bits."""

    def limits() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [*(UNPRIVILEGED if user else []), sys.executable, "-m", "llama2_colab", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        preexec_fn=limits,
        timeout=GUARD_S,
    )


# --- the same fault, from every library, in the same words ------------------------------------


def _loop(tmp_path: Path) -> Path:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return loop


def _fault(kind: str, library: str, tmp_path: Path) -> BaseException:
    """Cause fault `kind` for real through `library`; return what it raised."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models

    where = {"loop": _loop(tmp_path) / "x", "long": tmp_path / ("x" * 300)}[kind]
    calls = {
        "python": lambda: open(where, "w"),  # noqa: SIM115 - it fails before anything opens
        "safetensors": lambda: save_file({"a": torch.zeros(2)}, str(where)),
        "tokenizers": lambda: Tokenizer(models.BPE()).save(str(where)),
    }
    try:
        calls[library]()
    except Exception as err:  # noqa: BLE001 - the fault is what this returns
        return err
    raise AssertionError(f"{library} did not fail writing {where}")


@pytest.mark.parametrize("library", ["python", "safetensors", "tokenizers"])
@pytest.mark.parametrize(
    ("kind", "code", "words"),
    [
        ("loop", errno.ELOOP, "a symbolic link loops back on itself"),
        ("long", errno.ENAMETOOLONG, "name is too long for the file system"),
    ],
)
def test_a_fault_is_named_the_same_whichever_library_raised_it(
    tmp_path, library, kind, code, words
):
    err = _fault(kind, library, tmp_path)
    assert fault_errno(err) == code, repr(err)
    found = describe_fault(err, "Cannot write x")
    assert found is not None and found.what.startswith("Cannot write x: ") and words in found.what
    assert found.todo


def test_what_is_no_fault_of_the_machine_stays_a_bug():
    assert describe_fault(ValueError("a bug")) is None
    assert describe_fault(KeyError("layers.0")) is None


def test_resolving_a_link_loop_is_named(tmp_path):
    try:
        _loop(tmp_path).resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError on Python 3.11 and 3.12
        assert "symbolic link loops" in describe_fault(err, "x").what


# --- disk full, without root: a file-size limit -----------------------------------------------


def _user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes\n")


def test_tiny_on_a_full_disk_says_so_and_leaves_nothing(tmp_path):
    _user_files(tmp_path)
    before = _snapshot(tmp_path)
    run = _run(["tiny", "tiny-llama-2"], tmp_path, fsize=1 << 20)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Cannot write the tiny model to 'tiny-llama-2'" in run.stderr
    assert "a file grew past the largest size allowed here" in run.stderr
    assert "What to do:" in run.stderr and "Traceback" not in run.stderr
    assert _snapshot(tmp_path) == before  # no half model, no work folder, your notes untouched


def test_the_tiny_cache_on_a_full_disk_says_so_and_leaves_nothing(tmp_path):
    cache = tmp_path / "cache"
    _user_files(cache)
    before = _snapshot(tmp_path)
    run = _run(["plan", "tiny"], tmp_path, fsize=1 << 20, LLAMA2_COLAB_CACHE=str(cache))
    assert run.returncode == 1, run.stderr[-2000:]
    assert "for the tiny model's cache: a file grew past" in run.stderr
    assert "LLAMA2_COLAB_CACHE" in run.stderr and "Traceback" not in run.stderr
    assert _snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def meta_folder(tmp_path_factory):
    folder, _ = write_meta_folder(tmp_path_factory.mktemp("meta"), make_params(2), 1)
    return folder


@pytest.mark.parametrize("stage", ["tokenizer", "weights"])
def test_convert_on_a_full_disk_keeps_your_earlier_output(meta_folder, tmp_path, stage):
    out = tmp_path / "hf"
    ok = _run(["convert", str(meta_folder), str(out), "--dtype", "float32"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    weights = sizes.pop("model.safetensors")
    # A limit below the first file written (the tokenizer), or between the rest and the weights.
    limit = 1024 if stage == "tokenizer" else max(sizes.values()) + 1
    assert sizes["tokenizer.json"] > 1024 and weights > limit
    before = _snapshot(tmp_path)
    run = _run(["convert", str(meta_folder), str(out), "--dtype", "float32"], tmp_path, limit)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"Cannot write the converted model to {out}" in run.stderr
    assert "a file grew past the largest size allowed" in run.stderr
    assert "Nothing half-written was left" in run.stderr and "Traceback" not in run.stderr
    assert _snapshot(tmp_path) == before  # the earlier conversion whole, no work folder left


def test_output_to_a_full_disk_is_named(tmp_path):
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "llama2_colab", "doctor"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=GUARD_S,
        )
    assert run.returncode == 1
    assert "Cannot write the output to stdout: the disk is full" in run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr


# --- a read-only disk is named as read-only ---------------------------------------------------


def _can_mount(options: str) -> bool:
    """True if this machine lets a user mount a tmpfs with options in a user namespace."""
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _on_read_only_disk(ro: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run `python -m llama2_colab ARGS` with a read-only tmpfs mounted on ro (a user namespace)."""
    ro.mkdir()
    script = f"mount -t tmpfs -o ro tmpfs {ro} && exec {sys.executable} -m llama2_colab "
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script + " ".join(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        timeout=GUARD_S,
    )


@pytest.mark.skipif(not _can_mount("ro"), reason="no user namespaces to mount in")
@pytest.mark.parametrize("command", ["tiny", "convert"])
def test_a_read_only_disk_is_named_read_only_not_full(meta_folder, tmp_path, command):
    ro = tmp_path / "ro"
    args = (
        ["tiny", f"{ro}/tiny"] if command == "tiny" else ["convert", str(meta_folder), f"{ro}/hf"]
    )
    run = _on_read_only_disk(ro, args, {})
    assert run.returncode == 1, run.stderr[-2000:]
    assert "read-only file system" in run.stderr and "disk is full" not in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(not _can_mount("ro"), reason="no user namespaces to mount in")
def test_serve_names_a_read_only_cache_as_the_cache_setting(tmp_path):
    ro = tmp_path / "ro"
    args = ["serve", "--model", "tiny", "--port", str(_free_port())]
    run = _on_read_only_disk(ro, args, {"LLAMA2_COLAB_CACHE": f"{ro}/cache"})
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"Cannot make the serving folder under '{ro}/cache/serve'" in run.stderr
    assert "read-only file system" in run.stderr and "LLAMA2_COLAB_CACHE" in run.stderr
    assert "Traceback" not in run.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- permission denied, as a user who is not root ---------------------------------------------


def _permissions_bind() -> bool:
    if not UNPRIVILEGED:
        return True
    try:
        probe = subprocess.run([*UNPRIVILEGED, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _permissions_bind(), reason="root, and no user namespace to drop it in")
def test_a_folder_you_may_not_write_to_is_named(tmp_path):
    locked = tmp_path / "locked"
    _user_files(locked)
    locked.chmod(0o555)  # yours, without write permission
    try:
        before = _snapshot(tmp_path)
        run = _run(["tiny", str(locked / "tiny")], tmp_path, user=True)
    finally:
        locked.chmod(0o755)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"Cannot write the tiny model to '{locked / 'tiny'}': permission denied" in run.stderr
    assert "Traceback" not in run.stderr and _snapshot(tmp_path) == before


@pytest.mark.skipif(not _permissions_bind(), reason="root, and no user namespace to drop it in")
def test_a_shard_you_may_not_read_is_named(meta_folder, tmp_path):
    folder = tmp_path / meta_folder.name
    shutil.copytree(meta_folder, folder)
    shutil.copy(meta_folder.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    (folder / "consolidated.00.pth").chmod(0)
    run = _run(["convert", str(folder), str(tmp_path / "hf")], tmp_path, user=True)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "consolidated.00.pth" in run.stderr and "permission denied" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "hf").exists()


# --- symbolic link loops, names too long, no home, an ASCII console --------------------------


def test_convert_names_a_shard_that_loops(meta_folder, tmp_path, capsys):
    folder = tmp_path / meta_folder.name
    shutil.copytree(meta_folder, folder)
    shutil.copy(meta_folder.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    shard = folder / "consolidated.00.pth"
    shard.unlink()
    shard.symlink_to(shard)
    code, out, err = run_cli(capsys, "convert", str(folder), str(tmp_path / "hf"))
    assert code == 1 and "symbolic link loops back on itself" in err, err
    assert "Traceback" not in err and not (tmp_path / "hf").exists()


def test_convert_names_an_out_dir_that_loops(meta_folder, tmp_path, capsys):
    out = _loop(tmp_path)
    code, _, err = run_cli(capsys, "convert", str(meta_folder), str(out))
    assert code == 1 and "symbolic link to nothing" in err and "Traceback" not in err
    assert out.is_symlink()  # left as it was


@pytest.mark.parametrize("command", [["plan"], ["demo", "--model"], ["tiny"]])
def test_a_folder_that_loops_is_named(tmp_path, capsys, command):
    loop = _loop(tmp_path)
    code, _, err = run_cli(capsys, *command, str(loop))
    assert code == 1 and "Traceback" not in err, err
    assert "symbolic link" in err or "loops" in err


def test_a_5000_character_model_name_is_named_briefly(capsys):
    code, _, err = run_cli(capsys, "plan", "a" * 5000)
    assert code == 1 and "The model name is 5,000 characters long" in err
    assert "Traceback" not in err and len(err) < 1500  # the name is not printed whole


def test_an_out_dir_name_too_long_is_named(meta_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", str(meta_folder), str(tmp_path / ("o" * 300)))
    assert code == 1 and "name is too long for the file system" in err and "Traceback" not in err


@pytest.mark.parametrize(("command", "code"), [(["doctor"], 0), (["demo"], 1), (["bench"], 1)])
def test_a_home_that_does_not_exist(tmp_path, monkeypatch, capsys, command, code):
    home = tmp_path / "no" / "such" / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLAMA2_COLAB_CACHE", raising=False)
    got, out, err = run_cli(capsys, *command)
    assert got == code and "Traceback" not in err, err
    if code:
        assert f"Your home folder '{home}' (HOME) does not exist" in err
        assert "LLAMA2_COLAB_CACHE" in err
    else:
        assert "Disk    :" in out
    assert not (tmp_path / "no").exists()  # no home was made up


NO_SUCH_USER = "no-such-user-l2c"


@pytest.mark.parametrize(
    "argv",
    [
        ["tiny", f"~{NO_SUCH_USER}/tiny"],
        ["plan", f"~{NO_SUCH_USER}/model"],
        ["demo", "--model", f"~{NO_SUCH_USER}/model"],
        ["bench", "--model", f"~{NO_SUCH_USER}/model"],
        ["convert", "META", f"~{NO_SUCH_USER}/hf"],
        ["convert", f"~{NO_SUCH_USER}/llama-2-7b", "OUT"],
        ["demo", "--model", "tiny", "CACHE"],  # LLAMA2_COLAB_CACHE=~no-such-user-l2c/cache
    ],
)
def test_a_path_in_the_home_of_a_user_who_does_not_exist(
    meta_folder, tmp_path, monkeypatch, capsys, argv
):
    if argv[-1] == "CACHE":
        monkeypatch.setenv("LLAMA2_COLAB_CACHE", f"~{NO_SUCH_USER}/cache")
        argv = argv[:-1]
    argv = [{"META": str(meta_folder), "OUT": str(tmp_path / "hf")}.get(a, a) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "Traceback" not in err, err
    assert f"starts with ~{NO_SUCH_USER}" in err and "no such user" in err
    assert "start it with ~/ for your own home folder" in err
    assert list(tmp_path.iterdir()) == []


def test_pathlibs_own_error_for_an_unknown_user_is_named():
    # Code that expands a path itself (pathlib) meets the same fault: the boundary names it.
    try:
        Path(f"~{NO_SUCH_USER}/x").expanduser()
    except RuntimeError as err:
        found = describe_fault(err, "Cannot plan")
    assert found is not None and "a user this machine does not have" in found.what


def test_an_empty_home_is_not_the_root_folder(monkeypatch):
    import pwd

    from llama2_colab.faults import home_folder

    monkeypatch.setenv("HOME", "")  # Python alone would expand "~" to "/"
    expected = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if expected.is_dir():
        assert home_folder() == expected != Path("/")
    else:
        with pytest.raises(UserFacingError, match="does not exist"):
            home_folder()


def test_a_home_that_is_a_file_is_named_a_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "homefile"
    home.write_text("not a folder\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLAMA2_COLAB_CACHE", raising=False)
    code, _, err = run_cli(capsys, "demo", "--model", "tiny", "--max-new-tokens", "2")
    assert code == 1 and "Traceback" not in err, err
    assert f"Your home folder '{home}' (HOME) is a file, not a folder" in err
    assert home.read_text() == "not a folder\n"


def test_a_tilde_in_the_cache_setting_means_home(tmp_path, monkeypatch, tiny_dir):
    from llama2_colab.tiny import tiny_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLAMA2_COLAB_CACHE", "~/models/cache")
    monkeypatch.chdir(tmp_path)
    assert tiny_cache_dir().parent == tmp_path / "models" / "cache"
    assert not (tmp_path / "~").exists()


def test_an_ascii_console_shows_escapes_not_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "demo", "日本語", "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "ascii"},
        timeout=GUARD_S,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "You: \\u65e5\\u672c\\u8a9e" in run.stdout and "Traceback" not in run.stderr


def test_a_prompt_a_c_locale_could_not_decode_names_the_locale():
    # LANG=C without Python's UTF-8 mode: argv's Japanese arrives as lone surrogates.
    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "demo", "日本語", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LANG": "C", "LC_ALL": "C"}
        | {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
        timeout=GUARD_S,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "locale (ascii)" in run.stderr and "LANG=C.UTF-8" in run.stderr
    assert "lone surrogate" not in run.stderr and "Loaded in" not in run.stdout


@pytest.mark.parametrize(
    "argv",
    [["doctor"], ["tiny", "./t"], ["plan", "./model"], ["demo", "--model", "tiny"]],
)
def test_a_deleted_current_folder_is_named(tmp_path, argv):
    gone = tmp_path / "gone"
    gone.mkdir()
    command = " ".join([sys.executable, "-m", "llama2_colab", *argv])
    run = subprocess.run(  # the shell goes into the folder, which is then removed under it
        ["sh", "-c", f"cd {gone} && rmdir {gone} && exec {command}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=GUARD_S,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "The current folder was deleted" in run.stderr and "cd ~" in run.stderr
    assert "FATAL" not in run.stderr and "Traceback" not in run.stderr


def test_a_closed_stdout_is_named_and_no_file_takes_its_place():
    # `doctor >&-`: Python starts with sys.stdout None. The next file opened must not get
    # descriptor 1, where a library writing to "stdout" would write into it.
    script = (
        "import os, sys\n"
        "from llama2_colab.cli import main\n"
        "code = main(['doctor'])\n"
        "sys.stderr.write(f'exit {code}, next file {os.open(os.devnull, os.O_RDONLY)}\\n')\n"
    )
    run = subprocess.run(
        ["sh", "-c", f'exec {sys.executable} -c "$0" >&-', script],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=GUARD_S,
    )
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "Cannot write the output: stdout is closed" in run.stderr
    found = re.search(r"exit (\d+), next file (\d+)", run.stderr)
    assert found and found[1] == "1" and found[2] not in ("0", "1", "2"), run.stderr


def test_a_closed_stdout_stops_a_command_before_it_works(tmp_path):
    # `tiny t >&-`: refused before the build, so no folder is made that nothing reported.
    run = subprocess.run(
        ["sh", "-c", f"exec {sys.executable} -m llama2_colab tiny t >&-"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=GUARD_S,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "stdout is closed" in run.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "code"), [(["demo", "--max-new-tokens", "4"], 141)])
def test_a_reader_that_goes_away_mid_stream_ends_the_command(argv, code):
    # `demo | head -0`: the reply has more to say, so it stops (as a shell reports SIGPIPE).
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama2_colab", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Loaded in" not in err


# --- what a fault is about, named as you would name it ----------------------------------------


def test_the_size_the_messages_give_for_the_tiny_model_is_measured(tiny_dir):
    from llama2_colab.tiny import _ROOM

    measured = sum(p.stat().st_size for p in tiny_dir.iterdir() if p.is_file())
    said = float(_ROOM.split("about ")[1].split(" MB")[0]) * 1e6
    assert measured <= said <= 1.2 * measured, (measured, _ROOM)  # never less than it takes


def test_a_link_that_loops_on_the_way_is_named_a_loop_not_already_there(tmp_path, capsys):
    loop = _loop(tmp_path)
    code, _, err = run_cli(capsys, "tiny", str(loop / "x"))
    assert code == 1 and "a symbolic link loops back on itself" in err, err
    assert "already there" not in err and "Traceback" not in err


def test_a_path_over_the_limit_is_named_the_path_not_a_name(tmp_path, capsys):
    deep = tmp_path.joinpath(*["abcdefgh"] * 500) / "t"  # every name 8 bytes, the path 4,500+
    code, _, err = run_cli(capsys, "tiny", str(deep))
    assert code == 1 and "the path is too long for the file system" in err, err
    assert "4,096 at most in all" in err and "255 bytes at most per name" not in err
    assert "characters):" in err and "Traceback" not in err  # the long path, shortened, then why


def test_an_out_dir_name_of_230_bytes_is_converted(meta_folder, tmp_path, capsys):
    # Legal (255 bytes at most), but convert's work folder beside it used to be too long.
    out = tmp_path / ("o" * 230)
    code, out_text, err = run_cli(capsys, "convert", str(meta_folder), str(out))
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and sorted(tmp_path.iterdir()) == [out]


def test_a_fault_inside_a_work_folder_names_your_folder(meta_folder, tmp_path):
    from llama2_colab.faults import describe_fault
    from llama2_colab.workdirs import work_folder

    with work_folder(tmp_path, "tiny-build") as work:
        err = OSError(errno.ENOSPC, "No space left on device", str(work / "model.safetensors"))
        found = describe_fault(err, "Cannot write the tiny model to 'elsewhere'")
    assert f"({tmp_path})" in found.what and ".tiny-build" not in found.what


@pytest.mark.skipif(not _can_mount("nr_inodes=8"), reason="no user namespaces to mount in")
def test_a_disk_out_of_file_entries_is_not_only_called_full(tmp_path):
    # Space to spare but 8 inodes: df -h shows room, so "the disk is full" alone misleads.
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=200m,nr_inodes=8 tmpfs {disk} && exec {sys.executable} -m "
        f"llama2_colab tiny {disk}/tiny"
    )
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=GUARD_S,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "no free file entries" in run.stderr and "df -i" in run.stderr
    assert ".tiny-build" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("command", ["tiny", "convert"])
def test_a_result_gets_the_permissions_your_umask_gives(meta_folder, tmp_path, command):
    # A work folder is private (0700) while it is filled; the result is not.
    out = tmp_path / "out"
    argv = ["tiny", str(out)] if command == "tiny" else ["convert", str(meta_folder), str(out)]
    run = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", sys.executable, "-m", "llama2_colab", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=GUARD_S,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.stat().st_mode & 0o777 == 0o750
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        p.name: 0o640 for p in out.iterdir()
    }


# --- what is read is a file: a device, a pipe, an unreadable or odd file is named -------------


def _meta_copy(meta_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / meta_folder.name
    shutil.copytree(meta_folder, folder)
    shutil.copy(meta_folder.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    return folder


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "fifo"])
def test_a_shard_that_is_a_device_or_a_pipe_is_named_not_read(meta_folder, tmp_path, device):
    folder = _meta_copy(meta_folder, tmp_path)
    shard = folder / "consolidated.00.pth"
    shard.unlink()
    if device == "fifo":
        os.mkfifo(shard)  # read, it would wait for a writer forever
    else:
        shard.symlink_to(device)  # read, it never ends: the memory limit stops a regression

    def memory_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    run = subprocess.run(
        [sys.executable, "-m", "llama2_colab", "convert", str(folder), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=memory_limit,
        timeout=GUARD_S,
    )
    kind = "a named pipe (FIFO)" if device == "fifo" else f"(a link to {device}) is a device"
    assert run.returncode == 1 and kind in run.stderr, run.stderr[-2000:]
    assert "not a file" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.skipif(not _permissions_bind(), reason="root, and no user namespace to drop it in")
def test_a_params_json_you_may_not_read_is_named_unreadable_not_invalid(meta_folder, tmp_path):
    folder = _meta_copy(meta_folder, tmp_path)
    (folder / "params.json").chmod(0)
    run = _run(["convert", str(folder), str(tmp_path / "hf")], tmp_path, user=True)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"Cannot read {folder / 'params.json'}: Permission denied" in run.stderr
    assert "not valid JSON" not in run.stderr and "Traceback" not in run.stderr


class _Payload:
    """A pickled object whose unpickling would run code: torch's weights-only load refuses it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_library_message_is_quoted_without_escapes_and_cut_at_a_word(
    meta_folder, tmp_path, capsys
):
    import torch

    folder = _meta_copy(meta_folder, tmp_path)
    torch.save({"x": _Payload()}, folder / "consolidated.00.pth")
    code, out, err = run_cli(capsys, "convert", str(folder), str(tmp_path / "hf"))
    assert code == 1 and "could not be read (UnpicklingError: Weights only load failed" in err
    assert "this must never run" not in out + err
    assert "\x1b" not in err and "[1m" not in err  # torch colours its advice for a terminal
    try:
        torch.load(folder / "consolidated.00.pth", weights_only=True)
    except Exception as failed:  # noqa: BLE001 - its message, as torch words it
        whole = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(failed)).split())
    quoted = err.split("could not be read (UnpicklingError: ")[1].split(").\n")[0]
    assert quoted.endswith(" ...") and whole.startswith(quoted[:-4])
    assert whole[len(quoted) - 4] in " ,;:("  # cut where a word ends, not inside one
