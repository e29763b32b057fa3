"""Every way a request to an endpoint can fail, turned into one `EndpointError`, masked.

`as_endpoint_error(endpoint, err, ...)` is the one door a failure of the HTTP client goes
through: an HTTP error status, a timeout, a connection refused, closed or broken off (also after
a redirect, which it names), a reply that is not an OpenAI stream (an HTML page, plain JSON, a
line that is not JSON), an error the server sent inside the stream, and anything else the
client raises. Each becomes an `EndpointError` saying what happened and what to do, and its
text passes through `endpoint.redact` in one place, so the API key, the URL's password and any
Hugging Face token are masked in everything the server said, too.

Explaining a failure never fails in turn: what the server said is cut to a short excerpt
without control characters, and the one extra request (asking which models the server has,
for a 4xx) is made only from a reply, never while explaining that request's own failure.
"""

from __future__ import annotations

import html
import re
import socket
import unicodedata
from collections.abc import Callable
from urllib.parse import urlsplit

from .errors import UserFacingError

__all__ = ["EndpointError", "NotAStream", "StreamError", "as_endpoint_error", "excerpt"]

EXCERPT_CHARS = 200
_UNCHANGED = "Your chat is unchanged."
_BASE_URL = "the API's base URL, which usually ends in /v1 (e.g. http://127.0.0.1:8000/v1)"


class EndpointError(UserFacingError):
    """The endpoint could not give a reply (down, refused, too slow, broke off); nothing changed."""


