"""Context managers for entry-point scripts.

``plugin_dirs`` puts the synced plugin folders on ``sys.path`` for the time of a
``with`` block only, so plugins become importable without leaking into (or
shadowing) the rest of the interpreter's imports afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["plugin_dirs"]

PLUGIN_DIR_ENV = "DIOPTRA_PLUGIN_DIR"


@contextmanager
def plugin_dirs(dirs: Iterable[str | os.PathLike[str]] = (".",)) -> Iterator[None]:
    """Make plugin folders importable inside the block, then restore ``sys.path`` exactly.

    Folders come from ``$DIOPTRA_PLUGIN_DIR`` (colon-separated; only absolute, existing
    directories) followed by ``dirs`` (existing directories; relative ones resolve against
    the current directory), each by its resolved path (a symlink as its target), unless
    that exact path is already an entry of ``sys.path``. They go right after
    ``sys.path[0]`` (the script's own folder keeps priority) and duplicate entries are
    dropped: Dioptra's rules.
    """
    saved = list(sys.path)
    # As Dioptra: a folder counts as present only when its resolved path is itself an entry
    # (an entry spelled otherwise, such as "" for the current directory, does not count).
    env = [resolved for resolved in map(_resolved, _env_dirs()) if resolved not in saved]
    explicit = [
        resolved
        for resolved in (_resolved(os.fspath(entry)) for entry in dirs if os.fspath(entry))
        if Path(resolved).is_dir() and resolved not in saved
    ]
    # dict.fromkeys keeps the first occurrence: an entry listed twice is dropped once.
    sys.path[:] = list(dict.fromkeys([*saved[:1], *env, *explicit, *saved[1:]]))
    try:
        yield
    finally:
        sys.path[:] = saved


def _env_dirs() -> list[str]:
    raw = os.environ.get(PLUGIN_DIR_ENV, "")
    return [
        entry for entry in raw.split(os.pathsep) if os.path.isabs(entry) and os.path.isdir(entry)
    ]


def _resolved(entry: str) -> str:
    try:
        return str(Path(entry or ".").resolve())
    except OSError:
        return entry
