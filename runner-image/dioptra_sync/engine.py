"""`sync_sources`: S3 prefixes, bundles or local folders -> a plugin folder (push: `push.py`).

Order of a sync: list every source (in parallel; a bundle source is first resolved, fetched
and unpacked into `DEST/.dioptra-bundles/`, see `bundle_fetch.py`, and its unpacked folder is
then listed like a local folder), plan against the previous manifest, download or copy what
changed (in parallel, each file atomically), delete what is gone, write the manifest, and
drop cached bundles this sync did not use. Any error stops the work and raises `SyncError`;
the manifest is only written after success, so an interrupted sync is simply redone next time.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dioptra_sync.backend import Backend, make_backend
from dioptra_sync.errors import SyncError
from dioptra_sync.local import copy_file, link_file, list_local, no_progress
from dioptra_sync.manifest import (
    ManifestEntry,
    manifest_document,
    read_manifest,
    write_manifest,
)
from dioptra_sync.plan import Override, SourceFile, make_plan
from dioptra_sync.progress import Progress
from dioptra_sync.uri import (
    BUNDLE_CACHE_FOLDER,
    BundleSource,
    LocalSource,
    S3Source,
    Source,
    parse_source,
)
from dioptra_sync.work import guard, mib, plural, run_parallel

DEFAULT_WORKERS = 16
LARGE_FILE = 1024 * 1024
LARGE_SLOTS = 4
"""At most this many files of LARGE_FILE bytes or more are transferred at once: measured
here, ten 5 MiB GETs in parallel took 0.79 s and four at a time 0.31 s (Python threads
streaming large bodies contend for the interpreter lock; small files do not)."""
T = TypeVar("T")

if TYPE_CHECKING:  # bundles import tarfile (~20 ms): only syncs that use them pay for it
    from dioptra_sync.bundle_fetch import ResolvedBundle


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
    bundles: list[ResolvedBundle] = field(default_factory=list)

    def summary(self) -> str:
        total = self.downloaded + self.unchanged
        bundles = "".join(
            f", bundle sha256:{b.info.digest[:12]} ({'fetched' if b.fetched else 'cached'})"
            for b in self.bundles
        )
        return (
            f"synced {plural(total, 'file')} from {plural(len(self.sources), 'source')} "
            f"into {self.dest} in {self.seconds:.2f} s: "
            f"{self.downloaded} downloaded ({mib(self.bytes_downloaded)}), "
            f"{self.unchanged} unchanged, {self.deleted} deleted"
            + (f", {self.skipped} skipped (dotfiles, __pycache__, .pyc)" if self.skipped else "")
            + (f", {len(self.overrides)} overridden by later sources" if self.overrides else "")
            + bundles
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
    backend = _backend_if_needed(parsed, endpoint_url)
    uses_bundles = any(isinstance(source, BundleSource) for source in parsed)
    cache = None
    if uses_bundles:
        from dioptra_sync.bundle import cache_root

        cache = cache_root(dest)
    try:
        listings, skipped, bundles = _list_all(parsed, backend, allow_empty, cache)
    except SyncError:
        if cache is not None:
            with contextlib.suppress(OSError):
                cache.rmdir()  # created by this sync and still empty: leave DEST as it was
        raise
    previous = read_manifest(dest)
    plan = make_plan(listings, previous, lambda path: _local_state(dest, path))

    checked: set[Path] = set()  # folders verified safe during this sync
    linkable = {path: sha256 for b in bundles for path, sha256 in b.linkable().items()}
    # Bundle files are hard links, cheaper in one thread than the cost of handing them out.
    fresh = [
        _link(remote, dest, linkable[remote.key], checked)
        for remote in plan.download
        if remote.key in linkable
    ]
    # Largest first: the long transfers start at once and small files fill the other workers.
    order = sorted(
        (remote for remote in plan.download if remote.key not in linkable),
        key=lambda remote: -(remote.size or 0),
    )
    progress = Progress("syncing", len(order), progress_stream)
    large = threading.BoundedSemaphore(LARGE_SLOTS)
    fresh += run_parallel(
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
        [resolved.to_json() for resolved in bundles],
    )
    guard("-", str(dest), None, lambda: write_manifest(dest, document))
    _drop_unused_bundles(dest, {resolved.folder.name for resolved in bundles})
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
        bundles=bundles,
    )


def _backend_if_needed(parsed: list[Source], endpoint_url: str | None) -> Backend | None:
    if not any(
        isinstance(source, S3Source) or (isinstance(source, BundleSource) and not source.local)
        for source in parsed
    ):
        return None  # local folders and files only: never import or configure an S3 client
    return make_backend(endpoint_url)


def _list_all(
    parsed: list[Source], backend: Backend | None, allow_empty: bool, cache: Path | None
) -> tuple[list[list[SourceFile]], int, list[ResolvedBundle]]:
    """Every source's files (in parallel), the skipped count, and the bundles resolved."""
    one_bundle_at_a_time = threading.Lock()  # two sources may name the same digest

    def one(source: Source) -> tuple[list[SourceFile], int, ResolvedBundle | None]:
        resolved = None
        if isinstance(source, BundleSource):
            from dioptra_sync.bundle_fetch import resolve_and_list

            assert cache is not None
            with one_bundle_at_a_time:
                resolved, files = resolve_and_list(source, backend, cache)
            skipped = 0
        elif isinstance(source, LocalSource):
            files = list_local(source)
            skipped = 0
        else:
            assert backend is not None
            s3_source = source
            files, skipped = guard(
                backend.endpoint, source, None, lambda: backend.list_files(s3_source)
            )
        folder = "" if isinstance(source, BundleSource) else source.folder
        if folder:
            files = [replace(f, path=f"{folder}/{f.path}") for f in files]
        if not files and not allow_empty:
            where, hint = "under the folder", "wrong prefix? "
            if isinstance(source, BundleSource):
                where, hint = "in the bundle", ""
            elif isinstance(source, S3Source):
                where = f"under prefix {source.prefix!r}" if source.prefix else "under the bucket"
            raise SyncError(
                f"{source}: no plugin files {where} ({hint}pass --allow-empty "
                "to accept an empty source)"
            )
        return files, skipped, resolved

    results = run_parallel(parsed, len(parsed), one)
    return (
        [files for files, _, _ in results],
        sum(skipped for _, skipped, _ in results),
        [resolved for _, _, resolved in results if resolved is not None],
    )