class NotAStream(Exception):
    """The server answered, but not with an OpenAI chat completion stream."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class StreamError(Exception):
    """An error the server reported inside the stream."""


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Return text as one short line: an HTML page's title or text, no control characters."""
    text = str(text)
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    elif re.search(r"<(html|body|head|div|p|h1)\b", text, re.IGNORECASE):
        text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", html.unescape(text))  # terminal colours
    text = "".join(
        " " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char for char in text
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_html(text: str) -> bool:
    return bool(re.match(r"\s*(<!doctype html|<html)", text, re.IGNORECASE))


def _server_said(err) -> str:
    """The server's own words from an HTTP error status, as a short excerpt."""
    body = getattr(err, "body", None)
    said = None
    if isinstance(body, dict):
        said = body.get("detail") or body.get("message") or body.get("error")
        said = said.get("message", said) if isinstance(said, dict) else said
    if not said:
        try:
            text = err.response.text
        except Exception:  # noqa: BLE001 - a body that cannot be read says nothing
            text = ""
        if _is_html(text):
            return f"an HTML page ({excerpt(text)}): is this URL a web site or a proxy?"
        said = text or getattr(err, "message", "") or str(err)
    return excerpt(said)


def _status_error(endpoint, err, ask_models: Callable[[], list[str]] | None):
    """An HTTP error status, as (what happened, what to do)."""
    status, said, where = err.status_code, _server_said(err), endpoint.url
    if status in (401, 403):
        return (
            f"The endpoint at {where} refused the API key (HTTP {status}): {said}",
            "Pass the right key: Endpoint(url, model, api_key=...). It is only ever shown masked.",
        )
    if status not in (400, 404, 422):
        return (
            f"The endpoint at {where} failed (HTTP {status}): {said}",
            f"{_UNCHANGED} Check the server's log, then send again.",
        )
    served = _served_quietly(ask_models)
    if status == 404 and served is None:  # the model list is not there either: a wrong URL
        return (
            f"The endpoint at {where} answered HTTP 404 ({said}) to the chat request and has no "
            "model list either: this URL is probably not the API's base.",
            f"Give {_BASE_URL}. {_UNCHANGED}",
        )
    hint = f" (it serves {', '.join(repr(m) for m in served[:5])})" if served else ""
    return (
        f"The endpoint at {where} refused the request for model {endpoint.model!r} "
        f"(HTTP {status}): {said}",
        f"Check the model name{hint} and the URL (it usually ends in /v1). {_UNCHANGED}",
    )


def _served_quietly(ask_models: Callable[[], list[str]] | None) -> list[str] | None:
    """The served model ids, or None if they cannot be had: this never raises."""
    if ask_models is None:
        return None
    try:
        return [str(m) for m in ask_models()]
    except Exception:  # noqa: BLE001 - a hint that cannot be had is left out
        return None


def _causes(err: BaseException) -> list[BaseException]:
    """err and the exceptions behind it, at most ten."""
    causes, seen = [], err
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    return causes


def _redirected_to(endpoint, causes) -> str | None:
    """The URL a redirect sent the request to, when a connection to it failed; else None."""
    ours = urlsplit(endpoint.url)  # the secrets masked: scheme, host and port are the same
    for cause in causes:
        try:
            target = urlsplit(str(cause.request.url))
            if (target.scheme, target.hostname, target.port) != (
                ours.scheme,
                ours.hostname,
                ours.port,
            ):
                return target.geturl()
        except Exception:  # noqa: BLE001 - an exception without a request names no URL
            continue
    return None


def _connection_error(endpoint, err: BaseException, mid_reply: bool):
    """A connection that failed: never made, closed before the reply, or broken off in it."""
    causes, where = _causes(err), endpoint.url
    refused = any(
        isinstance(e, ConnectionRefusedError | socket.gaierror)
        or type(e).__name__ == "ConnectError"
        for e in causes
    )
    target = _redirected_to(endpoint, causes)
    if mid_reply:
        what = (
            f"The connection to the endpoint at {where} broke off in the middle of the reply "
            "(the server stopped, or the network dropped)."
        )
    elif target is not None:
        what = (
            f"The endpoint at {where} redirected the request to {target}, which could not be "
            "reached."
        )
    elif refused:
        what = f"Could not reach the endpoint at {where}: is the server running?"
    else:
        what = f"The endpoint at {where} closed the connection before replying (did it stop?)."
    return (
        what,
        f"{_UNCHANGED} Start the server (python -m llama2_colab serve) or check the URL and port, "
        "then send again.",
    )


def _describe(endpoint, err, mid_reply, ask_models, openai):
    """(what happened, what to do) for one failure of the client."""
    where = endpoint.url
    if isinstance(err, openai.APIStatusError):
        return _status_error(endpoint, err, ask_models)
    if isinstance(err, openai.APITimeoutError) or "Timeout" in type(err).__name__:
        return (
            f"The endpoint at {where} did not answer within {endpoint.timeout_s:g} s.",
            f"{_UNCHANGED} Check that the server is up and not stuck; a server that loads the "
            "model on the first request may need a longer timeout_s.",
        )
    if isinstance(err, NotAStream):
        return (
            f"The server at {where} answered with {err.what}, not a streamed chat completion: "
            "this URL does not look like an OpenAI-compatible API.",
            f"Give {_BASE_URL}. {_UNCHANGED}",
        )
    if isinstance(err, StreamError | openai.APIError) and not isinstance(
        err, openai.APIConnectionError
    ):
        return (
            f"The endpoint at {where} reported an error: {excerpt(str(err))}",
            f"{_UNCHANGED} Check the server's log, then send again.",
        )
    transport = isinstance(err, openai.APIConnectionError | OSError) or type(
        err
    ).__module__.startswith(("httpx", "httpcore", "h11"))
    if transport:
        return _connection_error(endpoint, err, mid_reply)
    return (
        f"The request to the endpoint at {where} failed: {type(err).__name__}: {excerpt(str(err))}",
        f"{_UNCHANGED} Check the URL, the model name and the API key, then send again.",
    )


def as_endpoint_error(
    endpoint,
    err: BaseException,
    mid_reply: bool,
    openai,
    ask_models: Callable[[], list[str]] | None = None,
) -> BaseException:
    """The failure of a request as an EndpointError, masked; Ctrl-C and the like as they are.

    `ask_models` lists the served models for a 4xx's hint; pass None where that listing is
    itself the request that failed.
    """
    if isinstance(err, EndpointError) or not isinstance(err, Exception):
        return err
    what, todo = _describe(endpoint, err, mid_reply, ask_models, openai)
    return EndpointError(endpoint.redact(what), endpoint.redact(todo))
