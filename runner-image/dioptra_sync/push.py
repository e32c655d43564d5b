"""`push_folder`: a local plugin folder -> `s3://bucket/prefix`, uploading only what changed;
`push_bundle`: the same folder as one digest-named tar.gz plus a `bundle.json` pointer.

Uses the sync's S3 client (obstore, `s3_obstore.py`). A file is unchanged when an object of
the same size exists whose ETag is the file's MD5 (we PUT single-part objects, so that holds
for everything we uploaded). A bundle is unchanged when an object of its name (its digest)
and size exists.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dioptra_sync.engine import DEFAULT_WORKERS
from dioptra_sync.errors import SyncError
from dioptra_sync.local import md5_of, walk_files
from dioptra_sync.progress import Progress
from dioptra_sync.uri import (
    BUNDLE_POINTER_NAME,
    BUNDLES_FOLDER,
    LocalSource,
    S3Source,
    bundle_key,
    parse_source,
)
from dioptra_sync.work import guard, mib, run_parallel

if TYPE_CHECKING:  # bundles import tarfile: only a bundle push pays for it
    from dioptra_sync.bundle import BundleInfo


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
    from dioptra_sync.s3_obstore import ObstoreClient

    client = guard("-", target, None, lambda: ObstoreClient(endpoint_url))
    endpoint = client.endpoint
    remote = guard(endpoint, target, None, lambda: client.list_for_push(target))

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
            lambda: client.upload(target, relative, path),
        )
        progress.add_bytes(stat.st_size)
        progress.file_done()
        return stat.st_size

    sizes = run_parallel(todo, workers, put)
    progress.finish()
    names = {relative for relative, _, _ in local}
    extra = sorted(relative for relative in remote if relative not in names)
    if delete and extra:
        guard(endpoint, target, None, lambda: client.delete_keys(target, extra))
    return PushReport(
        destination=str(target),
        uploaded=len(todo),
        unchanged=len(local) - len(todo),
        deleted=len(extra) if delete else 0,
        remote_only=0 if delete else len(extra),
        bytes_uploaded=sum(sizes),
        seconds=time.monotonic() - started,
    )


@dataclass
class BundlePushReport:
    """What a bundle push did; `pointer_uri` and `bundle_uri` are the sources to sync from."""

    folder: str
    info: BundleInfo
    bundle_uri: str
    pointer_uri: str
    uploaded: bool
    seconds: float

    def summary(self) -> str:
        state = "uploaded" if self.uploaded else "already there"
        return (
            f"pushed bundle sha256:{self.info.digest} of {self.folder} "
            f"({self.info.files} files, {mib(self.info.size)}, {state}) in {self.seconds:.2f} s; "
            f"sync it as {self.pointer_uri} (latest push) or {self.bundle_uri} (this bundle)"
        )


def push_bundle(
    folder: str | os.PathLike[str],
    destination: str,
    *,
    endpoint_url: str | None = None,
) -> BundlePushReport:
    """Pack `folder` into one deterministic tar.gz and publish it under `destination`.

    Where the files sit inside the bundle follows rsync's trailing-slash rule, as for sources:
    `"./acme"` packs `acme/...`, `"./plugins/"` packs the folder's contents at the top (pass
    a string to use the slash; a `Path` never has one). The bundle goes to
    `<prefix>/bundles/sha256-<hex>.tar.gz` (skipped when an object of that name and size
    exists), then `<prefix>/bundle.json` is pointed at it.
    """
    started = time.monotonic()
    target = parse_source(destination)
    if not isinstance(target, S3Source):
        raise SyncError(f"{destination}: push needs an s3://bucket/prefix destination")
    local = parse_source(os.fspath(folder))
    if not isinstance(local, LocalSource):
        raise SyncError(f"{os.fspath(folder)}: push --bundle needs a folder")
    from dioptra_sync import bundle
    from dioptra_sync.s3_obstore import ObstoreClient

    with tempfile.TemporaryDirectory(prefix="dioptra-bundle-") as scratch:
        archive = Path(scratch) / "bundle.tar.gz"
        info = guard(
            "-",
            local,
            None,
            lambda: bundle.pack(local.path, archive, root=local.folder, label=str(local)),
        )
        key = bundle_key(target.prefix, info.digest)
        relative = key[len(target.prefix) :]
        client = guard("-", target, None, lambda: ObstoreClient(endpoint_url))
        endpoint = client.endpoint
        folder_of_bundles = S3Source(target.bucket, f"{target.prefix}{BUNDLES_FOLDER}/")
        existing = guard(endpoint, target, None, lambda: client.list_for_push(folder_of_bundles))
        there = existing.get(relative[len(BUNDLES_FOLDER) + 1 :], (None, ""))[0] == info.size
        if not there:
            guard(endpoint, target, key, lambda: client.upload(target, relative, archive))
        pointer = Path(scratch) / BUNDLE_POINTER_NAME
        document = bundle.pointer_document(key, info)
        pointer.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        guard(
            endpoint,
            target,
            target.prefix + BUNDLE_POINTER_NAME,
            lambda: client.upload(target, BUNDLE_POINTER_NAME, pointer),
        )
    return BundlePushReport(
        folder=str(local),
        info=info,
        bundle_uri=f"s3://{target.bucket}/{key}",
        pointer_uri=f"s3://{target.bucket}/{target.prefix}{BUNDLE_POINTER_NAME}",
        uploaded=not there,
        seconds=time.monotonic() - started,
    )
