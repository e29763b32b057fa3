"""One boundary for faults of the machine and of the libraries underneath: disk, files, network.

Faults enter from the operating system (a full disk, a read-only one, no permission, a name too
long, a symbolic link loop, a home folder that does not exist, a console that cannot show a
character) and from libraries that report the same faults under their own types: safetensors
raises `SafetensorError` and tokenizers a plain `Exception`, each with "(os error 28)" in its
text; huggingface_hub's HTTP clients (httpx in 1.x, httpx2 in 2.x) raise their own timeouts.
`describe_fault` turns any of them into a `UserFacingError` that says what happened and what to
do; `fault_boundary` does that for a block of code. The CLI's `main` and the library functions
that write to the disk use it; anything it does not know stays a bug, with its traceback. It
names what the fault was about as you would: a "full" disk may have run out of file entries
(inodes), a path over the 4,096-byte limit is not "a name too long", a link that loops is not
"already there", and a file inside a hidden work folder is named by your folder.

Files are read only if they are files: `find_regular_file` names a device (/dev/zero), a named
pipe, a folder or a link that loops where a file should be, instead of reading it forever or
calling it missing. A library's own message, quoted to you, goes through `library_message`:
no terminal escapes, cut at a word.

It never cleans up: the code that writes builds its result in a work folder (`workdirs`) and
renames it into place, so a fault leaves nothing half-written, and nothing of yours is touched.

The Hub's HTTP client waits forever for a server that accepts a connection and never answers,
so every call to the Hub runs under `with_deadline` (`HUB_TIMEOUT_S`, or $LLAMA2_COLAB_HUB_TIMEOUT).

Some faults are in the surroundings a command starts in, and are checked before it starts: a
current folder that was deleted (`check_working_folder`), an $HF_ENDPOINT that is no URL, which
huggingface_hub fails on when imported (`check_hub_endpoint`), and a command line decoded in a
locale that is not UTF-8 (`undecodable_text`).
"""

from __future__ import annotations

import codecs
import errno
import importlib
import os
import re
import stat
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .errors import UserFacingError, shorten
from .workdirs import outside_work

try:  # the user database, which names a home folder when $HOME is empty (none on Windows)
    import pwd
except ImportError:  # pragma: no cover - Windows
    pwd = None

__all__ = [
    "HUB_TIMEOUT_S",
    "TIMEOUT_ENV",
    "check_hub_endpoint",
    "check_working_folder",
    "describe_fault",
    "expand_user",
    "fault_boundary",
    "fault_errno",
    "find_regular_file",
    "home_folder",
    "hub_timeout_s",
    "library_message",
    "refuse_dangling_link",
    "require_writable",
    "undecodable_text",
    "with_deadline",
]

T = TypeVar("T")

# Seconds a call to the Hub may take before the user hears why it did not answer: a config or
# an access check is a few KB, so a healthy Hub answers in well under a second.
HUB_TIMEOUT_S = 20.0
TIMEOUT_ENV = "LLAMA2_COLAB_HUB_TIMEOUT"

