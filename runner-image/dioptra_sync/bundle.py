"""Plugin bundles: a whole plugin tree as one deterministic tar.gz, named by its sha256.

Why: a cold sync of 1,000 small files is 1,000 GETs; a bundle is one, and "which plugins did
this run use" becomes a single digest (Dioptra 1.x also ships plugins as one archive per job).

Packing is deterministic, so the same tree gives the same bytes and the same digest:

- entries sorted by path, folders before what they hold; only regular files and folders
  (a symlink in the folder is refused: following it could pull in files from anywhere, and
  a bundle should be a snapshot of the files themselves);
- every mtime `FIXED_MTIME`, uid/gid 0, empty owner names, PAX format;
- modes normalised: 0755 for folders and for files with any executable bit, else 0644;
- gzip header with mtime 0 and no file name, compression level `COMPRESS_LEVEL` (the bytes
  depend on zlib's output for that level, which is stable across the zlib releases in use);
- the same skip rules as push and sync (dotfiles, `__pycache__`, `.pyc`).

Unpacking never calls `tarfile.extract*`: members are read one by one; only regular files
and folders whose names pass `uri.check_relative_key` are written, into a fresh folder, and
the file count and bytes written are capped (`MAX_BUNDLE_FILES`, `MAX_BUNDLE_BYTES`) as the
stream goes, so a hostile bundle fails with a `SyncError` before it fills the disk.
Unpacked files get the time of unpacking as mtime (not the fixed one): Python's bytecode
cache compares source mtimes, and a new bundle must never look like the old one to it.

The pointer (`<prefix>/bundle.json`) names the latest bundle:
`{"version": 1, "digest": "sha256:<hex>", "key": "<prefix>/bundles/sha256-<hex>.tar.gz",
"size": N, "files": N}`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dioptra_sync.errors import SyncError
from dioptra_sync.local import walk_files
from dioptra_sync.uri import (
    BUNDLE_CACHE_FOLDER,
    TEMP_MARKER,
    bundle_digest_from_name,
    check_relative_key,
    is_skipped_name,
)

FORMAT_VERSION = 1
FIXED_MTIME = 946684800
"""2000-01-01T00:00:00Z for every entry: a constant keeps the digest a function of content
alone (0 would make GNU tar warn about an "implausibly old time stamp")."""
COMPRESS_LEVEL = 6
"""zlib's default: level 9 is ~2x slower for a few percent on source code."""
MAX_BUNDLE_FILES = 100_000
"""More files than this in one bundle is refused while unpacking (tests lower it)."""
MAX_BUNDLE_BYTES = 1024**3
"""More unpacked bytes than this (1 GiB) is refused while unpacking (tests lower it)."""
MAX_POINTER_BYTES = 64 * 1024
"""A pointer is ~200 bytes; anything this large is not one."""
CACHE_FOLDER = BUNDLE_CACHE_FOLDER
INDEX_NAME = ".dioptra-bundle.json"
"""Inside an unpacked bundle: its digest, size, file count and per-file sha256. A dotfile, so
the listing of the unpacked folder skips it like any other."""
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BundleInfo:
    """A bundle's identity: sha256 `digest` (hex) of the tar.gz, its `size` in bytes, and how
    many plugin `files` it holds."""

    digest: str
    size: int
    files: int

    @property
    def name(self) -> str:
        return f"sha256-{self.digest}"


# -- packing ---------------------------------------------------------------------------------


def pack(folder: Path, out: Path, *, root: str = "", label: str | None = None) -> BundleInfo:
    """Pack `folder`'s plugin files into `out` (a new tar.gz); return its digest, size and count.

    `root` is the folder the files sit in inside the tar ("" for the top): rsync's rule, as
    for sources, is the caller's (`./acme` packs `acme/...`, `./plugins/` packs the contents).
    """
    label = label or str(folder)
    files = walk_files(folder, label=label, regular_only=True)
    if not files:
        raise SyncError(f"{label}: no plugin files to pack")
    base = f"{root}/" if root else ""
    folders = {root} if root else set()
    for relative, _, _ in files:
        parts = relative.split("/")
        folders.update(base + "/".join(parts[:i]) for i in range(1, len(parts)))
    entries: list[tuple[str, Path | None, os.stat_result | None]] = [
        (name, None, None) for name in folders
    ]
    entries += [(base + relative, path, info) for relative, path, info in files]
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0
        ) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path, info in sorted(entries, key=lambda entry: entry[0]):
            _add(tar, name, path, info)
    return BundleInfo(digest=file_sha256(out), size=out.stat().st_size, files=len(files))


