"""A real `python -m llama2_colab serve` process on 127.0.0.1 and a free port, for tests.

No mock anywhere: the server is the command a user runs (`BackgroundServer` starts it in a
process group of its own and stops it with SIGINT to that group), answering over HTTP.

- `running_server(model="tiny", args=(), env=None)`: a context manager that yields the
  `BackgroundServer` once its "Ready" line is out (`.base_url`, `.model`, `.process`, `.log()`),
  and stops it on exit, checking that nothing it started is left running.
- `tiny_server`: a module-scoped fixture with one such server for a whole test module; conftest.py
  makes it available to every test module.
- `server_processes(server)`: the serve command and every process under it (its engine).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import psutil
import pytest

if TYPE_CHECKING:
    from llama2_colab.background_server import BackgroundServer

__all__ = [
    "READY_TIMEOUT_S",
    "ended",
    "running_server",
    "server_processes",
    "tiny_server",
    "wait_ended",
]

# Startup on the 2-core CPU machine takes about 10 s; a busy machine takes longer.
READY_TIMEOUT_S = 300.0


def server_processes(server: BackgroundServer) -> list[psutil.Process]:
    """The serve command's process and all its descendants (the engine), while they run."""
    try:
        root = psutil.Process(server.process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def ended(process: psutil.Process) -> bool:
    """True once process has exited (a zombie no one has reaped yet has exited too)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ended(processes: list[psutil.Process], timeout: float = 60.0) -> list[psutil.Process]:
    """Wait until processes have all exited; kill and return those still running at timeout."""
    deadline = time.monotonic() + timeout
    while not all(ended(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in processes if not ended(p)]
    for process in left:  # not left serving after a test, whatever it found
        process.kill()
    return left


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """This process's environment with env added, for the server started inside the block."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def running_server(
    model: str | None = "tiny", args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[BackgroundServer]:
    """Start the serve command, wait until it is ready, stop it on exit (nothing left running)."""
    from llama2_colab.background_server import BackgroundServer  # imports transformers

    with _environment(env):
        server = BackgroundServer(model=model, args=args)
    started: list[psutil.Process] = []
    try:
        server.wait_ready(timeout=READY_TIMEOUT_S)
        started = server_processes(server)
        yield server
    finally:
        server.stop()
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running after stop(): {alive}\n{server.log()[-3000:]}"


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[BackgroundServer]:
    """One server of the offline tiny Llama 2 for a test module."""
    with running_server("tiny") as server:
        yield server
