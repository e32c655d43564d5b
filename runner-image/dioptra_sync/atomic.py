"""Writing one file so that a reader sees either the old file or the whole new one.

Bytes go to a temp file in the same folder (a dotfile, so Python never imports it), and only a
complete file is renamed over the target; the sha256 is computed on the way for the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from dioptra_sync.uri import TEMP_MARKER


def temp_name(target: Path) -> Path:
    return target.parent / f".{target.name}{TEMP_MARKER}{os.getpid()}"


def write_atomically(
    target: Path,
    chunks: Iterable[bytes],
    on_bytes: Callable[[int], None],
    expected_size: int | None = None,
) -> str:
    """Write `chunks` to `target` atomically and return their sha256.

    If `expected_size` is given and the chunks add up to something else (a body cut short),
    nothing is renamed and `ConnectionError` is raised so the caller can retry.
    On any error the temp file is removed and the counted bytes are given back to `on_bytes`.
    """
    temp = temp_name(target)
    digest = hashlib.sha256()
    written = 0
    try:
        with open(temp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                on_bytes(len(chunk))
        if expected_size is not None and written != expected_size:
            raise ConnectionError(f"body ended after {written} of {expected_size} bytes")
        os.replace(temp, target)
    except BaseException:
        on_bytes(-written)
        raise
    finally:
        temp.unlink(missing_ok=True)
    return digest.hexdigest()
