"""`sync_sources`: S3 prefixes or local folders -> a plugin folder (push is in `push.py`).

Order of a sync: list every source (in parallel), plan against the previous manifest, download
what changed (in parallel, each file atomically), delete what is gone, then write the manifest.
Any error stops the work and raises `SyncError`; the manifest is only written after success,
so an interrupted sync is simply redone next time.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from dioptra_sync.backend import Backend, make_backend
from dioptra_sync.errors import SyncError
from dioptra_sync.local import copy_file, list_local
from dioptra_sync.manifest import (
    ManifestEntry,
    manifest_document,
    read_manifest,
    write_manifest,
)
from dioptra_sync.plan import Override, SourceFile, make_plan
from dioptra_sync.progress import Progress
from dioptra_sync.uri import LocalSource, S3Source, Source, parse_source
from dioptra_sync.work import guard, mib, plural, run_parallel

DEFAULT_WORKERS = 16
LARGE_FILE = 1024 * 1024
LARGE_SLOTS = 4
"""At most this many files of LARGE_FILE bytes or more are transferred at once: measured
here, ten 5 MiB GETs in parallel took 0.79 s and four at a time 0.31 s (Python threads
streaming large bodies contend for the interpreter lock; small files do not)."""
T = TypeVar("T")


@dataclass
class SyncReport:
    """What a sync did. `manifest` is the document written to `DIR/.dioptra-plugins.json`."""

    dest: Path
    sources: list[str]
    downloaded: int
    unchanged: int
    deleted: int
    skipped: int
    bytes_downloaded: int
    seconds: float
    overrides: list[Override] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        total = self.downloaded + self.unchanged
        return (
            f"synced {plural(total, 'file')} from {plural(len(self.sources), 'source')} "
            f"into {self.dest} in {self.seconds:.2f} s: "
            f"{self.downloaded} downloaded ({mib(self.bytes_downloaded)}), "
            f"{self.unchanged} unchanged, {self.deleted} deleted"
            + (f", {self.skipped} skipped (dotfiles, __pycache__, .pyc)" if self.skipped else "")
            + (f", {len(self.overrides)} overridden by later sources" if self.overrides else "")
        )


def sync_sources(
    sources: Sequence[str],
    dest: Path,
    *,
    endpoint_url: str | None = None,
    allow_empty: bool = False,
    workers: int = DEFAULT_WORKERS,
    base: Path | None = None,
    progress_stream: Any = None,
) -> SyncReport:
    """Sync `sources` (merged in order, a later one wins on the same path) into `dest`.

    Raises `SyncError` with a one-line message on any failure.
    """
    started = time.monotonic()
    if not sources:
        raise SyncError("no plugin sources given")
    parsed = [parse_source(text, base=base) for text in sources]
    dest = Path(dest).absolute()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SyncError(f"{dest}: cannot create the destination ({error.strerror})") from None
    backend = _backend_if_needed(parsed, endpoint_url, workers)
    listings, skipped = _list_all(parsed, backend, allow_empty)
    previous = read_manifest(dest)
    plan = make_plan(listings, previous, lambda path: _local_state(dest, path))

    progress = Progress("syncing", len(plan.download), progress_stream)
    large = threading.BoundedSemaphore(LARGE_SLOTS)
    checked: set[Path] = set()  # folders verified safe during this sync
    # Largest first: the long transfers start at once and small files fill the other workers.
    order = sorted(plan.download, key=lambda remote: -remote.size)
    fresh = run_parallel(
        order, workers, lambda remote: _fetch(backend, remote, dest, progress, large, checked)
    )
    progress.finish()
    for path in plan.delete:
        guard("-", str(dest), path, partial(_remove, dest, path))
    entries = plan.unchanged + fresh
    document = manifest_document(
        [str(source) for source in parsed],
        entries,
        datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    guard("-", str(dest), None, lambda: write_manifest(dest, document))
    return SyncReport(
        dest=dest,
        sources=[str(source) for source in parsed],
        downloaded=len(fresh),
        unchanged=len(plan.unchanged),
        deleted=len(plan.delete),
        skipped=skipped,
        bytes_downloaded=sum(entry.size for entry in fresh),
        seconds=time.monotonic() - started,
        overrides=plan.overrides,
        manifest=document,
    )


def _backend_if_needed(
    parsed: list[Source], endpoint_url: str | None, workers: int
) -> Backend | None:
    if not any(isinstance(source, S3Source) for source in parsed):
        return None  # local folders only: never import or configure an S3 client
    return make_backend(endpoint_url, workers)


def _list_all(
    parsed: list[Source], backend: Backend | None, allow_empty: bool
) -> tuple[list[list[SourceFile]], int]:
    def one(source: Source) -> tuple[list[SourceFile], int]:
        if isinstance(source, LocalSource):
            files = list_local(source)
            skipped = 0
        else:
            assert backend is not None
            files, skipped = guard(
                backend.endpoint, source, None, lambda: backend.list_files(source)
            )
        if source.folder:
            files = [replace(f, path=f"{source.folder}/{f.path}") for f in files]
        if not files and not allow_empty:
            where = "the folder"
            if isinstance(source, S3Source):
                where = f"prefix {source.prefix!r}" if source.prefix else "the bucket"
            raise SyncError(
                f"{source}: no plugin files under {where} (wrong prefix? pass --allow-empty "
                "to accept an empty source)"
            )
        return files, skipped

    results = run_parallel(parsed, len(parsed), one)
    return [files for files, _ in results], sum(skipped for _, skipped in results)


def _local_state(dest: Path, relative: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(dest / relative)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _fetch(
    backend: Backend | None,
    remote: SourceFile,
    dest: Path,
    progress: Progress,
    large: threading.BoundedSemaphore,
    checked: set[Path],
) -> ManifestEntry:
    if remote.size >= LARGE_FILE:
        with large:
            return _fetch_now(backend, remote, dest, progress, checked)
    return _fetch_now(backend, remote, dest, progress, checked)


def _fetch_now(
    backend: Backend | None,
    remote: SourceFile,
    dest: Path,
    progress: Progress,
    checked: set[Path],
) -> ManifestEntry:
    target = _safe_target(dest, remote, checked)
    if remote.local:
        sha256 = guard(
            "-", remote.source, remote.key, lambda: copy_file(remote, target, progress.add_bytes)
        )
        entry = ManifestEntry(remote.path, remote.source, remote.key, remote.size, sha256)
    else:
        assert backend is not None
        sha256, etag, version_id = guard(
            backend.endpoint,
            remote.source,
            remote.key,
            lambda: backend.download(remote, target, progress.add_bytes),
        )
        entry = ManifestEntry(
            remote.path, remote.source, remote.key, remote.size, sha256, etag, version_id
        )
    progress.file_done()
    return entry


def _safe_target(dest: Path, remote: SourceFile, checked: set[Path]) -> Path:
    """Create the file's folders one by one, refusing any that is a symlink or not a folder.

    The key was already checked for `..` and friends; this also stops a symlinked folder
    inside `dest` from leading writes elsewhere, before anything (even a folder) is created
    through it. Checked folders are remembered, so a tree of 1,000 files costs one `lstat`
    per folder, not per file.
    """
    folder = dest
    for part in remote.path.split("/")[:-1]:
        folder = folder / part
        if folder in checked:
            continue
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            try:
                folder.mkdir(exist_ok=True)
            except OSError as error:
                raise SyncError(
                    f"{remote.source}: cannot create folder for {remote.path!r} ({error.strerror})"
                ) from None
            mode = os.lstat(folder).st_mode
        if stat.S_ISLNK(mode):
            raise SyncError(
                f"{remote.source}: refusing {remote.path!r}: its folder {part!r} in {dest} "
                "is a symlink, and writing through it could leave the destination"
            )
        if not stat.S_ISDIR(mode):
            raise SyncError(f"{remote.source}: refusing {remote.path!r}: {part!r} is not a folder")
        checked.add(folder)
    target = dest / remote.path
    if target.is_symlink() or target.is_dir():
        raise SyncError(
            f"{remote.source}: refusing {remote.path!r}: a folder or symlink is in the way"
        )
    return target


def _remove(dest: Path, relative: str) -> None:
    """Delete a file the previous sync wrote, then any folders it leaves empty."""
    path = dest / relative
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != dest:
        try:
            parent.rmdir()
        except OSError:
            break  # not empty (or gone): stop climbing
        parent = parent.parent