_SPACE = (
    "Free some disk space, or use a folder on a bigger disk (on Colab, /content has the most "
    "room), then run again."
)
# errno -> (what happened, what to do). The text is the same whichever library reported it.
_ADVICE: dict[int, tuple[str, str]] = {
    # ENOSPC also means no free file entries (inodes) with bytes to spare; by the time it is
    # described, the work folder's removal has freed some, so the two cannot be told apart.
    errno.ENOSPC: (
        "the disk is full (no free space, or no free file entries: `df -h` and `df -i` show which)",
        _SPACE,
    ),
    errno.EDQUOT: ("your disk quota is used up", _SPACE),
    errno.EFBIG: (
        "a file grew past the largest size allowed here (a file-size limit, `ulimit -f`)",
        "Raise the limit or use a folder on another disk, then run again.",
    ),
    errno.EROFS: (
        "the folder is on a read-only file system",
        "Use a folder on a disk you can write to (on Colab, under /content), then run again.",
    ),
    errno.EACCES: (
        "permission denied",
        "Use files you may read and a folder you may write to, or change their permissions "
        "(`ls -l` shows them).",
    ),
    errno.EPERM: (
        "the operation is not permitted",
        "Use a folder you own, or change its permissions (`ls -l` shows them).",
    ),
    errno.ENAMETOOLONG: (
        "a file or folder name is too long for the file system (255 bytes at most per name)",
        "Use a shorter name.",
    ),
    errno.ELOOP: (
        "a symbolic link loops back on itself (or goes through too many links)",
        "Fix or remove the link; `ls -l` shows where each link points.",
    ),
    errno.ENOTDIR: (
        "a file stands where a folder should be",
        "Check the path: every part of it before the last must be a folder.",
    ),
    errno.EISDIR: ("a folder stands where a file should be", "Check the path."),
    errno.EEXIST: (
        "something of that name is already there (a file where a folder should be?)",
        "Check the path, or choose another name.",
    ),
    errno.ENOENT: ("a file or folder does not exist (or was removed meanwhile)", "Check the path."),
    errno.EIO: (
        "the disk reported an input/output error",
        "Check the disk (on Colab, remount Drive), then run again.",
    ),
    errno.EMFILE: ("too many files are open", "Close other programs or raise `ulimit -n`."),
    errno.ENOMEM: (
        "the machine ran out of memory",
        "Close other programs or notebooks (on Colab: Runtime > Restart session) and run again.",
    ),
}
_NO_SUCH_USER_TODO = (
    "Write the path in full (e.g. /content/models/...), or start it with ~/ for your own home "
    "folder."
)
MAX_PATH_BYTES = 4096  # a whole path, on Linux (PATH_MAX); MAX_NAME_BYTES for each name in it
MAX_NAME_BYTES = 255
# How Rust libraries (safetensors, tokenizers) and Python print an OS error code.
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]|\bcode: (\d+)\b")
_PATH_IN_TEXT = re.compile(r'at path "([^"]+)"')


