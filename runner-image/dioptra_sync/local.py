"""Local folders: as a sync source (`dioptra run` on a laptop) and as what `push` uploads.

The same skip rules apply as for S3 (dotfiles, `__pycache__`, compiled bytecode), so a folder
synced from disk and the same folder pushed and synced from S3 give the same tree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dioptra_sync.atomic import write_atomically
from dioptra_sync.errors import SyncError
from dioptra_sync.plan import SourceFile
from dioptra_sync.uri import LocalSource, check_relative_key, is_skipped_name

CHUNK = 1024 * 1024


def walk_files(root: Path, *, label: str) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, absolute path, stat) of every plugin file under `root`, sorted.

    Symlinked folders are not followed (they could point anywhere); symlinked files are read
    through. A name with a backslash cannot become a portable key and is refused.
    """
    if not root.is_dir():
        raise SyncError(f"{label}: not a folder")
    found: list[tuple[str, Path, os.stat_result]] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not is_skipped_name(d))
        for name in sorted(names):
            if is_skipped_name(name):
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            check_relative_key(relative, source=label)
            try:
                stat = path.stat()
            except OSError:
                continue  # a dangling symlink is not a plugin file
            found.append((relative, path, stat))
    return found


def list_local(source: LocalSource) -> list[SourceFile]:
    """The folder's files as `SourceFile`s whose token is the modification time."""
    return [
        SourceFile(
            source=str(source),
            key=str(path),
            path=relative,
            size=stat.st_size,
            token=str(stat.st_mtime_ns),
            local=True,
        )
        for relative, path, stat in walk_files(source.path, label=str(source))
    ]


def copy_file(remote: SourceFile, target: Path, on_bytes: Callable[[int], None]) -> str:
    """Copy atomically, keep the mtime (so the next sync sees the copy is current), return the
    sha256."""
    with open(remote.key, "rb") as source:
        sha256 = write_atomically(target, iter(lambda: source.read(CHUNK), b""), on_bytes)
    shutil.copystat(remote.key, target)
    return sha256
