"""One exception type for problems the user can fix, with what happened and what to do."""

from __future__ import annotations

__all__ = ["UserFacingError"]


class UserFacingError(Exception):
    """A problem the user can act on; the CLI prints it without a traceback."""

    def __init__(self, what: str, todo: str = "", exit_code: int = 1):
        super().__init__(f"{what}\n{todo}".strip())
        self.what = what
        self.todo = todo
        self.exit_code = exit_code
