"""Real servers on 127.0.0.1 for the endpoint tests: no mock of the server anywhere.

- `start_server(model_dir, port, log)` is the one step that says which OpenAI-compatible server
  runs: `python -m llama2_colab serve` on the tiny model's folder (the project's own command, on
  `transformers serve`, with the chat template that gives Meta's reference ids). It runs in its
  own process group, since the command starts the engine as a child process.
- `run_server(model_dir)` starts it on a free port, waits until `/v1/models` answers, and gives
  a `RunningServer` (its URL, the model name to ask for, `stop()`, `kill()`, `pause()`,
  `resume()`, each for the whole group).
- `silent_server()` is a TCP server that accepts connections and never answers: a hung server.
- `scripted_server(answer)` is an HTTP server whose every answer the test writes (`reply_with`,
  `start_event_stream`, `send_event`, `chunk`): a server that misbehaves (a wrong URL's 404, an
  error page, a key quoted back, garbage in the stream, a redirect, a dropped connection).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 180  # a cold start on a busy 2-core machine; it is usually 5-10 s


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: Path, port: int, log) -> tuple[subprocess.Popen, str]:
    """Start the OpenAI-compatible server on model_dir; return (process, model name to ask for)."""
    from llama2_colab.engine_commands import served_name

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    command = [sys.executable, "-m", "llama2_colab", "serve", "--model", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return process, served_name(str(model_dir))


@dataclass
class RunningServer:
    """A server process started by `run_server`, and how to reach it."""

    process: subprocess.Popen
    url: str  # the OpenAI base URL, ending in /v1
    model: str  # the model name the server answers to
    log_path: Path

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _signal(self, signum: int) -> None:
        """Send signum to the server's whole process group (the command and its engine)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): a request waits for its reply until resume()."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): its open streams break off mid-reply."""
        self._signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        """Stop the server as Ctrl-C does (SIGINT to the group) and wait for it to exit."""
        if self.process.poll() is None:
            self.resume()
            self._signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def run_server(model_dir: Path) -> RunningServer:
    """Start the server on a free port and return it once /v1/models answers."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="endpoint-server-")) / "server.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process, model = start_server(model_dir, port, log)
    server = RunningServer(process, f"http://127.0.0.1:{port}/v1", model, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/models", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"The server did not answer within {READY_TIMEOUT_S} s:\n{server.log()}")


@dataclass
class SilentServer:
    """A server that reads requests and never answers: its URL, and whether a request came."""

    url: str
    requested: threading.Event  # set once a request has arrived


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    """A TCP server that accepts every connection, reads the request, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)  # so the accepting thread sees `done` soon
    server = SilentServer(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", threading.Event())
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            held.append(connection)  # kept open, and never written to
            connection.settimeout(10)
            with contextlib.suppress(OSError):
                if connection.recv(65536):
                    server.requested.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        done.set()
        thread.join(15)
        listener.close()
        for connection in held:
            connection.close()


@dataclass
class ScriptedServer:
    """A real HTTP server whose answers a test writes: its URL and the requests it got."""

    url: str  # the base URL, ending in /v1
    requests: list  # (method, path, headers) of every request, in order


@contextlib.contextmanager
def scripted_server(answer) -> Iterator[ScriptedServer]:
    """An HTTP server on 127.0.0.1 that answers every request with `answer(handler)`.

    `answer` gets the request's `http.server.BaseHTTPRequestHandler` (its `path`, `headers`,
    `body`, `wfile`) and writes the reply itself: an error page, a stream, garbage, nothing. It
    is how a server that misbehaves is played: what the client does with it is what is tested.
    Each reply closes its connection (HTTP/1.0).
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    server = ScriptedServer("", [])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.body = b""
            server.requests.append(("GET", self.path, dict(self.headers)))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client left
                answer(self)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            server.requests.append(("POST", self.path, dict(self.headers)))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client left
                answer(self)

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    server.url = f"http://127.0.0.1:{http.server_port}/v1"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()
        thread.join(15)


def reply_with(handler, status: int, body: str, content_type: str = "application/json") -> None:
    """Write one whole HTTP reply (status, content type, body) to a scripted server's request."""
    data = body.encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def start_event_stream(handler) -> None:
    """Begin a streamed reply (status 200, text/event-stream); events follow, then a close."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()


def send_event(handler, data: str) -> None:
    """Write one server-sent event (`data: ...`) and flush it."""
    handler.wfile.write(f"data: {data}\n\n".encode())
    handler.wfile.flush()


def chunk(text: str = "", finish: str | None = None) -> str:
    """One chat completion chunk as JSON: a piece of text, and the finish reason if any."""
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [choice]})
