"""What an `Endpoint` is given, checked before anything is sent, and its URL as it may be shown.

Every argument is checked when the `Endpoint` is made, so a mistake is a TypeError or ValueError
that says what to pass, never an exception from inside the HTTP client at the first send: the
URL (http or https, a host, a port from 1 to 65535), the model name (text a request can carry),
the API key (printable ASCII, as an HTTP header must be: a key pasted with smart quotes or a line
break is refused by name), the timeout (a finite number of seconds) and the context window (at
most the longest any Llama 2 or Code Llama model has).

A URL can hold secrets too: a user and password (`http://user:pass@host/v1`) or a key in its
query (`?api_key=...`). `mask_url` shows such a URL with those parts masked; `url_secrets` lists
them (with the Basic credentials the client sends for a user and password), so that an endpoint
masks them in everything it shows.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import math
import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .auth import mask_token
from .catalog import load_catalog

__all__ = [
    "check_api_key",
    "check_context_window",
    "check_model_name",
    "check_timeout",
    "check_url",
    "longest_context_window",
    "mask_url",
    "url_secrets",
]

_EXAMPLE = "such as http://127.0.0.1:8000/v1"
# The routes of the API that a URL copied from a request may end with: the base is before them.
_ROUTES = ("/chat/completions", "/completions", "/models")
# A host name: letters, digits, dots and dashes (IDNA names are ASCII on the wire).
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# Query parameters whose values are secrets.
_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)
MASKED = "***"


def _parts(url: str):
    """urlsplit(url), its port checked; ValueError saying what is wrong with the URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it (ValueError when out of range)
    except ValueError as err:
        raise ValueError(
            f"The endpoint URL {mask_url(url)!r} cannot be read ({err}); give one {_EXAMPLE}."
        ) from None
    return parts


def _check_host(url: str, host: str | None) -> None:
    """Raise ValueError unless host is a host name or an IP address."""
    if not host:
        raise ValueError(f"The endpoint URL {mask_url(url)!r} names no host; give one {_EXAMPLE}.")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOST.match(host):
        raise ValueError(
            f"The endpoint URL {mask_url(url)!r} has the host {host!r}, which is not a host "
            f"name (letters, digits, dots and dashes, no spaces); give one {_EXAMPLE}."
        )


def check_url(url) -> str:
    """Return the API's base URL: /v1 added to a bare server, a copied route (/chat/...) cut off.

    TypeError unless url is text; ValueError unless it is http(s) with a host and a valid port.
    """
    if not isinstance(url, str):
        raise TypeError(f"The endpoint URL must be text {_EXAMPLE}, not {type(url).__name__}.")
    if not url.strip():
        raise ValueError(f"The endpoint URL must be text {_EXAMPLE}, not {url!r}.")
    url = url.strip().rstrip("/")
    parts = _parts(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"The endpoint URL {mask_url(url)!r} is not an http(s) URL; give one {_EXAMPLE}."
        )
    _check_host(url, parts.hostname)
    if parts.port == 0:
        raise ValueError(f"The endpoint URL {mask_url(url)!r} has port 0; give the server's port.")
    path = parts.path.rstrip("/")
    for route in _ROUTES:
        if path.endswith(route):
            path = path[: -len(route)]
            break
    path = path or "/v1"
    return urlunsplit(parts._replace(path=path))


def mask_url(url: str) -> str:
    """Return url with a password, a bare user name and secret query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not readable as a URL: mask what looks like a password in it
        return re.sub(r"(//[^/@:]*:)[^/@]*@", rf"\1{MASKED}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        shown = f"{user}:{MASKED}" if has_password else mask_token(user)
        netloc = f"{shown}@{hostport}"
    query = "&".join(
        f"{name}={mask_token(value) if _SECRET_PARAM.search(name) else value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))


def url_secrets(url: str) -> list[str]:
    """Return the secrets a URL holds: its password or bare user name, secret query values."""
    parts = urlsplit(url)
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, has_password, password = userinfo.partition(":")
        found.append(password if has_password else user)
        # What the client sends for them (Authorization: Basic ...), which a server may quote.
        for credentials in {userinfo, unquote(userinfo)}:
            found.append(base64.b64encode(credentials.encode("utf-8")).decode("ascii"))
    found += [
        value
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if _SECRET_PARAM.search(name)
    ]
    return [secret for secret in found if secret]


def check_model_name(model) -> str:
    """Return the model name, stripped; TypeError/ValueError unless a request can carry it."""
    if not isinstance(model, str):
        raise TypeError(
            f"Name the model the endpoint serves as text (its /v1/models lists them), not "
            f"{type(model).__name__}."
        )
    if not model.strip():
        raise ValueError(
            f"Name the model the endpoint serves (its /v1/models lists them), not {model!r}."
        )
    try:
        model.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"The model name contains {model[err.start]!r} at position {err.start}, half of a "
            "character pair (a damaged copy-paste), which a request cannot carry. Retype it."
        ) from None
    return model.strip()


def check_api_key(api_key) -> str | None:
    """Return the key, stripped (or None); TypeError/ValueError unless a header can hold it."""
    if api_key is None:
        return None
    if not isinstance(api_key, str):
        raise TypeError(
            f"api_key must be the key as text, or None for a server without one, not "
            f"{type(api_key).__name__}."
        )
    key = api_key.strip()
    if not key:
        raise ValueError("api_key must be the key as text, or None for a server without one.")
    for i, char in enumerate(key):
        if not (" " <= char <= "~"):
            raise ValueError(
                f"api_key contains {char!r} at position {i}: a key is printable ASCII (letters, "
                "digits and signs), and this one holds something a paste added (a line break, "
                "smart quotes, a non-breaking space). Copy the key again, without it."
            )
    return key


def check_timeout(timeout_s) -> float:
    """Return timeout_s as a float; TypeError/ValueError unless it is a finite number above 0."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise TypeError(f"timeout_s must be a number of seconds, not {type(timeout_s).__name__}.")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(
            f"timeout_s must be a number of seconds above 0, not {timeout_s!r}; 60 is typical."
        )
    return float(timeout_s)


@functools.cache
def longest_context_window() -> int:
    """Return the longest context any model of the catalog has (Code Llama's 16384)."""
    return max(entry.config["max_position_embeddings"] for entry in load_catalog())


def check_context_window(context_window) -> int:
    """Return context_window; TypeError/ValueError unless a Llama model can have it."""
    if isinstance(context_window, bool) or not isinstance(context_window, int):
        raise TypeError(f"context_window must be a whole number of tokens, not {context_window!r}.")
    if context_window < 2:
        raise ValueError(f"context_window={context_window} is too small; Llama 2 has 4096.")
    if context_window > longest_context_window():
        raise ValueError(
            f"context_window={context_window:,} is more than any Llama 2 or Code Llama model has "
            f"(Llama 2: 4,096 positions; Code Llama: {longest_context_window():,}): past them a "
            "model produces garbage. Give the served model's own (4096 for Llama 2)."
        )
    return context_window
