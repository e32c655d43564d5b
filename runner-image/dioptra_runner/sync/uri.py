"""Plugin sources (where plugins come from) and safe relative paths (where they land).

Pure functions, no I/O: a source string becomes an `S3Source` or a `LocalSource`, and an object
key becomes a path relative to the destination only if it cannot escape it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from dioptra_runner.sync.errors import SyncError

MANIFEST_NAME = ".dioptra-plugins.json"
"""The manifest's file name at the top of the destination folder."""

LIST_PAGE_SIZE = 1000
"""Keys per S3 listing page (S3's maximum); tests lower it to cover pagination cheaply."""

TEMP_MARKER = ".dioptra-tmp-"
"""Part of the name of a file being written; never a plugin file (it starts with a dot)."""


@dataclass(frozen=True)
class S3Source:
    """`s3://bucket/prefix`: every object under `prefix/` lands at the destination's top."""

    bucket: str
    prefix: str  # "" for the whole bucket, else ends with "/"

    def __str__(self) -> str:
        return (
            f"s3://{self.bucket}/{self.prefix}".rstrip("/")
            if self.prefix
            else f"s3://{self.bucket}"
        )


@dataclass(frozen=True)
class LocalSource:
    """A local folder (`dioptra run` on a laptop); its contents land at the destination's top."""

    path: Path  # absolute

    def __str__(self) -> str:
        return str(self.path)


Source = S3Source | LocalSource


def parse_source(text: str, *, base: Path | None = None) -> Source:
    """Parse `s3://bucket/prefix`, `file:///abs/path` or a folder path (relative to `base`).

    The prefix is treated as a folder: `s3://b/custom` syncs `custom/...` and never
    `custom2/...`, so that "only what lies under the prefix is synced" holds literally.
    """
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if len(bucket) < 3 or "\\" in bucket:
            raise SyncError(f"{text}: not a valid S3 URI (expected s3://bucket/prefix)")
        prefix = prefix.strip("/")
        if prefix:
            check_relative_key(prefix, source=text)
        return S3Source(bucket=bucket, prefix=f"{prefix}/" if prefix else "")
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise SyncError(f"{text}: unsupported source (use s3://bucket/prefix or a folder)")
        return LocalSource(path=Path(unquote(parsed.path)).resolve())
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return LocalSource(path=path.resolve())


def check_relative_key(relative: str, *, source: str) -> str:
    """Return `relative` if it is a safe relative path, else raise `SyncError` saying why.

    Refused: absolute paths, backslashes, NUL bytes, empty, `.` or `..` segments (so `a//b`
    and `a/../b` are refused, not normalised: a key that needs normalising was not written by
    `dioptra plugins push`, and guessing what it meant is how files end up outside DIR).
    """
    reason = _unsafe_reason(relative)
    if reason is not None:
        raise SyncError(f"{source}: refusing object key {relative!r}: {reason}")
    return relative


def _unsafe_reason(relative: str) -> str | None:
    if not relative:
        return "empty path"
    if "\\" in relative:
        return "contains a backslash"
    if "\x00" in relative:
        return "contains a NUL byte"
    if relative.startswith("/"):
        return "absolute path"
    for segment in relative.split("/"):
        if segment == "":
            return "empty path segment"
        if segment in (".", ".."):
            return f"'{segment}' path segment would leave the destination"
    return None


def is_skipped_name(name: str) -> bool:
    """Files and folders that are never plugins: dotfiles, `__pycache__`, compiled bytecode."""
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", ".pyo"))