def _chain(err: BaseException) -> Iterator[BaseException]:
    """err, then the exceptions it was raised from or during, oldest last."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def fault_errno(err: BaseException) -> int | None:
    """Return the OS error code behind err (an OSError's, or one a library wrote in its text)."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno:
            return link.errno
        if isinstance(link, RuntimeError) and str(link).startswith("Symlink loop"):
            return errno.ELOOP  # Path.resolve() on Python 3.11 and 3.12
        found = _ERRNO_IN_TEXT.search(str(link))
        if found and type(link).__name__ in ("SafetensorError", "Exception", "RuntimeError"):
            return int(next(group for group in found.groups() if group))
    return None


def _fault_path(err: BaseException) -> str | None:
    """The file or folder a fault names (an OSError's filename, or a Rust library's path)."""
    for link in _chain(err):
        name = getattr(link, "filename", None)
        if name:
            return os.fsdecode(name)
        found = _PATH_IN_TEXT.search(str(link))
        if found:
            return found.group(1)
    return None


def _client_errors(name: str) -> tuple[type[BaseException], ...]:
    """The exception class `name` of every HTTP client huggingface_hub may use, if installed."""
    found = []
    for client in ("httpx", "httpx2", "requests.exceptions"):
        try:
            found.append(getattr(importlib.import_module(client), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _network_fault(err: BaseException, failed: str) -> UserFacingError | None:
    """A timeout or an unreachable server, in words; None for anything else."""
    timeouts = _client_errors("TimeoutException") + _client_errors("Timeout")
    transport = _client_errors("TransportError") + _client_errors("ConnectionError")
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    todo = (
        "Check the internet connection (on Colab: Runtime > Restart session) and HF_ENDPOINT if "
        "you set it; with HF_HUB_OFFLINE=1 only what is in your cache is used."
    )
    for link in _chain(err):
        if isinstance(link, timeouts):
            return UserFacingError(f"{failed}: the Hub at {endpoint} timed out.", todo)
        if isinstance(link, transport):
            return UserFacingError(
                f"{failed}: could not reach the Hub at {endpoint} ({type(link).__name__}).", todo
            )
    return None


def _loops(path: str | None) -> bool:
    """True if path, or a folder on the way to it, is a symbolic link that loops or dangles."""
    if not path:
        return False
    for place in (Path(path), *Path(path).parents):
        try:
            if place.is_symlink() and not place.exists():
                return True
        except (OSError, ValueError):
            return False
    return False


def _too_long(path: str | None) -> tuple[str, str]:
    """(what happened, what to do) for ENAMETOOLONG: a name over 255 bytes, or the whole path."""
    raw = os.fsencode(path) if path else b""
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if path and longest <= MAX_NAME_BYTES and len(raw) >= MAX_PATH_BYTES:
        return (
            f"the path is too long for the file system ({len(raw):,} bytes; {MAX_PATH_BYTES:,} "
            f"at most in all, though each name in it is within {MAX_NAME_BYTES})",
            "Use a folder with a shorter path (fewer or shorter folders on the way).",
        )
    return _ADVICE[errno.ENAMETOOLONG]


def _reason(code: int, path: str | None) -> tuple[str, str]:
    """(what happened, what to do) for an OS error code, looking at the path where that helps."""
    if code in (errno.EEXIST, errno.ENOENT, errno.ENOTDIR) and _loops(path):
        return _ADVICE[errno.ELOOP]
    if code == errno.ENAMETOOLONG:
        return _too_long(path)
    return _ADVICE[code]


def describe_fault(err: BaseException, failed: str = "Could not finish") -> UserFacingError | None:
    """Return a UserFacingError for a fault of the machine (None: not one, so a bug).

    `failed` starts the message, e.g. "Cannot write the tiny model to './tiny'".
    """
    if isinstance(err, UserFacingError):
        return err
    code = fault_errno(err)
    if code in _ADVICE:
        path = _fault_path(err)
        reason, todo = _reason(code, path)
        shown = outside_work(path) if path else ""
        where = f" ({shorten(shown, 120)})" if shown and shown not in failed else ""
        return UserFacingError(f"{shorten(failed)}: {reason}{where}.", todo)
    network = _network_fault(err, failed)
    if network is not None:
        return network
    if any(isinstance(link, ValueError) and "null byte" in str(link) for link in _chain(err)):
        return UserFacingError(
            f"{failed}: a name holds a NUL character, which no file system takes.",
            "Check the name you typed or pasted.",
        )
    if isinstance(err, UnicodeEncodeError):
        return UserFacingError(
            f"{failed}: this console cannot show some characters ({err.encoding}).",
            "Use a UTF-8 console: set PYTHONIOENCODING=utf-8 (or a UTF-8 locale, LANG=C.UTF-8).",
        )
    if isinstance(err, MemoryError):
        return UserFacingError(f"{failed}: {_ADVICE[errno.ENOMEM][0]}.", _ADVICE[errno.ENOMEM][1])
    if isinstance(err, RuntimeError) and str(err) == "Could not determine home directory.":
        return UserFacingError(  # pathlib's expanduser(): "~name/..." for a user that is not here
            f"{failed}: a path starts with ~ and a name, the home folder of a user this machine "
            "does not have.",
            _NO_SUCH_USER_TODO,
        )
    return None


@contextmanager
def fault_boundary(failed: str, also: str = "") -> Iterator[None]:
    """Turn a fault of the machine inside the block into a UserFacingError starting `failed`.

    `also` is added to the fault's own advice. Other exceptions pass unchanged.
    """
    try:
        yield
    except UserFacingError:
        raise
    except Exception as err:
        found = describe_fault(err, failed)
        if found is None:
            raise
        raise UserFacingError(found.what, f"{found.todo} {also}".strip(), found.exit_code) from err


def require_writable(folder: str | os.PathLike, failed: str) -> None:
    """Raise UserFacingError if folder is on a file system mounted read-only.

    Checked before a free-space check: a read-only disk often reports no free space, and "the
    disk is full" would send you to delete files for nothing.
    """
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will tell
        return
    if read_only:
        reason, todo = _ADVICE[errno.EROFS]
        raise UserFacingError(f"{failed}: {reason}.", todo)


def hub_timeout_s() -> float:
    """Return the seconds a Hub call may take: $LLAMA2_COLAB_HUB_TIMEOUT, else HUB_TIMEOUT_S."""
    text = (os.environ.get(TIMEOUT_ENV) or "").strip()
    if not text:
        return HUB_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise UserFacingError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds.",
            f"Set it to a number such as 60, or unset it (default {HUB_TIMEOUT_S:.0f}).",
        )
    return seconds


def with_deadline(call: Callable[[], T], what: str, seconds: float | None = None) -> T:
    """Return call(), or raise UserFacingError if it takes longer than the deadline.

    `what` names the call for the message ("asking the Hub about meta-llama/..."). The call runs
    in a daemon thread: a server that never answers keeps only that thread waiting, never the
    caller or the end of the program. An exception from the call is raised here unchanged.
    """
    seconds = hub_timeout_s() if seconds is None else seconds
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller as it is
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"llama2_colab: {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        raise UserFacingError(
            f"The Hub at {endpoint} did not answer within {seconds:g} s while {what}: it timed "
            "out.",
            "Check the internet connection (on Colab: Runtime > Restart session) and HF_ENDPOINT "
            f"if you set it, then try again; {TIMEOUT_ENV}=60 waits longer. With "
            "HF_HUB_OFFLINE=1 only what is in your cache is used.",
        )
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def refuse_dangling_link(path: str | os.PathLike, what: str, todo: str) -> None:
    """Raise UserFacingError if path is a symbolic link that leads nowhere (or loops).

    `what` names it in the message ("OUT_DIR /x/hf"); `todo` says what to give instead.
    """
    path = Path(path)
    try:
        dangling = path.is_symlink() and not path.exists()
    except OSError:  # a name too long, a folder on the way that may not be read
        return
    if dangling:
        raise UserFacingError(
            f"{what} is a symbolic link to nothing: it points to a place that does not exist, "
            "or loops back on itself.",
            f"Fix or remove the link (`ls -l` shows where it points), or {todo}.",
        )


def _home_text() -> str:
    """$HOME; when it is unset or empty, the home folder the user database gives."""
    if (os.environ.get("HOME") or "").strip():
        return os.path.expanduser("~")
    if pwd is None:  # no user database (Windows)
        return os.path.expanduser("~")
    try:  # an empty HOME would make "~" the root folder, "/"
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # no entry for this user
        return os.path.expanduser("~")


_KINDS = (
    (stat.S_ISDIR, "a folder", ""),
    (stat.S_ISCHR, "a device", ": reading it might never end (as /dev/zero's never does)"),
    (stat.S_ISBLK, "a disk device", ""),
    (stat.S_ISFIFO, "a named pipe (FIFO)", ": reading it would wait for a writer"),
    (stat.S_ISSOCK, "a socket", ""),
)


def find_regular_file(path: str | os.PathLike, what: str, todo: str) -> bool:
    """Return True if path is a regular file (links followed), False if nothing is there.

    Anything else where a file should be is a UserFacingError naming it: a folder, a device, a
    named pipe, a link that leads nowhere or loops. `what` names the file in the message
    ("params.json in /x"); `todo` says what to put there instead.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR) and not path.is_symlink():
            return False
        if err.errno != errno.ELOOP:  # a link to nowhere; a loop is named a loop below
            refuse_dangling_link(path, what, todo)
        raise describe_fault(err, f"Cannot read {what}") or err from None
    if stat.S_ISREG(mode):
        return True
    noun, why = next(((n, w) for test, n, w in _KINDS if test(mode)), ("something else", ""))
    if path.is_symlink():
        what = f"{what} (a link to {os.readlink(path)})"
    raise UserFacingError(f"{what} is {noun}, not a file{why}.", f"Put the file there, or {todo}.")


_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def library_message(err: BaseException, limit: int = 300, named: bool = True) -> str:
    """Return "Type: message" of a library's exception, fit to quote in a message for you.

    Terminal escapes (colour codes) and control characters are removed, runs of white space
    become one, and a long message is cut at a word, with "...". `named=False`: the message
    alone.
    """
    text = " ".join(_ESCAPES.sub("", str(err)).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."
    name = type(err).__name__
    if not named:
        return text or name
    return f"{name}: {text}" if text else name


def home_folder() -> Path:
    """Return your home folder; UserFacingError if $HOME names no folder (missing, or a file).

    An empty HOME counts as unset (the user database names the home), never as "/".
    """
    home = Path(_home_text())
    if not home.is_dir():
        state = "is a file, not a folder" if home.exists() else "does not exist"
        raise UserFacingError(
            f"Your home folder {str(home)!r} (HOME) {state}, so nothing can be kept in it.",
            "Set HOME to a folder that exists, or set LLAMA2_COLAB_CACHE to a folder you can "
            "write to for the tiny model's cache (and HF_HOME for the Hub's).",
        )
    return home


def _no_such_user(path: str) -> UserFacingError:
    """The message for a path that starts with `~name` and no user of that name exists."""
    user = path[1:].replace(os.sep, "/").split("/", 1)[0]
    return UserFacingError(
        f"{path!r} starts with ~{user}, the home folder of a user named {user!r}, and this "
        "machine has no such user.",
        _NO_SUCH_USER_TODO,
    )


def expand_user(path: str | os.PathLike) -> Path:
    """Return path with a leading `~` or `~name` expanded; UserFacingError if no such home."""
    text = os.fspath(path)
    if text == "~" or text.startswith(("~/", "~" + os.sep)):
        return home_folder() / text[2:]
    if not text.startswith("~"):
        return Path(text)
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):  # left as it was: no user of that name
        raise _no_such_user(text)
    return Path(expanded)


def check_working_folder() -> None:
    """Raise UserFacingError if the current folder was deleted (every relative path fails)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserFacingError(
            "The current folder was deleted (or moved away) while your shell was in it, so "
            "nothing can be found or written relative to it.",
            "Go to a folder that exists (`cd ~`, or `cd /content` on Colab), then run the "
            "command again.",
        ) from None


def check_hub_endpoint() -> None:
    """Raise UserFacingError unless $HF_ENDPOINT, if set, is an http(s) URL with a host.

    huggingface_hub reads it when it is imported, and one that is no URL ("http://[::1")
    fails inside it, before any message could say which setting is wrong.
    """
    value = (os.environ.get("HF_ENDPOINT") or "").strip()
    if not value:
        return
    why = "it needs http:// or https:// and a host name"
    try:
        parts = urllib.parse.urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError as err:  # "Invalid IPv6 URL", a port that is no number
        ok, why = False, str(err)
    if not ok:
        raise UserFacingError(
            f"HF_ENDPOINT={value!r} is not the URL of a Hub ({why}).",
            "Unset HF_ENDPOINT to use https://huggingface.co, or set it to your mirror's URL, "
            "e.g. HF_ENDPOINT=https://hf-mirror.example.org.",
        )


def undecodable_text(text: str, what: str) -> UserFacingError | None:
    """A UserFacingError if the locale could not decode text (None: nothing undecoded in it).

    Python decodes the command line in the locale's encoding; in one that is not UTF-8
    (LANG=C without Python's UTF-8 mode) each byte of a non-ASCII character arrives as a lone
    surrogate ('\\udce6'). `what` names the text ("prompt").
    """
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return None
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":  # bytes that are no UTF-8: a damaged paste
        return None
    return UserFacingError(
        f"Your {what} holds characters that this console's locale ({encoding}) could not "
        "read: Python runs in a locale that is not UTF-8 (such as LANG=C).",
        "Run it in a UTF-8 locale: put LANG=C.UTF-8 (or PYTHONUTF8=1) before the command, "
        'e.g. `LANG=C.UTF-8 python -m llama2_colab demo "..."`.',
    )
