"""A stand-in for the Hugging Face Hub on 127.0.0.1, answering the way the Hub does.

It serves just enough of the Hub's HTTP API for huggingface_hub's real client: `auth-check`,
model info (`/api/models/{repo}[/revision/{rev}]`), the file tree, and file downloads under
`/{repo}/resolve/{rev}/{path}` with the headers the client relies on (`ETag`, `X-Repo-Commit`,
`Content-Length`, `Accept-Ranges`, 206 answers to `Range`). Access rules follow the Hub's:

- a gated repo: no token -> 401 `X-Error-Code: GatedRepo`; a token not granted -> 403 GatedRepo;
- a missing repo -> 404 (401 when anonymous) `X-Error-Code: RepoNotFound`;
- an unknown token -> 401 `X-Error-Message: Invalid credentials in Authorization header`;
- a repo marked `broken` -> 500.

`drop_after` makes the next full download of a file stop after that many bytes and close the
connection (a dropped download); the request log shows what the client asked for. The server
stores no token in its log.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FakeRepo", "FakeHub", "start_hub", "start_portal_server", "start_silent_server"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeRepo:
    """One repository: its files, whether it is gated, and who has been granted access."""

    files: dict[str, bytes] = field(default_factory=dict)
    gated: bool = False
    granted: set[str] = field(default_factory=set)
    broken: bool = False  # every request answers 500

    @classmethod
    def from_dir(cls, path: Path, **kwargs) -> FakeRepo:
        """A repo holding every file of a local directory (e.g. the tiny model)."""
        files = {
            str(p.relative_to(path)).replace("\\", "/"): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return cls(files=files, **kwargs)


@dataclass
class RequestRecord:
    """What a client asked for (no credentials: only whether it sent any)."""

    method: str
    path: str
    range: str | None
    authenticated: bool
    status: int


class FakeHub:
    """The server's state: repos, valid tokens, dropped downloads to stage, and a request log."""

    def __init__(self, tokens: set[str]):
        self.repos: dict[str, FakeRepo] = {}
        self.tokens = set(tokens)
        self.drop_after: dict[str, int] = {}  # path -> bytes to send before dropping, once
        self.log: list[RequestRecord] = []
        self.lock = threading.Lock()
        self.url = ""


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass made by start_hub

    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _record(self, status: int) -> None:
        with self.hub.lock:
            self.hub.log.append(
                RequestRecord(
                    self.command,
                    urlsplit(self.path).path,
                    self.headers.get("Range"),
                    self._token() is not None,
                    status,
                )
            )

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self._record(status)
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _check(self, repo_id: str) -> FakeRepo | None:
        """Apply the Hub's access rules; answer the error and return None if access is denied."""
        token = self._token()
        if token is not None and token not in self.hub.tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        if repo.broken:
            self._error(500, None, "Internal Error")
            return None
        if repo.gated and token is None:
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return None
        if repo.gated and token not in repo.granted:
            self._error(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.hub.url}/{repo_id} to ask for access.",
            )
            return None
        return repo

    # -- routes ----------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802
        self._route()

    def do_GET(self):  # noqa: N802
        self._route()

    def _route(self) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            repo = self._check(repo_id)
            if repo is None:
                return
            if rest == ["auth-check"]:
                self._send(200, b"{}")
            elif rest == [] or rest[:1] == ["revision"]:
                info = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": COMMIT,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": name} for name in repo.files],
                }
                self._send(200, json.dumps(info).encode())
            elif rest[:1] == ["tree"]:
                tree = [
                    {"type": "file", "oid": _etag(data)[:40], "size": len(data), "path": name}
                    for name, data in repo.files.items()
                ]
                self._send(200, json.dumps(tree).encode())
            else:
                self._error(404, None, "Not found")
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = "/".join(parts[:2])
            filename = "/".join(parts[4:])
            repo = self._check(repo_id)
            if repo is None:
                return
            if filename not in repo.files:
                self._error(404, "EntryNotFound", "Entry not found")
                return
            self._serve_file(repo.files[filename], f"{repo_id}/{filename}")
            return
        self._error(404, None, "Not found")

    def _serve_file(self, data: bytes, key: str) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{_etag(data)}"',
            "X-Repo-Commit": COMMIT,
            "Accept-Ranges": "bytes",
        }
        start = 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[6:].partition("-")
            start = int(first or 0)
            end = int(last) if last else len(data) - 1
            body = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status = 206
        else:
            body, status = data, 200
        headers["Content-Length"] = str(len(body))
        if self.command == "HEAD":
            self._send(status, b"", headers)
            return
        with self.hub.lock:
            cut = self.hub.drop_after.pop(key, None) if start == 0 else None
        if cut is None:
            self._send(status, body, headers)
            return
        # Promise the whole file, send part of it, then hang up: a dropped download.
        self._record(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def start_hub(tokens: set[str]) -> tuple[FakeHub, ThreadingHTTPServer, threading.Thread]:
    """Start the stand-in Hub on 127.0.0.1 (a free port) in a thread; return its parts."""
    hub = FakeHub(tokens)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return hub, server, thread


def start_silent_server() -> tuple[str, Callable[[], None]]:
    """Start a server on 127.0.0.1 that accepts every connection and never answers.

    Returns (its URL, a function that stops it). What a Hub behind a broken proxy or a dead
    load balancer looks like to a client: connected, then silence.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read from, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}", close


class _Portal(BaseHTTPRequestHandler):
    """A network login page: 200 and the same HTML to every request, whatever it asks."""

    PAGE = b"<html><body>Captive portal: please log in to use this network.</body></html>"

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.PAGE)

    do_GET = do_HEAD = do_POST = _answer  # noqa: N815

    def log_message(self, *args) -> None:
        pass


def start_portal_server() -> tuple[str, Callable[[], None]]:
    """Start a captive portal on 127.0.0.1 (200 text/html to everything); (its URL, stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://127.0.0.1:{server.server_address[1]}", close
