"""The one exception the sync package raises to its callers.

Every failure a user can cause or fix (a wrong bucket, bad credentials, an unsafe key) ends as a
`SyncError` whose message is a single line naming the source and the cause. The command prints
that line and exits non-zero; the runner copies it into the Experiment's status. Messages never
contain credentials.
"""

from __future__ import annotations


class SyncError(Exception):
    """A plugin sync or push failed; `str(error)` is a one-line message for humans."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ClientSetupError(Exception):
    """The S3 client could not be set up (no credentials, a profile that does not exist). The
    message is the cause alone; `messages.explain` puts the source it was needed for in front."""
