"""Record headline numbers from inside a plugin: ``dioptra.metrics.log_metric("accuracy", 0.93)``.

The runner puts what is logged here into the Experiment's ``status.results.metrics``
and the summary table of ``dioptra run``. Plain module-level state on purpose: tasks
run in threads of one process, and a plugin must not need to receive a handle.
"""

from __future__ import annotations

import math
import threading
from numbers import Real

__all__ = ["clear_metrics", "log_metric", "log_metrics", "logged_metrics"]

_LOCK = threading.Lock()
_METRICS: dict[str, float | int] = {}


def log_metric(name: str, value: float | int) -> None:
    """Record one named number; logging the same name again replaces the value."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metric needs a non-empty name, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    number = int(value) if isinstance(value, int) else float(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"metric {name!r} must be finite, got {number}")
    with _LOCK:
        _METRICS[name] = number


def log_metrics(**values: float | int) -> None:
    """Record several named numbers at once."""
    for name, value in values.items():
        log_metric(name, value)


def logged_metrics() -> dict[str, float | int]:
    """A copy of everything logged so far in this process."""
    with _LOCK:
        return dict(_METRICS)


def clear_metrics() -> None:
    """Forget logged metrics (the runner calls this before each run)."""
    with _LOCK:
        _METRICS.clear()
