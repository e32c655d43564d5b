"""Deciding what to do, with no I/O: merge listings, compare with the last sync, list actions.

The listing of every source and the previous manifest go in; a `Plan` (what to download, what
is unchanged, what to delete) comes out. Keeping this pure keeps the incremental rules testable
without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dioptra_sync.errors import SyncError
from dioptra_sync.manifest import ManifestEntry
from dioptra_sync.uri import check_relative_key, is_skipped_name


@dataclass(frozen=True)
class SourceFile:
    """One file offered by a source: an S3 object or a file in a local folder.

    `token` identifies the content without reading it: the ETag for S3, the modification time
    in nanoseconds for a local file (copies keep it, so a copy is current when size and mtime
    match its original).

    `size` is None only for an object fetched without a listing (a bundle named by its digest,
    or a bundle pointer): a backend then checks the body against the response's length.
    Files in a listing always have their size.
    """

    source: str
    key: str  # the S3 key, or the absolute path of a local file
    path: str  # where it lands, relative to the destination, "/"-separated and checked safe
    size: int | None
    token: str
    local: bool = False


@dataclass(frozen=True)
class Override:
    """A path offered by several sources: the later `winner` replaces the earlier `loser`."""

    path: str
    winner: str
    loser: str


@dataclass
class Plan:
    """What a sync will do."""

    files: dict[str, SourceFile]  # path -> the winning file, in listing order
    download: list[SourceFile] = field(default_factory=list)
    unchanged: list[ManifestEntry] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)


def remote_files_from_listing(
    source: str, prefix: str, listing: Iterable[tuple[str, int, str]]
) -> tuple[list[SourceFile], int]:
    """(key, size, ETag) entries of an S3 listing -> `SourceFile`s, plus how many were skipped.

    Folder markers (keys ending in "/" with no content) and names that are never plugins
    (dotfiles, `__pycache__`, `.pyc`) are skipped; any other key that would land outside the
    destination raises `SyncError`, before anything is downloaded.
    """
    files: list[SourceFile] = []
    skipped = 0
    for key, size, etag in listing:
        relative = key[len(prefix) :]
        if relative.endswith("/") and size == 0:
            continue
        check_relative_key(relative, source=source)
        if any(is_skipped_name(part) for part in relative.split("/")):
            skipped += 1
            continue
        files.append(SourceFile(source, key, relative, size, etag.strip('"')))
    return files, skipped


def merge(listings: Sequence[Iterable[SourceFile]]) -> tuple[dict[str, SourceFile], list[Override]]:
    """Merge listings in order: a later source wins on the same path.

    A path that is a file in one place and a folder in another cannot exist on disk; that is
    refused here, before anything is written.
    """
    files: dict[str, SourceFile] = {}
    overrides: list[Override] = []
    for listing in listings:
        for remote in listing:
            previous = files.get(remote.path)
            if previous is not None and previous.source != remote.source:
                overrides.append(Override(remote.path, remote.source, previous.source))
            files[remote.path] = remote
    _refuse_file_folder_clashes(files)
    return files, overrides


def _refuse_file_folder_clashes(files: Mapping[str, SourceFile]) -> None:
    folders: set[str] = set()
    for path in files:
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clashes = sorted(folders.intersection(files))
    if clashes:
        remote = files[clashes[0]]
        raise SyncError(
            f"{remote.source}: {clashes[0]!r} is both a file and a folder across the sources"
        )


def make_plan(
    listings: Sequence[Iterable[SourceFile]],
    previous: Mapping[str, ManifestEntry],
    local_state: Callable[[str], tuple[int, int] | None],
) -> Plan:
    """Compare the merged listings with the previous manifest and the files on disk.

    `local_state(path)` returns `(size, mtime_ns)` of the destination file or None if absent.
    An S3 file is unchanged when the manifest recorded the same source, key, size and ETag and
    the file on disk still has that size; a local file when the copy's size and mtime match.
    Files recorded in the previous manifest that no source offers any more are deleted; files
    the sync never wrote are left alone.
    """
    files, overrides = merge(listings)
    plan = Plan(files=files, overrides=overrides)
    for path, remote in files.items():
        entry = previous.get(path)
        state = local_state(path)
        if entry is not None and state is not None and _is_current(remote, entry, state):
            plan.unchanged.append(entry)
        else:
            plan.download.append(remote)
    plan.delete = sorted(path for path in previous if path not in files)
    return plan


def _is_current(remote: SourceFile, entry: ManifestEntry, state: tuple[int, int]) -> bool:
    size, mtime_ns = state
    if entry.source != remote.source or entry.key != remote.key or size != remote.size:
        return False
    if remote.local:
        return str(mtime_ns) == remote.token and entry.size == remote.size
    return entry.etag == remote.token and entry.size == remote.size
