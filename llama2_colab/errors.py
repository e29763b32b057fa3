"""One exception type for problems the user can fix, and one redaction step for what they see.

Every text shown to a user (a `UserFacingError`, everything the CLI prints, even a traceback)
passes through `redact_secrets`, so a Hugging Face token that slipped into a message (a URL, a
header, a path, a prompt, a mistyped argument) is shown masked, as `mask_token` masks it. Text
that arrives in pieces (a streamed reply) goes through a `StreamRedactor`, which holds back a
piece that could be the start of a token until the next piece decides it. Log records, which
transformers and huggingface_hub print through handlers of their own (a load report names the
model's folder), are redacted as they are made, once `redact_log_records` has run.

Which exception a caller gets:

- `UserFacingError` for what the user fixes outside the code: a file, a folder, a config, the
  disk, the network, the Hub, input typed into the CLI or the chat app. The CLI prints it
  without a traceback (what happened, then what to do).
- `TypeError` (wrong type) or `ValueError` (wrong value) for a Python caller's bad argument to a
  library function, each saying what to pass, as Python's own functions do.
"""

from __future__ import annotations

import logging
import os
import re
import traceback

__all__ = [
    "UserFacingError",
    "StreamRedactor",
    "mask_token",
    "redact_log_records",
    "redact_secrets",
    "shorten",
]

# User access tokens are "hf_" and 34 letters and digits today; older ones were a little shorter.
# At the start of a word, "hf_" and 20 or more is a token. Inside a name (after a letter, a digit,
# "_" or "-"), "hf_" and 34 or more is: no one names a folder with 34 letters and digits in a
# row, so "llama-2-7b-hf_mergedLoraAdapterEpoch3" stays and "my_hf_<34 characters>" is masked.
# A token never runs into a next "hf_": two tokens pasted together are two tokens.
_HF_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])hf_(?:(?!hf_)[A-Za-z0-9]){20,}|hf_(?:(?!hf_)[A-Za-z0-9]){34,}"
)
# The end of a text whose redaction the next piece could still change: a chain of "hf_" runs,
# or the start of one ("h", "hf").
_UNDECIDED_END = re.compile(r"(?:hf_[A-Za-z0-9]*)*(?:hf?)?\Z")
# What `mask_token` shows instead of a token: "hf_...wxyz", "...wxyz", or stars for a short one.
_MASK = re.compile(r"(?:hf_)?\.\.\.\S{4}|\*{8}")
_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A word longer than this is shown by its two ends (a 5,000-character "model name").
LONG_WORD = 500


def mask_token(token: str | None) -> str:
    """Return a token safe to show: its prefix and last four characters only."""
    if not token:
        return "(none)"
    token = token.strip()
    if len(token) <= 8:
        return "*" * len(token)
    prefix = "hf_" if token.startswith("hf_") else ""
    return f"{prefix}...{token[-4:]}"


def _env_tokens() -> list[str]:
    """The tokens set in the environment (masked even if they do not look like one)."""
    values = ((os.environ.get(var) or "").strip() for var in _TOKEN_VARS)
    return [value for value in values if len(value) >= 8]


def redact_secrets(text: str) -> str:
    """Return text with every Hugging Face token in it masked (`hf_...wxyz`)."""
    text = str(text)
    for value in _env_tokens():
        if value in text:
            text = text.replace(value, mask_token(value))
    return _HF_TOKEN.sub(lambda found: mask_token(found.group(0)), text)


def shorten(text: str, limit: int = LONG_WORD) -> str:
    """Return text redacted, each word longer than limit shown by its ends and its length.

    Redaction comes first: a token cut in two no longer looks like one, so shortening first
    would show most of it. A cut never falls inside a mask (`hf_...4567` stays whole).
    """

    def cut(found: re.Match) -> str:
        word = found.group(0)
        head, tail = 60, len(word) - 20
        for mask in _MASK.finditer(word):
            if mask.start() < head < mask.end():
                head = mask.end()
            if mask.start() < tail < mask.end():
                tail = mask.start()
        if head >= tail:
            return word
        return f"{word[:head]}...{word[tail:]} ({len(word):,} characters)"

    return re.sub(rf"\S{{{limit + 1},}}", cut, redact_secrets(text))


def _redacted_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message, traceback and stack masked (unchanged if they hold none)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format: logging reports it when it is emitted
        return record
    shown = redact_secrets(message)
    if shown != message:
        record.msg, record.args = shown, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact_secrets("".join(traceback.format_exception(*record.exc_info)))
        record.exc_text = record.exc_text.rstrip("\n")  # as logging.Formatter writes it
    if record.stack_info:
        record.stack_info = redact_secrets(record.stack_info)
    return record


def redact_log_records() -> None:
    """Make every log record this process makes from now on carry its tokens masked.

    transformers and huggingface_hub print their logs through handlers of their own, which this
    package never sees (transformers' LOAD REPORT names the model's folder, a Hub log names a
    repository), so the redaction sits where every record is made: logging's record factory,
    for every logger and handler, present or added later. Calling it again changes nothing.
    The CLI and the functions that load a model call it.
    """
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts_secrets", False):
        return

    def make_redacted(*args, **kwargs) -> logging.LogRecord:
        return _redacted_record(make(*args, **kwargs))

    make_redacted.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_redacted)


class StreamRedactor:
    """Redact text that arrives in pieces: `feed` each piece, print what it returns, then `flush`.

    A token can be split across pieces (`...hf_AbC` then `dEf...`), so the end of the text that
    could still become a token is held back until a later piece decides it. What comes out,
    joined, equals `redact_secrets` of the whole text. At most `max_hold` characters wait.
    """

    def __init__(self, max_hold: int = 256):
        self.max_hold = max_hold
        self._pending = ""
        self._before = ""  # the last character already given out: a token's left neighbour

    def feed(self, piece: str) -> str:
        """Take the next piece; return the text that is safe to show now (maybe "")."""
        self._pending += str(piece)
        cut = self._undecided_from(self._pending)
        if len(self._pending) - cut > self.max_hold:
            cut = len(self._pending)
        return self._release(cut)

    def flush(self) -> str:
        """Return what is still held back, redacted: the text has ended."""
        return self._release(len(self._pending))

    def _undecided_from(self, text: str) -> int:
        """The index from which text could still be (part of) a token."""
        cut = _UNDECIDED_END.search(text).start()
        for value in _env_tokens():
            for k in range(min(len(value) - 1, len(text)), 0, -1):
                if text.endswith(value[:k]):
                    cut = min(cut, len(text) - k)
                    break
        return cut

    def _release(self, cut: int) -> str:
        """Give out pending[:cut], redacted with the character before it as context."""
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        if not ready:
            return ""
        shown = redact_secrets(self._before + ready)[len(self._before) :]
        self._before = ready[-1]
        return shown


class UserFacingError(Exception):
    """A problem the user can act on; the CLI prints it without a traceback."""

    def __init__(self, what: str, todo: str = "", exit_code: int = 1):
        what, todo = shorten(what), shorten(todo)  # redacted, then long words shortened
        super().__init__(f"{what}\n{todo}".strip())
        self.what = what
        self.todo = todo
        self.exit_code = exit_code
