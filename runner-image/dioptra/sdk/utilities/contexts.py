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

    Folders come from ``$DIOPTRA_PLUGIN_DIR`` (colon-separated; only absolute,
    existing directories not already on ``sys.path``) followed by ``dirs``
    (existing directories; relative ones resolve against the current directory).
    Paths compare by their resolved form, so a symlink counts as its target.
    They go right after ``sys.path[0]`` (the script's own folder keeps priority) and
    duplicate entries are dropped.
    """
    saved = list(sys.path)
    on_path = {_resolved(entry) for entry in sys.path}
    added: list[str] = []
    for candidate in _env_dirs():
        resolved = str(Path(candidate).resolve())
        if resolved not in on_path:
            on_path.add(resolved)
            added.append(resolved)
    for entry in dirs:
        path = Path(entry)
        if not path.is_dir():
            continue
        resolved = str(path.resolve())
        if resolved not in on_path:
            on_path.add(resolved)
            added.append(resolved)
    # dict.fromkeys keeps the first occurrence: an entry listed twice is dropped once.
    sys.path[:] = list(dict.fromkeys([*saved[:1], *added, *saved[1:]]))
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