def _add(tar: tarfile.TarFile, name: str, path: Path | None, info: os.stat_result | None) -> None:
    entry = tarfile.TarInfo(name)
    entry.mtime = FIXED_MTIME
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    if path is None or info is None:
        entry.type = tarfile.DIRTYPE
        entry.mode = 0o755
        tar.addfile(entry)
        return
    entry.type = tarfile.REGTYPE
    entry.mode = 0o755 if info.st_mode & 0o111 else 0o644
    entry.size = info.st_size
    with open(path, "rb") as content:
        tar.addfile(entry, content)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# -- the pointer -----------------------------------------------------------------------------


def pointer_document(key: str, info: BundleInfo) -> dict[str, Any]:
    """The JSON `push --bundle` writes to `<prefix>/bundle.json` for the bundle at `key`."""
    return {
        "version": FORMAT_VERSION,
        "digest": f"sha256:{info.digest}",
        "key": key,
        "size": info.size,
        "files": info.files,
    }


def parse_pointer(data: bytes, *, source: str) -> tuple[str, BundleInfo]:
    """(bundle key, info) from a pointer's bytes, or a one-line `SyncError` saying what is wrong.

    The key must be safe and name the same digest (`.../sha256-<hex>.tar.gz`), so that the
    object the pointer leads to is always named by its own content.
    """

    def refuse(reason: str) -> SyncError:
        return SyncError(
            f"{source}: not a bundle pointer written by `dioptra plugins push --bundle` ({reason})"
        )

    if len(data) > MAX_POINTER_BYTES:
        raise refuse(f"{len(data)} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise refuse("not JSON") from None
    if not isinstance(document, dict):
        raise refuse("not a JSON object")
    if document.get("version") != FORMAT_VERSION:
        raise refuse(f"version {document.get('version')!r}, expected {FORMAT_VERSION}")
    digest, key = document.get("digest"), document.get("key")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise refuse(f"digest {digest!r} is not 'sha256:<64 hex>'")
    hex_digest = digest[len("sha256:") :]
    if bundle_digest_from_name(f"sha256-{hex_digest}.tar.gz") is None:
        raise refuse(f"digest {digest!r} is not 'sha256:<64 hex>'")
    if not isinstance(key, str) or not key:
        raise refuse("no bundle key")
    check_relative_key(key, source=source)
    if bundle_digest_from_name(key.rsplit("/", 1)[-1]) != hex_digest:
        raise refuse(f"key {key!r} is not named sha256-<the digest>.tar.gz")
    size, files = _count(document.get("size")), _count(document.get("files"))
    if size is None or files is None:
        raise refuse("size and files must be whole numbers")
    return key, BundleInfo(digest=hex_digest, size=size, files=files)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# -- unpacking -------------------------------------------------------------------------------


def unpack(archive: BinaryIO, target: Path, *, source: str) -> tuple[dict[str, str], int]:
    """Unpack a tar.gz stream into the new folder `target`: ({path: sha256}, skipped count).

    Only regular files and folders are accepted; links, devices, fifos and names that could
    leave `target` raise `SyncError` naming the member. Skip-rule names are skipped. The file
    count, the folder count and the bytes actually written are checked as the stream goes.
    """
    target.mkdir()
    state = _Unpacking(target, source)
    try:
        with tarfile.open(fileobj=archive, mode="r|gz") as tar:
            for member in tar:
                name = _member_name(member, source)
                if name is None:
                    continue
                if any(is_skipped_name(part) for part in name.split("/")):
                    state.skipped += int(not member.isdir())
                elif member.isdir():
                    state.folder(name)
                else:
                    state.file(tar, member, name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SyncError(f"{source}: not a readable tar.gz bundle ({cause})") from None
    return state.written, state.skipped


class _Unpacking:
    """What one unpack has written so far, and the limits it checks as it goes."""

    def __init__(self, target: Path, source: str) -> None:
        self.target = target
        self.source = source
        self.written: dict[str, str] = {}
        self.folders: set[str] = set()
        self.skipped = 0
        self.total = 0

    def folder(self, name: str) -> None:
        """Create `name` and its parents under the fresh target (nothing there can be a
        symlink: nothing here writes one), refusing a path where a file already sits."""
        path = ""
        for part in name.split("/"):
            path = f"{path}/{part}" if path else part
            if path in self.folders:
                continue
            if path in self.written:
                raise self._refuse(name, f"{path!r} is a file in the bundle")
            if len(self.folders) >= MAX_BUNDLE_FILES:
                raise self._over(f"{MAX_BUNDLE_FILES} folders")
            (self.target / path).mkdir()
            self.folders.add(path)

    def file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if name in self.written or name in self.folders:
            raise self._refuse(name, "it appears twice")
        if len(self.written) >= MAX_BUNDLE_FILES:
            raise self._over(f"{MAX_BUNDLE_FILES} files")
        if self.total + member.size > MAX_BUNDLE_BYTES:
            raise self._over(f"{MAX_BUNDLE_BYTES} bytes")
        if "/" in name:
            self.folder(name.rsplit("/", 1)[0])
        content = tar.extractfile(member)
        assert content is not None  # a regular file always has content
        digest = hashlib.sha256()
        with open(self.target / name, "xb") as out:
            for chunk in iter(lambda: content.read(CHUNK), b""):
                self.total += len(chunk)  # counted as written, not as the header claims
                if self.total > MAX_BUNDLE_BYTES:
                    raise self._over(f"{MAX_BUNDLE_BYTES} bytes")
                out.write(chunk)
                digest.update(chunk)
        if member.mode & 0o111:
            os.chmod(self.target / name, 0o755)
        self.written[name] = digest.hexdigest()

    def _refuse(self, name: str, reason: str) -> SyncError:
        return SyncError(f"{self.source}: refusing bundle member {name!r}: {reason}")

    def _over(self, limit: str) -> SyncError:
        return SyncError(
            f"{self.source}: the bundle holds more than {limit} (the limit for one bundle); "
            "nothing was synced"
        )


def _member_name(member: tarfile.TarInfo, source: str) -> str | None:
    """The member's checked relative name, None for the top folder itself ("." / "./")."""
    name = member.name
    if name.startswith("./"):
        name = name[2:]  # `tar -C dir .` writes ./a/b: a spelling, not a guess
    if name in ("", "."):
        return None
    check_relative_key(name, source=source)
    if member.isdir() or (member.isreg() and not member.issparse()):
        return name
    if member.issym():
        kind = f"a symlink to {member.linkname!r}"
    elif member.islnk():
        kind = f"a hard link to {member.linkname!r}"
    elif member.ischr() or member.isblk():
        kind = "a device"
    elif member.isfifo():
        kind = "a fifo"
    else:
        kind = "not a regular file or folder"
    raise SyncError(
        f"{source}: refusing bundle member {name!r}: it is {kind}; "
        "a bundle holds only regular files and folders"
    )


# -- the cache of unpacked bundles inside the destination ------------------------------------


def cache_root(dest: Path) -> Path:
    """`DEST/.dioptra-bundles`, created if needed; refused if it is a symlink or a file (it
    would lead the unpacking outside the destination)."""
    root = dest / CACHE_FOLDER
    try:
        root.mkdir(exist_ok=True)
        mode = os.lstat(root).st_mode
    except OSError as error:
        raise SyncError(f"{root}: cannot create the bundle cache ({error.strerror})") from None
    if not stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        raise SyncError(f"{root}: refusing the bundle cache: it is not a plain folder")
    return root


@dataclass(frozen=True)
class Unpacked:
    """A complete unpacked bundle in the cache: its folder, info and per-file sha256."""

    folder: Path
    info: BundleInfo
    sha256: dict[str, str]  # relative path -> hex digest of the file


def cached(root: Path, digest: str) -> Unpacked | None:
    """The unpacked bundle `digest`, if a complete one is cached."""
    folder = root / f"sha256-{digest}"
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        if index.get("digest") != f"sha256:{digest}":
            return None
        info = BundleInfo(digest=digest, size=int(index["size"]), files=int(index["files"]))
        hashes = {str(path): str(sha256) for path, sha256 in index["sha256"].items()}
        return Unpacked(folder, info, hashes)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def install(root: Path, archive: Path, info: BundleInfo, *, source: str) -> Path:
    """Unpack `archive` (whose digest was checked) into `root/sha256-<hex>/`, atomically.

    Unpacking goes to a temp dotfolder that is renamed only when complete, so a sync killed
    half-way never leaves a folder that looks like a complete bundle.
    """
    final = root / info.name
    temp = root / f"{TEMP_MARKER}{os.getpid()}-{info.name}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        with open(archive, "rb") as stream:
            hashes, skipped = unpack(stream, temp, source=source)
        index = {
            "version": FORMAT_VERSION,
            "digest": f"sha256:{info.digest}",
            "size": info.size,
            "files": len(hashes),
            "skipped": skipped,
            "sha256": hashes,
        }
        (temp / INDEX_NAME).write_text(json.dumps(index) + "\n", encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without an index
        os.replace(temp, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def prune(root: Path, keep: set[str]) -> None:
    """Remove everything in the cache but the folders named in `keep` (after a good sync)."""
    for entry in os.scandir(root):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
    if not keep:
        with contextlib.suppress(OSError):
            root.rmdir()  # no bundle in use: leave no empty dotfolder behind
