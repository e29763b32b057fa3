"""An OpenAI-compatible chat endpoint as a reply engine (the `reply.ReplyEngine` protocol).

`Endpoint(url, model, api_key=None)` talks to any server that speaks OpenAI's
`/v1/chat/completions` (`python -m llama2_colab serve`, `transformers serve`, vLLM, llama.cpp's
server) through the `openai` client, which Colab ships. The session sends the messages it kept
after fitting the context (counted here with Llama 2's own tokenizer, `vocab`), and the server
applies the chat template. Replies stream; Stop closes the HTTP stream, which is how a client
cancels a request (the server stops generating when it sees the connection close).

Every argument is checked when the `Endpoint` is made (`endpoint_checks`). The API key is a
secret like the Hugging Face token, and so are a password or a key in the URL: they are shown
only masked, in a repr, in `describe()` and in every error, also where the server quoted them.
Every failure of a request (a dead server, an HTTP error, a timeout, a stream that breaks off, a
server that is not an OpenAI-compatible API) is an `EndpointError` (a `UserFacingError`) saying
what happened and what to do (`endpoint_faults`); the session's history is untouched.

The stream is read line by line (`data: {...}` events, then `data: [DONE]`): a reply that ended
with `[DONE]` is complete even if the server gave no finish reason, and a server that sends more
pieces than `max_tokens` asked for is cut off there, the reply kept. A connection that fails
before any byte of the reply (a pooled connection the server had closed, as uvicorn does after an
error) is tried once more; nothing is ever sent twice once the server has answered.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .auth import mask_token
from .chat_template import check_served_text, served_special_tokens
from .endpoint_checks import (
    check_api_key,
    check_context_window,
    check_model_name,
    check_timeout,
    check_url,
    mask_url,
    url_secrets,
)
from .endpoint_faults import (
    EndpointError,
    NotAStream,
    StreamError,
    as_endpoint_error,
    excerpt,
)
from .errors import redact_secrets
from .generation import GenerationStats
from .reply import EngineReply, ReplyRequest
from .vocab import build_llama2_tokenizer

__all__ = ["Endpoint", "EndpointError", "LLAMA2_CONTEXT_WINDOW"]

LLAMA2_CONTEXT_WINDOW = 4096  # Llama 2's max_position_embeddings (the paper, section 2.2)
_PIP = "pip install 'openai>=2.54'  (or: pip install 'llama2-colab[serve]'; Colab has it)"
# Request fields the session sets itself: generate_kwargs must not send them again.
_SESSION_SETS = ("model", "messages", "stream", "max_tokens", "temperature", "top_p")
MODELS_TIMEOUT_S = 10.0  # asking which models are served, for an error's hint


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


@dataclass(frozen=True)
class _Delta:
    """One piece of a streamed reply: its text, the finish reason if given, the usage if sent."""

    text: str = ""
    finish: str | None = None
    usage: dict | None = None


class Endpoint:
    """An OpenAI-compatible chat endpoint: its URL, the model it serves, an optional API key.

    `timeout_s` bounds every wait on the server (connecting, the first token, each next piece);
    `context_window` is the served model's (4096 for Llama 2; the API does not say it). `url` is
    the URL as it may be shown: a password or a key in it is masked.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        context_window: int = LLAMA2_CONTEXT_WINDOW,
    ):
        self._url = check_url(url)
        self.model = check_model_name(model)
        self._api_key = check_api_key(api_key)
        self.timeout_s = check_timeout(timeout_s)
        self._context_window = check_context_window(context_window)
        self._secrets = [s for s in [self._api_key, *url_secrets(self._url)] if s]
        openai = _import_openai()
        # No retries: a reply is never sent twice behind your back. "EMPTY" (vLLM's convention)
        # when there is no key, so an OPENAI_API_KEY in the environment never goes to this server.
        self._client = openai.OpenAI(
            base_url=self._url,
            api_key=self._api_key or "EMPTY",
            timeout=self.timeout_s,
            max_retries=0,
        )

    @property
    def url(self) -> str:
        """The API's base URL, as it may be shown (a password or key in it masked)."""
        return mask_url(self._url)

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
        """Return e.g. `tiny at http://127.0.0.1:8000/v1 (endpoint)`; no secret appears."""
        return self.redact(f"{self.model} at {self.url} (endpoint)")

    def redact(self, text: str) -> str:
        """Return text with the API key, the URL's secrets and any Hugging Face token masked."""
        text = redact_secrets(str(text).replace(self._url, self.url))
        for secret in self._secrets:
            text = text.replace(secret, mask_token(secret))
        return text

    def check_options(self, options: dict, do_sample: bool = True) -> None:
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

    def check_text(self, text: str, what: str) -> None:
        """Raise ValueError, as the served template would (with a bare 500), before sending.

        The server tokenizes the rendered prompt, so a typed `</s>` (or `<s>`, `<unk>`) would
        become a real token there: the reference template refuses it, and so does this.
        """
        check_served_text(text, what, served_special_tokens(self.tokenizer))

    def served_models(self) -> list[str]:
        """Return the ids of the models the endpoint serves (its /v1/models)."""
        try:
            return self._ask_models()
        except Exception as err:  # noqa: BLE001 - every failure becomes an EndpointError
            # No hint here: it would ask /v1/models again, the request that just failed.
            raise as_endpoint_error(self, err, False, _import_openai(), None) from None

    def _ask_models(self) -> list[str]:
        """The served model ids, as the client gets them (its own exceptions on failure)."""
        client = self._client.with_options(timeout=min(self.timeout_s, MODELS_TIMEOUT_S))
        return [m.id for m in client.models.list()]

    def reply(
        self, request: ReplyRequest, on_text: Callable[[str], None] | None, stop: threading.Event
    ) -> EngineReply:
        """Stream one reply from the endpoint until it finishes, or stop is set (closes it)."""
        start = time.perf_counter()
        pieces: list[str] = []
        times: list[float] = []
        usage, finished = None, None
        for delta in self._deltas(request, stop, lambda: bool(pieces)):
            usage = delta.usage or usage
            if delta.text:
                if len(pieces) >= request.fit.max_new_tokens:  # it ignores max_tokens: cut here
                    finished = finished or "length"
                    break
                pieces.append(delta.text)
                times.append(time.perf_counter())
                if on_text is not None:
                    on_text(delta.text)
            finished = delta.finish or finished
        text = "".join(pieces)
        if finished is None and not stop.is_set():
            raise EndpointError(
                f"The stream from {self.url} ended before the reply was finished "
                "(the server closed it without saying why).",
                "Your chat is unchanged. Check the server's log, then send again.",
            )
        return EngineReply(text, self._stats(request, text, usage, start, times), stop.is_set())

    def _stats(
        self, request: ReplyRequest, text: str, usage: dict | None, start: float, times
    ) -> GenerationStats:
        """Timing as for a local reply; token counts from the server's usage when it gave them."""
        usage = usage or {}
        prompt = _count(usage.get("prompt_tokens")) or request.fit.prompt_tokens
        new = _count(usage.get("completion_tokens"))
        if new is None:  # stopped, or a server that sends no usage: count with Llama 2's pieces
            ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            new = len(ids)
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

    def _deltas(self, request: ReplyRequest, stop: threading.Event, mid_reply) -> Iterator[_Delta]:
        """The reply's pieces as they arrive, until stop is set; failures as EndpointError."""
        body, extra, openai = self._body(request), dict(request.options), _import_openai()
        for kind, value in _read_in_background(self._client, body, extra, stop, openai):
            if kind == "error":
                raise as_endpoint_error(
                    self, value, mid_reply(), openai, self._ask_models
                ) from None
            yield value


