"""Resolving a bundle source to an unpacked folder in the destination's bundle cache.

A pointer (`.../bundle.json`) costs one GET of a small JSON; the bundle itself one GET, and
none when its digest is already unpacked in `DEST/.dioptra-bundles/` (so a no-op re-sync of a
digest-named source makes no request at all). The bytes are checked against the digest before
anything is unpacked. The engine then lists the unpacked folder like a local folder source,
so merging, incremental copies, deletions and atomic writes are the sync's usual ones.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dioptra_sync import bundle
from dioptra_sync.backend import Backend
from dioptra_sync.bundle import BundleInfo, Unpacked
from dioptra_sync.errors import SyncError
from dioptra_sync.local import list_local, no_progress
from dioptra_sync.plan import SourceFile
from dioptra_sync.uri import TEMP_MARKER, BundleSource, LocalSource
from dioptra_sync.work import guard


@dataclass(frozen=True)
class ResolvedBundle:
    """A bundle ready to be listed: where it is unpacked, what it is, how it was found."""

    source: str  # as the user wrote it (the pointer's or the bundle's URI, or a path)
    folder: Path  # the unpacked tree in the cache
    info: BundleInfo
    key: str  # the bundle's object key (or the local file's path)
    pointer: str | None  # the pointer's key, when resolved through one
    fetched: bool  # downloaded and unpacked by this sync (False: it was cached)
    sha256: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(
        cls, source: object, unpacked: Unpacked, key: str, pointer: str | None, fetched: bool
    ) -> ResolvedBundle:
        return cls(
            str(source), unpacked.folder, unpacked.info, key, pointer, fetched, unpacked.sha256
        )

    def linkable(self) -> dict[str, str]:
        """Absolute path of each unpacked file -> its sha256: what the sync may hard-link."""
        return {str(self.folder / path): sha256 for path, sha256 in self.sha256.items()}

    def to_json(self) -> dict[str, Any]:
        """The manifest's record of this bundle."""
        data: dict[str, Any] = {
            "source": self.source,
            "digest": f"sha256:{self.info.digest}",
            "key": self.key,
            "size": self.info.size,
            "files": self.info.files,
        }
        if self.pointer is not None:
            data["pointer"] = self.pointer
        return data


def resolve_and_list(
    source: BundleSource, backend: Backend | None, root: Path
) -> tuple[ResolvedBundle, list[SourceFile]]:
    """Resolve `source` and list its unpacked files as a local folder labelled with its URI.

    A cached folder whose files no longer match its index (someone deleted or added files in
    `DEST/.dioptra-bundles/`) is dropped and fetched again rather than trusted: otherwise the
    sync would delete, from DEST, the plugin files missing from the damaged copy.
    """
    for attempt in range(2):
        resolved = resolve(source, backend, root)
        unpacked = LocalSource(path=resolved.folder)
        files = list_local(unpacked, label=str(source), regular_only=True)
        if {f.path for f in files} == resolved.sha256.keys():
            return resolved, files
        if attempt == 0:
            shutil.rmtree(resolved.folder, ignore_errors=True)
    raise SyncError(f"{source}: the unpacked bundle in {resolved.folder} does not match its index")


def resolve(source: BundleSource, backend: Backend | None, root: Path) -> ResolvedBundle:
    """Find `source`'s digest, fetch and unpack it into `root` unless cached, and return it."""
    if source.local:
        return _resolve_local(source, root)
    assert backend is not None
    key, digest, pointer = source.key, source.digest, None
    if source.is_pointer:
        key, expected = _read_pointer(source, backend, root)
        digest, pointer = expected.digest, source.key
    assert digest is not None  # a digest-named source carries its digest
    hit = bundle.cached(root, digest)
    if hit is not None:
        return ResolvedBundle.of(source, hit, key, pointer, fetched=False)
    archive = root / f"{TEMP_MARKER}{os.getpid()}-sha256-{digest}.tar.gz"
    try:
        actual = _get(backend, source, key, archive)
        if actual != digest:
            named = "its pointer names" if pointer else "its name says"
            raise SyncError(
                f"{source}: the bundle {key!r} has content sha256:{actual}, not the "
                f"sha256:{digest} {named}; nothing was unpacked"
            )
        info = BundleInfo(digest=digest, size=archive.stat().st_size, files=0)
        guard("-", source, None, lambda: bundle.install(root, archive, info, source=str(source)))
    finally:
        archive.unlink(missing_ok=True)
    hit = bundle.cached(root, digest)
    assert hit is not None  # just installed
    return ResolvedBundle.of(source, hit, key, pointer, fetched=True)


def _read_pointer(source: BundleSource, backend: Backend, root: Path) -> tuple[str, BundleInfo]:
    temp = root / f"{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}-pointer.json"
    try:
        _get(backend, source, source.key, temp)
        with open(temp, "rb") as handle:
            data = handle.read(bundle.MAX_POINTER_BYTES + 1)
    finally:
        temp.unlink(missing_ok=True)
    return bundle.parse_pointer(data, source=str(source))


def _get(backend: Backend, source: BundleSource, key: str, target: Path) -> str:
    """One unpinned GET of `key` in the source's bucket into `target`; its sha256.

    Unpinned and of unknown size: a digest-named object is checked against its digest, and a
    pointer is small and validated as it is read.
    """
    remote = SourceFile(
        source=str(source), key=key, path=key.rsplit("/", 1)[-1], size=None, token=""
    )
    sha256, _, _ = guard(
        backend.endpoint, source, key, lambda: backend.download(remote, target, no_progress)
    )
    return sha256


def _resolve_local(source: BundleSource, root: Path) -> ResolvedBundle:
    """A `.tar.gz` on this machine (`dioptra run` on a laptop): hashed, then unpacked unless
    that digest is cached."""
    path = Path(source.key)
    if not path.is_file():
        raise SyncError(f"{source}: no such bundle file")
    digest = guard("-", source, None, lambda: bundle.file_sha256(path))
    if source.digest is not None and source.digest != digest:
        raise SyncError(
            f"{source}: the bundle has content sha256:{digest}, not the "
            f"sha256:{source.digest} its name says; nothing was unpacked"
        )
    hit = bundle.cached(root, digest)
    fetched = hit is None
    if hit is None:
        info = BundleInfo(digest=digest, size=path.stat().st_size, files=0)
        guard("-", source, None, lambda: bundle.install(root, path, info, source=str(source)))
        hit = bundle.cached(root, digest)
        assert hit is not None  # just installed
    return ResolvedBundle.of(source, hit, str(path), None, fetched=fetched)
