"""Work folders beside a result, named so that a killed run's leftovers are found and removed.

`convert` and `tiny` build their result in a hidden work folder beside it and rename it into
place, so an interrupted run never leaves half a result where the result belongs. A run that is
killed (out of memory, Ctrl-C twice, a closed notebook) leaves its work folder behind, though,
and those hold up to gigabytes. So each work folder's name carries the host and the process id,
`.<stem>-<host>-<pid>-<random>` (the host named with its pid namespace), and the next run
removes those of a process on this host that is gone. One of a live process, or of another host
(a shared Drive folder, another container on a shared disk), is never touched, and neither is
anything else.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["is_work_folder", "make_work_folder", "remove_stale_work", "work_prefix"]


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


def work_prefix(stem: str) -> str:
    """Return the name of this run's work folders up to the random part: `.<stem>-<host>-<pid>-`."""
    return f".{stem}-{_host()}-{os.getpid()}-"


def make_work_folder(parent: str | os.PathLike, stem: str) -> Path:
    """Create and return a new, empty work folder of this run in parent."""
    return Path(tempfile.mkdtemp(prefix=work_prefix(stem), dir=parent))


def is_work_folder(name: str, stem: str) -> bool:
    """Return True if name is a work folder of `stem` (of any host, any process, any version)."""
    return name.startswith(f".{stem}-")


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
    mine = f".{stem}-{_host()}-"
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
