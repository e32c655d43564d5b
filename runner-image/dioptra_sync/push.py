"""`push_folder`: a local plugin folder -> `s3://bucket/prefix`, uploading only what changed.

Uses botocore (publishing is a user's command, not the init container's hot path). A file is
unchanged when an object of the same size exists whose ETag is the file's MD5 (we PUT single
part objects, so that holds for everything we uploaded).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dioptra_sync.engine import DEFAULT_WORKERS
from dioptra_sync.errors import SyncError
from dioptra_sync.local import walk_files
from dioptra_sync.progress import Progress
from dioptra_sync.uri import S3Source, parse_source
from dioptra_sync.work import guard, mib, run_parallel


@dataclass
class PushReport:
    """What a push did."""

    destination: str
    uploaded: int
    unchanged: int
    deleted: int
    remote_only: int
    bytes_uploaded: int
    seconds: float

    def summary(self) -> str:
        extra = ""
        if self.remote_only:
            extra = (
                f", {self.remote_only} remote objects not in the folder"
                " (kept; --delete removes them)"
            )
        return (
            f"pushed to {self.destination} in {self.seconds:.2f} s: {self.uploaded} uploaded "
            f"({mib(self.bytes_uploaded)}), {self.unchanged} unchanged, {self.deleted} deleted"
            + extra
        )


def push_folder(
    folder: Path,
    destination: str,
    *,
    endpoint_url: str | None = None,
    delete: bool = False,
    workers: int = DEFAULT_WORKERS,
    progress_stream: Any = None,
) -> PushReport:
    """Upload `folder`'s plugin files under `destination` (`s3://bucket/prefix`), incrementally.

    A file is unchanged when an object of the same size and an ETag equal to the file's MD5
    exists. Remote objects the folder lacks are deleted only with `delete=True`.
    """
    started = time.monotonic()
    target = parse_source(destination)
    if not isinstance(target, S3Source):
        raise SyncError(f"{destination}: push needs an s3://bucket/prefix destination")
    folder = Path(folder).absolute()
    local = walk_files(folder, label=str(folder))
    if not local:
        raise SyncError(f"{folder}: no plugin files to push")
    from dioptra_sync.s3 import delete_keys, list_for_push, make_client, md5_of, upload

    client = make_client(endpoint_url, workers)
    endpoint = str(client.meta.endpoint_url)
    remote = guard(endpoint, target, None, lambda: list_for_push(client, target))

    def changed(item: tuple[str, Path, os.stat_result]) -> bool:
        relative, path, stat = item
        existing = remote.get(relative)
        return existing is None or existing[0] != stat.st_size or existing[1] != md5_of(path)

    todo = [item for item in local if changed(item)]
    progress = Progress("pushing", len(todo), progress_stream)

    def put(item: tuple[str, Path, os.stat_result]) -> int:
        relative, path, stat = item
        guard(
            endpoint,
            target,
            target.prefix + relative,
            lambda: upload(client, target, relative, path),
        )
        progress.add_bytes(stat.st_size)
        progress.file_done()
        return stat.st_size

    sizes = run_parallel(todo, workers, put)
    progress.finish()
    names = {relative for relative, _, _ in local}
    extra = sorted(relative for relative in remote if relative not in names)
    if delete and extra:
        guard(endpoint, target, None, lambda: delete_keys(client, target, extra))
    return PushReport(
        destination=str(target),
        uploaded=len(todo),
        unchanged=len(local) - len(todo),
        deleted=len(extra) if delete else 0,
        remote_only=0 if delete else len(extra),
        bytes_uploaded=sum(sizes),
        seconds=time.monotonic() - started,
    )
