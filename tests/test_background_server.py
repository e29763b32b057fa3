"""`BackgroundServer` never outlives the Python that started it.

Real processes only: a notebook's kernel is played by a Python process that starts the server
the way notebook 11 does, and then ends (normally, on an error, or killed as a kernel restart
kills it). The server and its engine must end with it, and the port must come free. (That "Ready"
means our engine, not another server on the port: tests/test_serve.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from serve_process import wait_ended

KERNEL = """
import sys
from llama2_colab import BackgroundServer
server = BackgroundServer("tiny")
server.wait_ready(300)
print(server.process.pid, server.port, server.log_path, flush=True)
{ending}
"""
ENDINGS = {
    "the script ends": "pass",
    "the script ends on an error": "raise RuntimeError('a failing cell')",
    "the kernel is killed (a restart)": "import time; time.sleep(600)",
}
TEXT = {"capture_output": True, "text": True}


def _port_free(port: int) -> bool:
    """True if a new server could listen on port now (as servers do, past TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kill case needs Linux")
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_the_server_ends_with_the_python_that_started_it(ending):
    script = KERNEL.format(ending=ENDINGS[ending])
    kernel = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pid, port, log = kernel.stdout.readline().split()
    serve = psutil.Process(int(pid))
    started = [serve, *serve.children(recursive=True)]
    assert len(started) >= 2  # serve and its engine
    if ending.startswith("the kernel is killed"):
        kernel.kill()  # SIGKILL: no cleanup of its own runs
    kernel.wait(60)
    left = wait_ended(started)
    assert not left, f"still running after '{ending}': {left}"
    assert _port_free(int(port))
    if not ending.startswith("the kernel is killed"):
        assert not Path(log).exists()  # its log went with it


def test_a_log_left_by_a_killed_kernel_is_removed_by_the_next_server():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    left = Path(tempfile.gettempdir()) / f"llama2-serve-{ended.stdout.strip()}-orphan.log"
    left.write_text("a kernel restarted while its server ran")
    mine = Path(tempfile.gettempdir()) / f"llama2-serve-{os.getpid()}-mine.log"
    mine.write_text("this process is alive")
    try:
        start_and_stop = "from llama2_colab import BackgroundServer; BackgroundServer().stop()"
        run = subprocess.run([sys.executable, "-c", start_and_stop], timeout=120, **TEXT)
        assert run.returncode == 0, run.stderr[-2000:]
        assert not left.exists() and mine.exists()
    finally:
        left.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)