def _drop_unused_bundles(dest: Path, keep: set[str]) -> None:
    """After a good sync, remove cached bundles (and leftovers) this sync did not use."""
    root = dest / BUNDLE_CACHE_FOLDER
    if os.path.isdir(root) and not os.path.islink(root):
        from dioptra_sync.bundle import prune

        guard("-", str(dest), None, lambda: prune(root, keep))


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
    if (remote.size or 0) >= LARGE_FILE:
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
        entry = ManifestEntry(remote.path, remote.source, remote.key, remote.size or 0, sha256)
    else:
        assert backend is not None
        sha256, etag, version_id = guard(
            backend.endpoint,
            remote.source,
            remote.key,
            lambda: backend.download(remote, target, progress.add_bytes),
        )
        entry = ManifestEntry(
            remote.path, remote.source, remote.key, remote.size or 0, sha256, etag, version_id
        )
    progress.file_done()
    return entry


def _link(remote: SourceFile, dest: Path, sha256: str, checked: set[Path]) -> ManifestEntry:
    """A file of an unpacked bundle: hard-linked from the cache (copied where links fail)."""
    target = _safe_target(dest, remote, checked)

    def work() -> None:
        if not link_file(remote, target):
            copy_file(remote, target, no_progress)

    guard("-", remote.source, remote.key, work)
    return ManifestEntry(remote.path, remote.source, remote.key, remote.size or 0, sha256)


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