def _count(value) -> int | None:
    """A token count the server sent, or None if it sent none (or not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@contextlib.contextmanager
def _opened(client, body: dict, extra: dict, openai) -> Iterator:
    """The streaming response to one request, open while inside.

    A connection that fails before any byte of the reply (no status line yet) is tried once
    more: the request never reached a server that answered it. A timeout is not retried.
    """
    for attempt in (1, 2):
        manager = client.chat.completions.with_streaming_response.create(
            **body, extra_body=extra or None
        )
        try:
            response = manager.__enter__()
        except openai.APITimeoutError:
            raise
        except openai.APIConnectionError:
            if attempt == 2:
                raise
            continue
        break
    try:
        yield response
    finally:
        manager.__exit__(None, None, None)


def _what_came(kind: str, response) -> str:
    """Name what a server sent instead of an event stream, with a short excerpt of it."""
    try:
        first = next(iter(response.iter_bytes()), b"").decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - a body that cannot be read is named by its type alone
        first = ""
    if "html" in kind.lower() or first.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        return f"an HTML page ({excerpt(first)})"
    return f"{kind or 'a reply with no content type'} ({excerpt(first) or 'empty'})"


def _parse_event(data: str) -> list[_Delta]:
    """The pieces of one `data:` event; NotAStream or StreamError when it is not a chunk."""
    try:
        event = json.loads(data)
    except ValueError:
        raise NotAStream(f"a line that is not JSON ({excerpt(data)!r})") from None
    if not isinstance(event, dict):
        raise NotAStream(f"JSON that is not a completion chunk ({excerpt(data)!r})")
    if event.get("error"):
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise StreamError(str(message or "an error with no message"))
    choices = event.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise NotAStream(f"JSON that is not a completion chunk ({excerpt(data)!r})")
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else None
    deltas = [_Delta(usage=usage)] if usage else []
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        text = delta.get("content")
        deltas.append(_Delta(text if isinstance(text, str) else "", choice.get("finish_reason")))
    return deltas


def _stream_deltas(response) -> Iterator[_Delta]:
    """The pieces of an OpenAI event stream, then one that finishes it at `data: [DONE]`."""
    kind = response.headers.get("content-type", "")
    if not kind.lower().startswith("text/event-stream"):
        raise NotAStream(_what_came(kind, response))
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank lines between events, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":  # the server says the reply is complete
            yield _Delta(finish="stop")
            return
        yield from _parse_event(data)


def _read_in_background(
    client, body: dict, extra: dict, stop: threading.Event, openai
) -> Iterator[tuple[str, object]]:
    """Yield ("delta", d) and ("error", e) from a stream read on its own thread, until stop.

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
            with _opened(client, body, extra, openai) as response:
                for delta in _stream_deltas(response):
                    if abandoned.is_set():
                        return  # leaving the `with` closes the stream: the server stops
                    events.put(("delta", delta))
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
