"""An OpenAI-compatible chat endpoint as a reply engine (the `reply.ReplyEngine` protocol).

`Endpoint(url, model, api_key=None)` talks to any server that speaks OpenAI's
`/v1/chat/completions` (`python -m llama2_colab serve`, `transformers serve`, vLLM, llama.cpp's
server) through the `openai` client, which Colab ships. The session sends the messages it kept
after fitting the context (counted here with Llama 2's own tokenizer, `vocab`), and the server
applies the chat template. Replies stream; Stop closes the HTTP stream, which is how a client
cancels a request (the server stops generating when it sees the connection close).

The API key is a secret like the Hugging Face token: it is shown only masked, in a repr and in
every error. A dead server, an HTTP error, a timeout or a stream that breaks off is an
`EndpointError` (a `UserFacingError`) saying what happened and what to do; the session's history
is untouched.
"""

from __future__ import annotations

import functools
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from .auth import mask_token
from .errors import UserFacingError, redact_secrets
from .generation import GenerationStats
from .reply import EngineReply, ReplyRequest
from .vocab import build_llama2_tokenizer

__all__ = ["Endpoint", "EndpointError", "LLAMA2_CONTEXT_WINDOW"]

LLAMA2_CONTEXT_WINDOW = 4096  # Llama 2's max_position_embeddings (the paper, section 2.2)
_PIP = "pip install 'openai>=2.54'  (or: pip install 'llama2-colab[serve]'; Colab has it)"
# Request fields the session sets itself: generate_kwargs must not send them again.
_SESSION_SETS = ("model", "messages", "stream", "max_tokens", "temperature", "top_p")


class EndpointError(UserFacingError):
    """The endpoint could not give a reply (down, refused, too slow, broke off); nothing changed."""


@functools.cache
def _llama2_tokenizer():
    """Llama 2's tokenizer, built once per process from the pieces the package ships."""
    return build_llama2_tokenizer()


def _import_openai():
    """The openai module, or an EndpointError with the pip command when it is missing."""
    try:
        import openai
    except ImportError:
        raise EndpointError(
            "Talking to an endpoint needs the openai package, which is not installed here.", _PIP
        ) from None
    return openai


def _check_url(url) -> str:
    """Return url with /v1 added when it names only a server; ValueError unless it is http(s)."""
    example = "such as http://127.0.0.1:8000/v1"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"The endpoint URL must be text {example}, not {url!r}.")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"The endpoint URL {url!r} is not an http(s) URL; give one {example}.")
    return url + "/v1" if parts.path in ("", "/") else url


