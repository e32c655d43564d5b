"""Local folders: as a sync source (`dioptra run` on a laptop) and as what `push` uploads.

The same skip rules apply as for S3 (dotfiles, `__pycache__`, compiled bytecode), so a folder
synced from disk and the same folder pushed and synced from S3 give the same tree.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from stat import S_ISREG

from dioptra_sync.atomic import temp_name, write_atomically
from dioptra_sync.errors import SyncError
from dioptra_sync.plan import SourceFile
from dioptra_sync.uri import LocalSource, check_relative_key, is_skipped_name

CHUNK = 1024 * 1024


def walk_files(
    root: Path, *, label: str, regular_only: bool = False
) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, absolute path, stat) of every plugin file under `root`, sorted.

    Symlinked folders are not followed (they could point anywhere); symlinked files are read
    through. A name with a backslash cannot become a portable key and is refused.
    With `regular_only` (packing a bundle, listing an unpacked one) any symlink, and anything
    that is neither a regular file nor a folder, is refused instead: a bundle is a snapshot
    of the files themselves, and a link would either be lost or point outside it.
    """
    if not root.is_dir():
        raise SyncError(f"{label}: not a folder")
    found: list[tuple[str, Path, os.stat_result]] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not is_skipped_name(d))
        if regular_only:
            for name in dirs:
                if os.path.islink(os.path.join(folder, name)):
                    _refuse_link(root, Path(folder) / name, label)
        for name in sorted(names):
            if is_skipped_name(name):
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            check_relative_key(relative, source=label)
            try:
                stat = path.lstat() if regular_only else path.stat()
            except OSError:
                continue  # a dangling symlink is not a plugin file
            if regular_only and not S_ISREG(stat.st_mode):
                _refuse_link(root, path, label)
            found.append((relative, path, stat))
    return found


def _refuse_link(root: Path, path: Path, label: str) -> None:
    kind = "a symlink" if path.is_symlink() else "not a regular file"
    raise SyncError(
        f"{label}: refusing {path.relative_to(root).as_posix()!r}: it is {kind}; a bundle holds "
        "only regular files and folders (replace the link with what it points to)"
    )


def list_local(
    source: LocalSource, *, label: str | None = None, regular_only: bool = False
) -> list[SourceFile]:
    """The folder's files as `SourceFile`s whose token is the modification time.

    `label` names the source in place of the folder (an unpacked bundle is listed under its
    URI, so messages and the manifest name what the user wrote, not the cache folder);
    `regular_only` is `walk_files`'s.
    """
    return [
        SourceFile(
            source=label or str(source),
            key=str(path),
            path=relative,
            size=stat.st_size,
            token=str(stat.st_mtime_ns),
            local=True,
        )
        for relative, path, stat in walk_files(
            source.path, label=label or str(source), regular_only=regular_only
        )
    ]


def copy_file(remote: SourceFile, target: Path, on_bytes: Callable[[int], None]) -> str:
    """Copy atomically, keep the mtime (so the next sync sees the copy is current), return the
    sha256."""
    with open(remote.key, "rb") as source:
        sha256 = write_atomically(target, iter(lambda: source.read(CHUNK), b""), on_bytes)
    shutil.copystat(remote.key, target)
    return sha256


def link_file(remote: SourceFile, target: Path) -> bool:
    """Hard-link `remote.key` (a file of an unpacked bundle) to `target` atomically.

    No bytes are copied and no disk space is used twice. A new name is linked in place (a
    link appears whole, so no reader can see a partial file); an existing file is replaced
    through a temp name and a rename, like every write of the sync. Returns False, having done
    nothing, when the filesystem refuses hard links (another filesystem mounted inside DEST,
    or none supported); the caller then copies.
    """
    try:
        os.link(remote.key, target)
        return True
    except FileExistsError:
        pass
    except OSError as error:
        if error.errno in _NO_LINKS:
            return False
        raise
    temp = temp_name(target)
    temp.unlink(missing_ok=True)  # left by a killed sync of this pid
    try:
        os.link(remote.key, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return True


_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


def no_progress(count: int) -> None:
    """An `on_bytes` for transfers not drawn as per-file progress (bundles, their links)."""


def md5_of(path: Path) -> str:
    """A file's MD5, which is the ETag S3 gives a single-part upload of it (push compares
    them to skip unchanged files without a HEAD per object)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
