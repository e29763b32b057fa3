"""One exception type for problems the user can fix, and one redaction step for what they see.

Every error text shown to a user (a `UserFacingError`, the CLI's messages, even a traceback)
passes through `redact_secrets`, so a Hugging Face token that slipped into an exception message
(a URL, a header, a path, a mistyped argument) is shown masked, as `auth.mask_token` masks it.
"""

from __future__ import annotations

import os
import re

from .auth import mask_token

__all__ = ["UserFacingError", "redact_secrets"]

# User access tokens: "hf_" and 34 letters and digits today; older ones were a little shorter.
# Not inside a longer name: a folder called "llama-2-7b-hf_mergedLoraAdapterEpoch3" stays.
_HF_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])hf_[A-Za-z0-9]{20,}")
_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact_secrets(text: str) -> str:
    """Return text with every Hugging Face token in it masked (`hf_...wxyz`)."""
    text = str(text)
    # The token in the environment is masked even if it does not look like one (an old format).
    for var in _TOKEN_VARS:
        value = (os.environ.get(var) or "").strip()
        if len(value) >= 8 and value in text:
            text = text.replace(value, mask_token(value))
    return _HF_TOKEN.sub(lambda found: mask_token(found.group(0)), text)


class UserFacingError(Exception):
    """A problem the user can act on; the CLI prints it without a traceback."""

    def __init__(self, what: str, todo: str = "", exit_code: int = 1):
        what, todo = redact_secrets(what), redact_secrets(todo)
        super().__init__(f"{what}\n{todo}".strip())
        self.what = what
        self.todo = todo
        self.exit_code = exit_code
