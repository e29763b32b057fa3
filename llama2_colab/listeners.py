"""Which processes listen on a TCP port: so "the server answers" can mean "our server answers".

Two `serve` commands started together on one port both find it free; one engine binds it, the
other fails a moment later, and until then the first one's engine answers for both. Asking the
kernel which process owns the listening socket tells them apart. Linux only (`/proc`); elsewhere
the answer is "cannot tell" (None), and callers fall back to trusting the answer.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["family", "listening_pids"]

_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def _listening_inodes(port: int) -> set[str] | None:
    """The inodes of the sockets listening on port (IPv4, IPv6); None if /proc says nothing."""
    inodes: set[str] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes if readable else None


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets pid holds open (none if it is gone or not ours to read)."""
    found = set()
    try:
        for fd in (_PROC / str(pid) / "fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def listening_pids(port: int, candidates: set[int]) -> set[int] | None:
    """Which of candidates hold a socket listening on port; None if this system cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    return {pid for pid in candidates if _socket_inodes(pid) & inodes}


def family(pid: int) -> set[int]:
    """pid and all its descendants (an engine may listen from a child process); {pid} off Linux."""
    found, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for children in _PROC.glob(f"{parent}/task/*/children"):
            try:
                kids = [int(c) for c in children.read_text().split()]
            except (OSError, ValueError):
                continue
            todo += [k for k in kids if k not in found]
            found.update(kids)
    return found
