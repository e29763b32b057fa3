"""`BackgroundServer`: `python -m llama2_colab serve` run from a notebook, and never left behind.

A notebook starts the server, calls it, and stops it in its last cell. A learner who restarts
the kernel first, or whose script ends on an error, must not keep a server, a model in memory
and a port for good: the server stops when this Python process ends, whichever way it ends.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from .engine_commands import DEFAULT_HOST, served_name
from .errors import UserFacingError
from .serve import READY_TIMEOUT_S, client_host, die_with_this_process, free_port

__all__ = ["BackgroundServer"]

_READY = re.compile(r'^Ready in ([\d.]+) s: (\S+) serves "([^"]+)"', re.MULTILINE)
_LOG_PREFIX = "llama2-serve-"
_LOG_NAME = re.compile(rf"^{_LOG_PREFIX}(\d+)-.*\.log$")


def _alive(pid: int) -> bool:
    """True if a process pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's: it exists
        return True
    return True


def _sweep_orphan_logs(folder: Path) -> None:
    """Remove logs left by a Python process that was killed (a kernel restart runs no cleanup)."""
    for path in folder.glob(f"{_LOG_PREFIX}*.log"):
        owner = _LOG_NAME.match(path.name)
        if owner and not _alive(int(owner[1])):
            path.unlink(missing_ok=True)


def _new_log() -> Path:
    """A log file named after this process, so a later one can tell it was orphaned."""
    folder = Path(tempfile.gettempdir())
    _sweep_orphan_logs(folder)
    handle, path = tempfile.mkstemp(prefix=f"{_LOG_PREFIX}{os.getpid()}-", suffix=".log")
    os.close(handle)
    return Path(path)


def _stop_group(process: subprocess.Popen, timeout: float) -> int | None:
    """SIGINT to the server's process group, then SIGTERM, SIGKILL; return its status."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return process.poll()


class BackgroundServer:
    """`python -m llama2_colab serve` running in the background; `stop()` ends it, engine too.

    It runs in a process group of its own, and `stop()` sends SIGINT to that group: the serve
    command and its engine stop together, so no server is left running. It also stops when this
    Python process ends: at exit, and on Linux when the process is killed (a kernel restart),
    since the server then gets SIGTERM. Everything it prints goes to a log file (`log()`),
    removed with this object unless you name it (`log_path`).
    """

    def __init__(
        self,
        model: str | None = "tiny",
        host: str = DEFAULT_HOST,
        port: int | None = None,
        args: Sequence[str] = (),
        log_path: str | os.PathLike | None = None,
    ):
        self.port = port or free_port(host)
        self.base_url = f"http://{client_host(host)}:{self.port}/v1"
        self.model = served_name(model) if model else ""
        self.log_path = Path(log_path) if log_path is not None else _new_log()
        if log_path is None:
            weakref.finalize(self, self.log_path.unlink, missing_ok=True)  # gone with this object
        command = [sys.executable, "-m", "llama2_colab", "serve", "--host", host]
        command += ["--port", str(self.port), *(["--model", model] if model else []), *args]
        self.startup_s = 0.0
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_this_process(),
            )
        atexit.register(_stop_group, self.process, 5.0)  # a script's end, an error's too

    def log(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait for the server's "Ready" line; return its startup seconds, or raise why not."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            found = _READY.search(self.log())
            if found:
                self.startup_s, self.base_url, self.model = float(found[1]), found[2], found[3]
                return self.startup_s
            if self.process.poll() is not None:
                lines = self.log().strip().splitlines()
                raise UserFacingError(
                    "The server stopped before it was ready:\n" + "\n".join(lines[-12:]),
                    "Read the lines above (the last ones say what to do).",
                )
            time.sleep(0.25)
        raise UserFacingError(f"The server was not ready within {timeout:.0f} s.", self.log())

    def stop(self, timeout: float = 20.0) -> int | None:
        """Send SIGINT to the server's process group (then SIGTERM, SIGKILL); return its status."""
        return _stop_group(self.process, timeout)

    def __enter__(self) -> BackgroundServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