class Endpoint:
    """An OpenAI-compatible chat endpoint: its URL, the model it serves, an optional API key.

    `timeout_s` bounds every wait on the server (connecting, the first token, each next piece);
    `context_window` is the served model's (4096 for Llama 2; the API does not say it).
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        context_window: int = LLAMA2_CONTEXT_WINDOW,
    ):
        self.url = _check_url(url)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                f"Name the model the endpoint serves (its /v1/models lists them), not {model!r}."
            )
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be the key as text, or None for a server without one.")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a number of seconds above 0, not {timeout_s!r}.")
        if isinstance(context_window, bool) or not isinstance(context_window, int):
            raise TypeError(
                f"context_window must be a whole number of tokens, not {context_window!r}."
            )
        if context_window < 2:
            raise ValueError(f"context_window={context_window} is too small; Llama 2 has 4096.")
        self.model = model.strip()
        self.timeout_s = float(timeout_s)
        self._context_window = context_window
        self._api_key = api_key.strip() if api_key else None
        openai = _import_openai()
        # No retries: a reply is never sent twice behind your back. "EMPTY" (vLLM's convention)
        # when there is no key, so an OPENAI_API_KEY in the environment never goes to this server.
        self._client = openai.OpenAI(
            base_url=self.url,
            api_key=self._api_key or "EMPTY",
            timeout=self.timeout_s,
            max_retries=0,
        )

    def __repr__(self) -> str:
        key = f", api_key={mask_token(self._api_key)!r}" if self._api_key else ""
        return self.redact(f"Endpoint(url={self.url!r}, model={self.model!r}{key})")

    @property
    def tokenizer(self):
        """Llama 2's tokenizer, which counts the context the way the server will."""
        return _llama2_tokenizer()

    def context_window(self) -> int:
        """Return the served model's context window (given, or Llama 2's 4096)."""
        return self._context_window

    def describe(self) -> str:
        """Return e.g. `tiny at http://127.0.0.1:8000/v1 (endpoint)`; the key never appears."""
        return self.redact(f"{self.model} at {self.url} (endpoint)")

    def redact(self, text: str) -> str:
        """Return text with the API key (and any Hugging Face token) masked."""
        text = redact_secrets(text)
        return text.replace(self._api_key, mask_token(self._api_key)) if self._api_key else text

    def check_options(self, options: dict) -> None:
        """Raise TypeError/ValueError unless options can go into the request as extra fields."""
        if not isinstance(options, dict):
            raise TypeError(f"generate_kwargs must be a dict, not {type(options).__name__}.")
        for key in options:
            if key in _SESSION_SETS or key in ("max_new_tokens", "stop_strings"):
                raise ValueError(
                    f"generate_kwargs sets {key!r}, which ChatSession sets itself from its own "
                    "settings (max_new_tokens, temperature, top_p, do_sample)."
                )
        try:
            json.dumps(options)
        except (TypeError, ValueError):
            raise TypeError(
                "With an endpoint, generate_kwargs are sent as extra request fields (such as "
                "{'seed': 1, 'stop': ['\\n\\n']}), so they must be JSON values; Python objects "
                "such as a LogitsProcessor work only with a local model."
            ) from None

    def served_models(self) -> list[str]:
        """Return the ids of the models the endpoint serves (its /v1/models)."""
        try:
            return [m.id for m in self._client.models.list()]
        except Exception as err:  # noqa: BLE001 - every failure becomes an EndpointError
            raise _as_endpoint_error(self, err, mid_reply=False) from None

    def reply(
        self, request: ReplyRequest, on_text: Callable[[str], None] | None, stop: threading.Event
    ) -> EngineReply:
        """Stream one reply from the endpoint until it finishes, or stop is set (closes it)."""
        start = time.perf_counter()
        pieces: list[str] = []
        times: list[float] = []
        usage, finished = None, None
        for chunk in self._chunks(request, stop, lambda: bool(pieces)):
            usage = getattr(chunk, "usage", None) or usage
            for choice in chunk.choices or []:
                piece = getattr(choice.delta, "content", None)
                if piece:
                    pieces.append(piece)
                    times.append(time.perf_counter())
                    if on_text is not None:
                        on_text(piece)
                finished = choice.finish_reason or finished
        text = "".join(pieces)
        if finished is None and not stop.is_set():
            raise EndpointError(
                f"The stream from {self.redact(self.url)} ended before the reply was finished "
                "(the server closed it without saying why).",
                "Your chat is unchanged. Check the server's log, then send again.",
            )
        return EngineReply(text, self._stats(request, text, usage, start, times), stop.is_set())

    def _stats(
        self, request: ReplyRequest, text: str, usage, start: float, times
    ) -> GenerationStats:
        """Timing as for a local reply; token counts from the server's usage when it gave them."""
        prompt = getattr(usage, "prompt_tokens", None) or request.fit.prompt_tokens
        new = getattr(usage, "completion_tokens", None)
        if new is None:  # stopped, or a server that sends no usage: count with Llama 2's pieces
            new = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return GenerationStats(
            prompt_tokens=int(prompt),
            new_tokens=int(new),
            ttft_s=(times[0] - start) if times else 0.0,
            total_s=(times[-1] - start) if times else 0.0,
        )

    def _body(self, request: ReplyRequest) -> dict:
        """The chat completion request for one reply."""
        body = {
            "model": self.model,
            "messages": [dict(m) for m in request.fit.messages],
            "max_tokens": request.fit.max_new_tokens,
            "stream": True,
        }
        if request.do_sample:
            body |= {"temperature": request.temperature, "top_p": request.top_p}
        else:
            body["temperature"] = 0.0  # greedy, in the API's words
        return body

    def _chunks(self, request: ReplyRequest, stop: threading.Event, mid_reply) -> Iterator:
        """The reply's chunks as they arrive, until stop is set; failures as EndpointError."""
        body, extra = self._body(request), dict(request.options)
        for kind, value in _read_in_background(self._client, body, extra, stop):
            if kind == "error":
                raise _as_endpoint_error(self, value, mid_reply=mid_reply()) from None
            yield value


