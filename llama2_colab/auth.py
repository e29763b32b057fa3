"""The Hugging Face token and gated access: found through huggingface_hub, shown only masked.

`check_access(repo_id)` asks the Hub (through huggingface_hub's own client, honouring
`HF_ENDPOINT` and `HF_HUB_OFFLINE`) whether your token may download a model, and turns each
possible answer into one clear message: access OK; not logged in or invalid token; gated and not
granted yet; no such repository; the Hub cannot be reached. The token never appears in a message.

"Yes" needs the Hub's own answer: a repository id of the Hub's form, then the auth check and the
model's information as the Hub's JSON. A network login page (a captive portal) or a proxy that
answers 200 to everything is named as what it is, never taken for access.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .catalog import META_LLAMA_FORM, did_you_mean, find_entry, model_page_url
from .errors import UserFacingError, mask_token
from .faults import check_hub_endpoint, hub_timeout_s, with_deadline

__all__ = [
    "ACCESS_EXIT_CODES",
    "APPROVAL_TIME",
    "AccessResult",
    "find_token",
    "mask_token",
    "describe_token",
    "hub_endpoint",
    "is_offline",
    "transport_errors",
    "check_access",
    "explain_hub_error",
    "find_hub_error",
    "format_access",
]

# From the seed article: the "access granted" email arrives within 1-2 days; often it is hours.
APPROVAL_TIME = "usually within 1-2 days, often within a few hours"

# Exit status of `python -m llama2_colab access`: 0 only when access is confirmed.
ACCESS_EXIT_CODES = {
    "ok": 0,
    "no_token": 3,
    "invalid_token": 3,
    "gated": 4,
    "not_found": 5,
    "offline": 6,
    "hub_error": 7,
}

_TRUE = {"1", "on", "yes", "true"}


def find_token() -> str | None:
    """Return the token huggingface_hub would use (env HF_TOKEN, saved login, Colab secret)."""
    return get_token()


def describe_token(token: str | None = None) -> str:
    """Return where the token came from, masked, e.g. `hf_...wxyz (from $HF_TOKEN)`.

    The lookup is huggingface_hub's `get_token()`; this only names the place it found it.
    """
    token = find_token() if token is None else token
    if not token:
        return (
            "No Hugging Face token found. Add HF_TOKEN to Colab Secrets (the key icon on the "
            "left, with notebook access on), set the HF_TOKEN environment variable, or log in "
            "with `hf auth login` / `huggingface_hub.login()`."
        )
    source = "a saved login"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if (os.environ.get(var) or "").strip() == token:
            source = f"${var}"
            break
    else:
        try:
            import google.colab  # noqa: F401

            source = "Colab Secrets (HF_TOKEN) or a saved login"
        except ImportError:
            pass
    return f"{mask_token(token)} (from {source})"


def hub_endpoint() -> str:
    """Return the Hub URL in use: $HF_ENDPOINT if set now, else huggingface_hub's default.

    UserFacingError if $HF_ENDPOINT is no http(s) URL ("http://[::1"), which the HTTP client
    would otherwise fail on deep inside (httpx's InvalidURL).
    """
    check_hub_endpoint()
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def transport_errors() -> tuple[type[BaseException], ...]:
    """Return the "could not reach the server" errors of every HTTP client huggingface_hub uses.

    The client moved twice: requests in huggingface_hub 0.x, httpx in 1.x (Colab ships 1.27),
    httpx2 in 2.x. Each is looked up only if installed, so this works on all three.
    """
    errors: list[type[BaseException]] = [OSError]  # requests' ConnectionError is an OSError
    for client in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def is_offline() -> bool:
    """Return True if huggingface_hub's offline mode is on (HF_HUB_OFFLINE=1): no Hub calls."""
    return constants.is_offline_mode() or (
        (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE
    )


@dataclass(frozen=True)
class AccessResult:
    """The answer to "may this token download this model?", in words a user can act on."""

    repo_id: str
    status: str  # "ok" | "no_token" | "invalid_token" | "gated" | "not_found" | "offline" | ...
    message: str  # what happened
    todo: str  # what to do about it ("" when ok)
    token: str  # the token, masked: never the token itself
    endpoint: str

    @property
    def ok(self) -> bool:
        """True only when the Hub confirmed access."""
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this answer (0 only when access is confirmed)."""
        return ACCESS_EXIT_CODES.get(self.status, 1)

    def to_dict(self) -> dict:
        """Return the result as a JSON-ready dict (the token masked)."""
        return {**asdict(self), "ok": self.ok}


def _gated_todo(repo_id: str, endpoint: str) -> str:
    return (
        f"1. Open {model_page_url(repo_id, endpoint)} while logged in and request access there. "
        f"2. Fill in Meta's form at {META_LLAMA_FORM}. Use the same email address on both: Meta "
        "approves the Hugging Face request by matching it. "
        f"Approval comes {APPROVAL_TIME}, by email from Hugging Face; then run this again."
    )


def _login_todo() -> str:
    return (
        "Create a token with read access at https://huggingface.co/settings/tokens, then: on "
        "Colab add it to Secrets as HF_TOKEN (key icon, allow notebook access) and restart the "
        "session; elsewhere set HF_TOKEN or run `hf auth login`."
    )


def find_hub_error(err: BaseException):
    """Return the huggingface_hub error behind an error (transformers wraps them), or None."""
    seen = err
    while seen is not None:
        if isinstance(seen, (HfHubHTTPError, OfflineModeIsEnabled)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain_hub_error(err: BaseException, repo_id: str, has_token: bool) -> tuple[str, str, str]:
    """Return (status, what happened, what to do) for an error raised by huggingface_hub."""
    endpoint = hub_endpoint()
    if isinstance(err, OfflineModeIsEnabled):
        return (
            "offline",
            "Offline mode is on (HF_HUB_OFFLINE=1), so the Hub was not asked.",
            "Unset HF_HUB_OFFLINE to check access. Models already in your cache still load.",
        )
    code = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError):
        return _explain_gated(repo_id, endpoint, has_token, code)
    if isinstance(err, RepositoryNotFoundError):
        login = "" if has_token else " If it is private or gated, log in first."
        return (
            "not_found",
            f"There is no model repository {repo_id!r} on {endpoint}.",
            f"{did_you_mean(repo_id)}Check the spelling (owner/name, case matters).{login}",
        )
    if isinstance(err, HfHubHTTPError):
        return _explain_http(repo_id, has_token, code)
    return (
        "offline",
        f"Could not reach the Hub at {endpoint} ({type(err).__name__}).",
        "Check the internet connection (on Colab: Runtime > Restart session), "
        "and HF_ENDPOINT if you set it.",
    )


def _explain_gated(
    repo_id: str, endpoint: str, has_token: bool, code: int | None
) -> tuple[str, str, str]:
    """(status, what, todo) for a gated repository the Hub refused."""
    if not has_token:
        return (
            "no_token",
            f"{repo_id} is gated and you are not logged in.",
            _login_todo() + " Access must also be granted: " + _gated_todo(repo_id, endpoint),
        )
    if code == 401:
        return ("invalid_token", "The Hub rejected your token (401).", _login_todo())
    return (
        "gated",
        f"{repo_id} is gated and your account has not been granted access (yet).",
        _gated_todo(repo_id, endpoint),
    )


def _explain_http(repo_id: str, has_token: bool, code: int | None) -> tuple[str, str, str]:
    """(status, what, todo) for any other HTTP answer of the Hub."""
    if code == 401:
        if not has_token:
            return ("no_token", "You are not logged in to Hugging Face.", _login_todo())
        return (
            "invalid_token",
            "The Hub rejected your token (401): it is invalid, expired or revoked.",
            _login_todo(),
        )
    if code == 403:
        return (
            "invalid_token",
            f"Your token may not read {repo_id} (403).",
            "A fine-grained token needs 'Read access to contents of all public gated repos "
            "you can access'; or create a classic 'Read' token. " + _login_todo(),
        )
    if code is not None and code >= 500:
        return (
            "hub_error",
            f"The Hub had a problem answering (HTTP {code}).",
            "Try again in a few minutes; see https://status.huggingface.co.",
        )
    return (
        "hub_error",
        f"The Hub answered HTTP {code} for {repo_id}.",
        "Try again; if it persists, open the model page in a browser.",
    )


class _NotTheHub(Exception):
    """The server answered 200, but not with the Hub's JSON (a captive portal, a proxy)."""


def _ask_hub(endpoint: str, repo_id: str, token: str | None) -> None:
    """Ask the Hub's auth check, then its model information; _NotTheHub if it is no Hub's JSON.

    The auth check's answer is its HTTP status alone, which a login page that answers 200 to
    everything imitates; the model information must be a JSON object with the repository's id.
    """
    api = HfApi(endpoint=endpoint)
    api.auth_check(repo_id, token=token or False)
    try:
        info = api.model_info(repo_id, token=token or False)
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # HTML, or JSON of no shape
        raise _NotTheHub() from err
    if not isinstance(getattr(info, "id", None), str) or not info.id:
        raise _NotTheHub()


def _not_an_id(repo_id: str) -> tuple[str, str, str]:
    """(status, what, todo) for a text that is no Hub repository id ('../../etc/passwd')."""
    return (
        "not_found",
        f"{repo_id!r} is not a valid Hub repository id.",
        "Use owner/name with letters, digits, '-', '_' and '.', e.g. "
        "meta-llama/Llama-2-7b-chat-hf.",
    )


def check_access(repo_id: str, token: str | None = None) -> AccessResult:
    """Ask the Hub whether the token (default: `find_token()`) may download `repo_id`.

    TypeError for a repo_id that is not a string or a token that is neither a string nor None;
    UserFacingError for an $HF_ENDPOINT that is no URL (`hub_endpoint`). The Hub gets
    `faults.HUB_TIMEOUT_S` seconds to answer; a silence is reported as "offline".
    """
    if not isinstance(repo_id, str):
        raise TypeError(
            f"check_access: repo_id must be a string such as 'meta-llama/Llama-2-7b-chat-hf', "
            f"not {type(repo_id).__name__}."
        )
    if token is not None and not isinstance(token, str):
        raise TypeError(
            f"check_access: token must be a string (hf_...) or None (find it as "
            f"huggingface_hub does), not {type(token).__name__}."
        )
    repo_id = repo_id.strip()
    token = find_token() if token is None else (token.strip() or None)
    endpoint = hub_endpoint()
    masked = mask_token(token)

    def result(status: str, message: str, todo: str) -> AccessResult:
        return AccessResult(repo_id, status, message, todo, masked, endpoint)

    if repo_id.lower() == "tiny":
        return result("ok", "The tiny model is built on this machine: no access needed.", "")
    if "/" not in repo_id:  # a bare name such as Llama-2-7b-chat-hf: the catalog knows its owner
        entry = find_entry(repo_id)
        if entry is None:
            return result(
                "not_found",
                f"{repo_id!r} is not a full Hub id (owner/name) and not in the catalog.",
                f"{did_you_mean(repo_id)}Give the full id, e.g. meta-llama/Llama-2-7b-chat-hf.",
            )
        repo_id = entry.id
    try:  # before the Hub is asked, online or not: a path or a URL is no repository id
        validate_repo_id(repo_id)
    except HFValidationError:
        return result(*_not_an_id(repo_id))
    if is_offline():
        status, what, todo = explain_hub_error(OfflineModeIsEnabled(), repo_id, bool(token))
        return result(status, what, todo)
    return result(*_hub_answer(endpoint, repo_id, token))


def _hub_answer(endpoint: str, repo_id: str, token: str | None) -> tuple[str, str, str]:
    """(status, what, todo) from asking the Hub at endpoint about repo_id, within the deadline."""
    seconds = hub_timeout_s()  # a setting that is no number is named as such, not as "offline"
    try:
        what = f"checking access to {repo_id}"
        with_deadline(lambda: _ask_hub(endpoint, repo_id, token), what, seconds)
    except UserFacingError as err:  # no answer in time
        return "offline", err.what, err.todo
    except (HfHubHTTPError, OfflineModeIsEnabled, *transport_errors()) as err:
        return explain_hub_error(err, repo_id, bool(token))
    except HFValidationError:
        return _not_an_id(repo_id)
    except _NotTheHub:
        return (
            "offline",
            f"The server at {endpoint} answered, but not as the Hugging Face Hub does (no JSON "
            "about the model): a network login page (captive portal), a proxy, or an "
            "HF_ENDPOINT that is no Hub.",
            "Log in to the network in a browser, or check HF_ENDPOINT (unset it for "
            "https://huggingface.co), then run this again.",
        )
    who = "your token" if token else "anonymous access (no token)"
    return "ok", f"Access to {repo_id} confirmed for {who} on {endpoint}.", ""


def format_access(result: AccessResult) -> str:
    """Return the access check as a few lines of text (what `access` prints)."""
    lines = [
        f"Model   : {result.repo_id}",
        f"Hub     : {result.endpoint}",
        f"Token   : {result.token}",
        f"Access  : {'yes' if result.ok else 'NO'} ({result.status})",
        f"Why     : {result.message}",
    ]
    if result.todo:
        lines.append(f"To do   : {result.todo}")
    return "\n".join(lines)
