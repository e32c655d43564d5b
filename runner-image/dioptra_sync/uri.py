"""Plugin sources (where plugins come from) and safe relative paths (where they land).

Pure functions, no I/O: a source string becomes an `S3Source` or a `LocalSource`, and an object
key becomes a path relative to the destination only if it cannot escape it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from dioptra_sync.errors import SyncError

MANIFEST_NAME = ".dioptra-plugins.json"
"""The manifest's file name at the top of the destination folder."""

LIST_PAGE_SIZE = 1000
"""Keys per S3 listing page (S3's maximum); tests lower it to cover pagination cheaply."""

TEMP_MARKER = ".dioptra-tmp-"
"""Part of the name of a file being written; never a plugin file (it starts with a dot)."""


@dataclass(frozen=True)
class S3Source:
    """`s3://bucket/prefix`: the objects under `prefix/`, landing under `folder` in the destination.

    As with rsync, a trailing slash means "the contents": `s3://b/plugins/` lands at the
    destination's top, while `s3://b/dioptra_builtins` lands as `DEST/dioptra_builtins/`,
    so a prefix holding one plugin package (Dioptra's layout) stays importable by its name.
    """

    bucket: str
    prefix: str  # "" for the whole bucket, else ends with "/"
    folder: str = ""  # "" for the destination's top, else the prefix's last segment

    def __str__(self) -> str:
        if not self.prefix:
            return f"s3://{self.bucket}"
        # Written back as the user meant it: a trailing slash for "the contents".
        text = f"s3://{self.bucket}/{self.prefix}"
        return text.rstrip("/") if self.folder else text


@dataclass(frozen=True)
class LocalSource:
    """A local folder (`dioptra run` on a laptop), landing like an S3 prefix: `./plugins/`
    (trailing slash) lands at the destination's top, `./acme` lands as `DEST/acme/`."""

    path: Path  # absolute
    folder: str = ""  # "" for the destination's top, else the folder's own name

    def __str__(self) -> str:
        return str(self.path) if self.folder else f"{self.path}/"


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
        contents = prefix.endswith("/") or not prefix
        prefix = prefix.strip("/")
        if prefix:
            check_relative_key(prefix, source=text)
        folder = "" if contents else prefix.rsplit("/", 1)[-1]
        return S3Source(bucket=bucket, prefix=f"{prefix}/" if prefix else "", folder=folder)
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise SyncError(f"{text}: unsupported source (use s3://bucket/prefix or a folder)")
        return _local(Path(unquote(parsed.path)), contents=parsed.path.endswith("/"))
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return _local(path, contents=text.endswith(("/", os.sep)))


def _local(path: Path, *, contents: bool) -> LocalSource:
    resolved = path.resolve()
    folder = "" if contents or resolved.parent == resolved else resolved.name
    return LocalSource(path=resolved, folder=folder)


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
