"""What a sync needs from S3, and the one client that provides it.

The protocol keeps the engine free of any client's types (the engine's tests can list and
download through anything with these two methods); `make_backend` gives the real one,
obstore (`s3_obstore.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dioptra_sync.plan import SourceFile
from dioptra_sync.uri import S3Source


class Backend(Protocol):
    """What a sync needs from S3."""

    endpoint: str

    def list_files(self, source: S3Source) -> tuple[list[SourceFile], int]: ...

    def download(
        self, remote: SourceFile, target: Path, on_bytes: Callable[[int], None]
    ) -> tuple[str, str | None, str | None]:
        """GET `remote.key` of `remote.source`'s bucket into `target` atomically, pinned to
        the ETag `remote.token` (unpinned when it is empty); return (sha256, ETag, VersionId)."""
        ...


def make_backend(endpoint_url: str | None) -> Backend:
    """The S3 client for this environment (imported only when a source is in S3)."""
    from dioptra_sync.s3_obstore import ObstoreClient

    return ObstoreClient(endpoint_url)
