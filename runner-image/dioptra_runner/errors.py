"""The runner's error types that several modules raise (kept apart so none imports another)."""

from __future__ import annotations

__all__ = ["EntryPointError"]


class EntryPointError(Exception):
    """The entry point cannot be loaded; ``str()`` is the user-facing message."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