def _read_in_background(client, body: dict, extra: dict, stop: threading.Event) -> Iterator:
    """Yield ("chunk", c) and ("error", e) from a stream read on its own thread, until stop.

    A blocked socket read cannot be interrupted from another thread, so the request runs on a
    thread of its own: Stop returns at once (within 50 ms) even while the server is silent, and
    that thread closes the stream, which cancels the request, as soon as its read returns.
    """
    if stop.is_set():
        return  # stopped before it began: no request is sent
    events: queue.Queue = queue.Queue()
    abandoned = threading.Event()

    def read() -> None:
        try:
            with client.chat.completions.create(**body, extra_body=extra or None) as stream:
                for chunk in stream:
                    if abandoned.is_set():
                        return  # leaving the `with` closes the stream: the server stops
                    events.put(("chunk", chunk))
            events.put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            events.put(("error", err))

    threading.Thread(target=read, name="llama2-colab-endpoint", daemon=True).start()
    try:
        while not stop.is_set():
            try:
                kind, value = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "end":
                return
            yield kind, value
            if kind == "error":
                return
    finally:
        abandoned.set()


def _status_error(endpoint: Endpoint, err) -> EndpointError:
    """An HTTP error status, as what happened and what to do."""
    status = err.status_code
    said = _server_said(err)
    where = endpoint.redact(endpoint.url)
    if status in (401, 403):
        return EndpointError(
            f"The endpoint at {where} refused the API key (HTTP {status}): {said}",
            "Pass the right key: Endpoint(url, model, api_key=...). It is only ever shown masked.",
        )
    if status in (400, 404, 422):
        return EndpointError(
            f"The endpoint at {where} refused the request for model {endpoint.model!r} "
            f"(HTTP {status}): {said}",
            f"Check the model name{_served_hint(endpoint)} and the URL (it usually ends in /v1). "
            "Your chat is unchanged.",
        )
    return EndpointError(
        f"The endpoint at {where} failed (HTTP {status}): {said}",
        "Your chat is unchanged. Check the server's log, then send again.",
    )


def _served_hint(endpoint: Endpoint) -> str:
    """`: it serves 'x'` when the endpoint says what it serves, else nothing."""
    try:
        served = endpoint.served_models()
    except EndpointError:
        return ""
    return f" (it serves {', '.join(repr(m) for m in served[:5])})" if served else ""


def _server_said(err) -> str:
    """The server's own words from an HTTP error, shortened."""
    body = getattr(err, "body", None)
    said = body.get("detail") or body.get("message") if isinstance(body, dict) else None
    said = str(said or getattr(err, "message", "") or err)
    return said if len(said) <= 300 else said[:297] + "..."


def _as_endpoint_error(endpoint: Endpoint, err: BaseException, mid_reply: bool) -> BaseException:
    """The failure of a request as an EndpointError; anything else (a bug, Ctrl-C) as it is."""
    openai = _import_openai()
    if isinstance(err, EndpointError) or not isinstance(err, Exception):
        return err
    if isinstance(err, openai.APIStatusError):
        return _status_error(endpoint, err)
    where = endpoint.redact(endpoint.url)
    name = type(err).__name__
    if isinstance(err, openai.APITimeoutError) or "Timeout" in name:
        return EndpointError(
            f"The endpoint at {where} did not answer within {endpoint.timeout_s:g} s.",
            "Your chat is unchanged. Check that the server is up and not stuck; a server that "
            "loads the model on the first request may need a longer timeout_s.",
        )
    transport = isinstance(err, openai.APIConnectionError) or type(err).__module__.startswith(
        ("httpx", "httpcore")
    )
    if transport:
        return _connection_error(where, err, mid_reply)
    if isinstance(err, openai.APIError):  # an error the server sent inside the stream
        return EndpointError(
            f"The endpoint at {where} reported an error: {endpoint.redact(str(err))[:300]}",
            "Your chat is unchanged. Check the server's log, then send again.",
        )
    return err


def _connection_error(where: str, err: BaseException, mid_reply: bool) -> EndpointError:
    """A connection that failed: never made, closed before the reply, or broken off in it."""
    causes, seen = [], err
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    refused = any(
        isinstance(e, ConnectionRefusedError | socket.gaierror)
        or type(e).__name__ == "ConnectError"
        for e in causes
    )
    if mid_reply:
        what = (
            f"The connection to the endpoint at {where} broke off in the middle of the reply "
            "(the server stopped, or the network dropped)."
        )
    elif refused:
        what = f"Could not reach the endpoint at {where}: is the server running?"
    else:
        what = f"The endpoint at {where} closed the connection before replying (did it stop?)."
    return EndpointError(
        what,
        "Your chat is unchanged. Start the server (python -m llama2_colab serve) or check the "
        "URL and port, then send again.",
    )
