"""The manifest: which file came from which object, at which version, with which content.

Written at the top of the destination as `.dioptra-plugins.json` after every successful sync.
It serves two readers: the next sync (to skip unchanged objects without a GET) and the runner,
which copies `status_entries()` into the Experiment's status so every run records exactly which
plugin versions it used (a bundle as its digest, other sources file by file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dioptra_sync.uri import MANIFEST_NAME, TEMP_MARKER

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ManifestEntry:
    """One synced file. `etag` and `version_id` are None for files copied from a local folder."""

    path: str
    source: str
    key: str
    size: int
    sha256: str
    etag: str | None = None
    version_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "source": self.source,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.etag is not None:
            data["etag"] = self.etag
        if self.version_id is not None:
            data["versionId"] = self.version_id
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        return cls(
            path=str(data["path"]),
            source=str(data["source"]),
            key=str(data["key"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            etag=data.get("etag"),
            version_id=data.get("versionId"),
        )


def manifest_path(dest: Path) -> Path:
    return dest / MANIFEST_NAME


def read_manifest(dest: Path) -> dict[str, ManifestEntry]:
    """The previous sync's entries by path; empty when there is none or it cannot be read.

    An unreadable manifest is not an error: the sync then simply downloads everything again.
    """
    try:
        data = json.loads(manifest_path(dest).read_text(encoding="utf-8"))
        if data.get("version") != FORMAT_VERSION:
            return {}
        entries = (ManifestEntry.from_json(item) for item in data["files"])
        return {entry.path: entry for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def manifest_document(
    sources: list[str],
    entries: list[ManifestEntry],
    synced_at: str,
    bundles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON document: sources in merge order and files sorted by path.

    `bundles` (when any source is a bundle) records each one as `{"source", "digest", "key",
    "size", "files"}` plus `"pointer"` (its key) when it was found through a pointer.
    """
    document: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "syncedAt": synced_at,
        "sources": sources,
        "files": [entry.to_json() for entry in sorted(entries, key=lambda e: e.path)],
    }
    if bundles:
        document["bundles"] = bundles
    return document


def status_entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    """What the Experiment's `status.plugins` records: small enough for any number of files.

    One entry per bundle, `{"source", "bundle": "sha256:<hex>", "key", "size", "files"}` (the
    digest says exactly which plugins ran; listing its files would put ~250 bytes per file
    into the Experiment), then the per-file entries of the other sources, as in the manifest.
    """
    bundles = [item for item in document.get("bundles", []) if isinstance(item, dict)]
    from_bundles = {item.get("source") for item in bundles}
    entries: list[dict[str, Any]] = [
        {
            "source": item.get("source"),
            "bundle": item.get("digest"),
            "key": item.get("key"),
            "size": item.get("size"),
            "files": item.get("files"),
        }
        for item in bundles
    ]
    entries += [
        item
        for item in document.get("files", [])
        if isinstance(item, dict) and item.get("source") not in from_bundles
    ]
    return entries


def write_manifest(dest: Path, document: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a manifest."""
    target = manifest_path(dest)
    temp = dest / f"{TEMP_MARKER}{os.getpid()}-manifest"
    temp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    os.replace(temp, target)


def load_manifest(dest: Path) -> dict[str, Any] | None:
    """The manifest document as written (for the runner's status), or None if absent."""
    try:
        document: dict[str, Any] = json.loads(manifest_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document
