"""Plugin sources (where plugins come from) and safe relative paths (where they land).

Pure functions, no I/O: a source string becomes an `S3Source` or a `LocalSource`, and an object
key becomes a path relative to the destination only if it cannot escape it.
"""

from __future__ import annotations

import os
import re
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

BUNDLE_POINTER_NAME = "bundle.json"
"""The pointer `dioptra plugins push --bundle` writes at `<prefix>/bundle.json`: the latest
bundle's digest. Naming it as a source means "whatever was pushed last"."""

BUNDLE_CACHE_FOLDER = ".dioptra-bundles"
"""Unpacked bundles inside the destination, one `sha256-<hex>/` folder each (a dotfolder:
never synced over, never importable)."""

BUNDLES_FOLDER = "bundles"
"""Where bundles live under a push prefix: `<prefix>/bundles/sha256-<hex>.tar.gz`."""

_BUNDLE_NAME = re.compile(r"sha256-([0-9a-f]{64})\.tar\.gz")


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


@dataclass(frozen=True)
class BundleSource:
    """A plugin bundle: one tar.gz holding a whole plugin tree (`dioptra plugins push --bundle`).

    On S3 it is named either through its pointer (`s3://b/prefix/bundle.json`: the latest
    push, `digest` None until the pointer is read) or by its digest
    (`s3://b/prefix/bundles/sha256-<hex>.tar.gz`: pinned, `digest` is that hex). On a laptop
    it may be a local `.tar.gz` file (`bucket` ""; `key` is then the absolute path). Files land
    where the bundle holds them (the packer applied rsync's rule), so there is no `folder`.
    """

    bucket: str  # "" for a local file
    key: str  # the object key, or the absolute path of a local file
    digest: str | None  # 64 hex digits when the name pins it, else None

    @property
    def local(self) -> bool:
        return not self.bucket

    @property
    def is_pointer(self) -> bool:
        return not self.local and self.key.rsplit("/", 1)[-1] == BUNDLE_POINTER_NAME

    def __str__(self) -> str:
        return self.key if self.local else f"s3://{self.bucket}/{self.key}"


Source = S3Source | LocalSource | BundleSource


def bundle_key(prefix: str, digest: str) -> str:
    """The object key of the bundle with sha256 `digest` (hex) under a push prefix."""
    return f"{prefix}{BUNDLES_FOLDER}/sha256-{digest}.tar.gz"


def bundle_digest_from_name(name: str) -> str | None:
    """The hex digest in a bundle's file name `sha256-<64 hex>.tar.gz`, else None."""
    match = _BUNDLE_NAME.fullmatch(name)
    return match.group(1) if match else None


def _is_bundle_name(name: str) -> bool:
    return name == BUNDLE_POINTER_NAME or name.endswith((".tar.gz", ".tgz"))


def _bundle(text: str, bucket: str, key: str) -> BundleSource:
    name = key.rsplit("/", 1)[-1]
    if name == BUNDLE_POINTER_NAME:
        return BundleSource(bucket=bucket, key=key, digest=None)
    digest = bundle_digest_from_name(name)
    if digest is None and bucket:
        raise SyncError(
            f"{text}: a bundle on S3 is named by its digest (bundles/sha256-<64 lowercase hex>"
            f".tar.gz) or through its pointer ({BUNDLE_POINTER_NAME})"
        )
    return BundleSource(bucket=bucket, key=key, digest=digest)


def parse_source(text: str, *, base: Path | None = None) -> Source:
    """Parse `s3://bucket/prefix`, `file:///abs/path` or a folder path (relative to `base`).

    The prefix is treated as a folder: `s3://b/custom` syncs `custom/...` and never
    `custom2/...`, so that "only what lies under the prefix is synced" holds literally.
    A last segment `bundle.json`, `sha256-<hex>.tar.gz` (or, for a local path, any `.tar.gz`)
    without a trailing slash names a bundle instead (`BundleSource`).
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
        if prefix and not contents and _is_bundle_name(prefix.rsplit("/", 1)[-1]):
            return _bundle(text, bucket, prefix)
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


def _local(path: Path, *, contents: bool) -> LocalSource | BundleSource:
    resolved = path.resolve()
    if not contents and resolved.name.endswith((".tar.gz", ".tgz")):
        return _bundle(str(resolved), "", str(resolved))
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
