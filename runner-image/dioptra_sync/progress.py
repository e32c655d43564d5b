"""Progress for humans: a live line on a terminal, one summary line otherwise.

Hand-written on purpose: the init container's image has no `rich`, and a line redrawn with
a carriage return at most ten times a second is all a sync needs.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


class Progress:
    """Thread-safe counters of files and bytes, drawn on `stream` when it is a terminal."""

    def __init__(self, verb: str, total_files: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.verb = verb
        self.total_files = total_files
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._drawn_at = 0.0

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        self._maybe_draw()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1
        self._maybe_draw(force=self.files == self.total_files)

    def _maybe_draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        elapsed = max(now - self.started, 1e-6)
        line = (
            f"{self.verb} {self.files}/{self.total_files} files, "
            f"{human_bytes(self.bytes)}, {human_bytes(self.bytes / elapsed)}/s"
        )
        self.stream.write("\r" + line.ljust(72))
        self.stream.flush()

    def finish(self) -> None:
        """Clear the live line so the summary starts on a clean line."""
        if self.live and self._drawn_at:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()
