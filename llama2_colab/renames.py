"""Old names that still work: each warns (DeprecationWarning) and says the new name.

The library calls the model's context window `context_window` everywhere. Earlier releases had
five names for it (`limit`, `context_limit`, `max_context_tokens`, `model_context_tokens`,
`read_context_limit`); notebooks and scripts written against them keep running.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

__all__ = ["renamed_attribute", "renamed_function", "renamed_keywords", "warn_renamed"]


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that `old` is now called `new` (pointing at the caller's line)."""
    warnings.warn(
        f"`{old}` is now called `{new}`; the old name still works but will go away.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_attribute(old: str, new: str) -> property:
    """Return a property `old` that reads (and, if it can, writes) attribute `new`, warning."""

    def get(self):
        warn_renamed(old, new)
        return getattr(self, new)

    def set_(self, value) -> None:
        warn_renamed(old, new)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated: use `{new}`.")


def renamed_function(old: str, function: Callable) -> Callable:
    """Return `function` under its old name, warning on every call."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        warn_renamed(old, function.__name__)
        return function(*args, **kwargs)

    wrapper.__name__ = old
    wrapper.__doc__ = f"Deprecated: use `{function.__name__}`."
    return wrapper


def renamed_keywords(**old_to_new: str) -> Callable[[Callable], Callable]:
    """Decorate a function so that old keyword names still work (with a warning)."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"Pass `{new}` only (`{old}` is its old name).")
                    warn_renamed(old, new)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate
