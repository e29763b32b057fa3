"""`BackgroundServer` never outlives the Python that started it, and "ready" means ours.

Real processes only: a notebook's kernel is played by a Python process that starts the server
the way notebook 11 does, and then ends (normally, on an error, or killed as a kernel restart
kills it). The server and its engine must end with it, and the port must come free. And a
server started on a port where another one answers must not call that one its own.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
from serve_process import wait_ended

from llama2_colab import UserFacingError
from llama2_colab.serve import EngineProcess, build_launch, free_port

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


class _Answers(http.server.BaseHTTPRequestHandler):
    """Another program's server: answers /v1/models as an OpenAI-compatible server does."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b'{"object": "list", "data": [{"id": "tiny", "object": "model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_another_server_answering_on_the_port_is_not_taken_for_ours(tmp_path):
    # Two serves started together both find the port free; the second engine cannot bind,
    # and until it says so the first one answers /v1/models. Ready must not be said for it.
    port = free_port()
    launch = build_launch("tiny", "127.0.0.1", port, tmp_path, say=lambda _: None)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Answers)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    engine = EngineProcess(launch)
    try:
        with pytest.raises(UserFacingError, match=f"Cannot serve on 127.0.0.1:{port}"):
            engine.wait_ready(timeout=300)
    finally:
        engine.stop()
        other.shutdown()
        other.server_close()
