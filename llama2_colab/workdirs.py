"""Work folders beside a result, named so that a killed run's leftovers are found and removed.

`convert` and `tiny` build their result in a hidden work folder beside it and rename it into
place, so an interrupted run never leaves half a result where the result belongs. A run that is
killed (out of memory, Ctrl-C twice, a closed notebook) leaves its work folder behind, though,
and those hold up to gigabytes. So each work folder's name carries the host and the process id,
`.<stem>-<host>-<pid>-<random>` (the host named with its pid namespace), and the next run
removes those of a process on this host that is gone. One of a live process, or of another host
(a shared Drive folder, another container on a shared disk), is never touched, and neither is
anything else.

Around that, four guarantees every writer gets from here rather than by itself:

- a result's name may take the whole 255 bytes a file system allows: a work folder's stem is
  cut and completed by a digest when `.<stem>-<host>-<pid>-<random>` would be longer;
- `work_folder` removes its folder when the block ends, and on SIGTERM or SIGHUP (`kill PID`,
  a closed terminal) as on Ctrl-C, before the process ends with that signal's usual status;
- `claim` holds an advisory lock on the folder a result is renamed into for the time of the
  final move, so two commands writing the same new folder at once (`convert` and `tiny`) never
  both say "Wrote": the second sees the first's result under the claim, and leaves it;
- `open_to_umask` gives a result the permissions your umask gives a new file (a work folder
  is private, 0700, while it is being filled).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:  # Unix; elsewhere the claim is not taken (the final rename is still atomic)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "claim",
    "is_work_folder",
    "make_work_folder",
    "open_to_umask",
    "outside_work",
    "remove_stale_work",
    "work_folder",
    "work_prefix",
]

MAX_NAME_BYTES = 255  # one name on Linux, macOS and Windows file systems
# What a work folder's name adds to its stem: ".", "-<host>.<pid namespace>-<pid>-", and the
# 8 random characters of mkdtemp.
_RANDOM_CHARS = 8


def _host() -> str:
    """This machine's name and process namespace, as they may appear in a file name.

    A process id means something only in its own pid namespace: containers that share a disk
    (and sometimes a host name) each count their own, so the namespace is part of the name.
    """
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    try:
        return f"{name}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the host name alone
        return name


def _short(stem: str) -> str:
    """The stem as work folders carry it: cut, with a digest of the whole, if it is too long.

    A result may be named with all 255 bytes a name may have; its work folder, which adds the
    host, the process and a random part, must still be a legal name.
    """
    room = MAX_NAME_BYTES - len(os.fsencode(f".-{_host()}-{2**22}-")) - _RANDOM_CHARS
    raw = os.fsencode(stem)
    if len(raw) <= room:
        return stem
    cut = stem[: room - 13]
    while len(os.fsencode(cut)) > room - 13:  # whole characters only
        cut = cut[:-1]
    return f"{cut}~{hashlib.sha256(raw).hexdigest()[:12]}"


def work_prefix(stem: str) -> str:
    """Return the name of this run's work folders up to the random part: `.<stem>-<host>-<pid>-`."""
    return f".{_short(stem)}-{_host()}-{os.getpid()}-"


def make_work_folder(parent: str | os.PathLike, stem: str) -> Path:
    """Create and return a new, empty work folder of this run in parent."""
    return Path(tempfile.mkdtemp(prefix=work_prefix(stem), dir=parent))


def is_work_folder(name: str, stem: str) -> bool:
    """Return True if name is a work folder of `stem` (of any host, any process, any version)."""
    return name.startswith((f".{stem}-", f".{_short(stem)}-"))


def outside_work(path: str) -> str:
    """Return path, or the folder holding it if it lies in a work folder of this process.

    A fault inside a work folder is named by the folder you gave: the work folder is hidden,
    named by this run, and gone by the time you read the message.
    """
    mine = f"-{_host()}-{os.getpid()}-"
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.startswith(".") and mine in part:
            return str(Path(*parts[:i])) if i else "."
    return path


def _alive(pid: int) -> bool:
    """True if a process with this id runs on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_work(
    parent: str | os.PathLike, stem: str, what: str, log: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Delete work folders of `stem` in parent left by processes on this host that are gone.

    `what` names the run in the log line ("a conversion"); returns the names removed.
    """
    mine = f".{_short(stem)}-{_host()}-"
    removed = []
    try:
        found = list(Path(parent).glob(f"{glob.escape(mine)}*"))
    except OSError:
        return removed
    for work in found:
        pid = work.name.removeprefix(mine).split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(work, ignore_errors=True)
        if not work.exists():
            removed.append(work.name)
            log(f"Removed {work.name}, left by {what} that was interrupted")
    return removed


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a work folder existed (a BaseException, like Ctrl-C's)."""


_ENDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextmanager
def _cleanup_on_termination() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP unwind the stack (running `finally`) like Ctrl-C.

    Only where they would otherwise end the process at once (their default action, in the
    main thread): a handler someone else set (a notebook kernel's, `serve`'s) is left alone.
    When the block ends, the process ends with that signal, as it would have without the
    block, even if some library on the way swallowed the exception.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum, frame) -> None:
        received.append(signum)
        raise _Terminated(signum)

    taken = [s for s in _ENDING_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]
    for signum in taken:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum in taken:
            signal.signal(signum, signal.SIG_DFL)
        if received:  # the clean-up ran on the way here: now end as the signal asked
            os.kill(os.getpid(), received[0])


@contextmanager
def work_folder(parent: str | os.PathLike, stem: str) -> Iterator[Path]:
    """Yield a new work folder of this run in parent; it is removed when the block ends.

    Also when it ends by SIGTERM or SIGHUP (`kill PID`, a closed terminal), as by Ctrl-C: the
    folder is removed first, then the process ends with that signal. Only a SIGKILL (the
    out-of-memory killer) leaves it, for the next run's `remove_stale_work`.
    """
    with _cleanup_on_termination():
        before = _this_runs(parent, stem)
        try:  # a signal may come between mkdtemp and the assignment: find what it made
            yield make_work_folder(parent, stem)
        finally:
            for tmp in _this_runs(parent, stem) - before:
                shutil.rmtree(tmp, ignore_errors=True)


def _this_runs(parent: str | os.PathLike, stem: str) -> set[Path]:
    """This process's work folders of `stem` in parent (none if parent cannot be listed)."""
    try:
        return set(Path(parent).glob(f"{glob.escape(work_prefix(stem))}*"))
    except OSError:
        return set()


@contextmanager
def claim(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on folder (the one a result is renamed into) in the block.

    Every writer of this package (`tiny`, `convert`) takes it for its final move and checks the
    target again inside, so of two runs writing the same new folder at once, the second sees
    the first's result and leaves it. The lock is on the folder itself (no lock file is left
    behind) and ends with the block or the process. A file system without locks (some network
    disks) gives no claim; the rename is still atomic there.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _umask() -> int:
    """This process's umask (read by setting it, then setting it back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def open_to_umask(folder: str | os.PathLike) -> None:
    """Give folder, and everything in it, the permissions your umask gives new files.

    A work folder is made private (0700, `mkdtemp`) and some libraries write private files
    (0600); renamed into place as they are, a model on a shared machine or a team folder could
    be read by no one else, whatever your umask says.
    """
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    os.chmod(folder, 0o777 & ~mask)
