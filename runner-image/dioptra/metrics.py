"""Record headline numbers from inside a plugin: ``dioptra.metrics.log_metric("accuracy", 0.93)``.

The runner puts what is logged here into the Experiment's ``status.results.metrics``
and the summary table of ``dioptra run``. A plugin needs no handle: inside
``collecting()`` (the runner wraps each flow run in one) numbers go to that run's own
dict, found through a context variable that Prefect copies into task threads, so
concurrent runs (sweep points) never mix; outside it they go to a process-wide dict.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real

__all__ = ["clear_metrics", "collecting", "log_metric", "log_metrics", "logged_metrics"]

_LOCK = threading.Lock()
_METRICS: dict[str, float | int] = {}
_CURRENT: contextvars.ContextVar[dict[str, float | int] | None] = contextvars.ContextVar(
    "dioptra_metrics", default=None
)


@contextmanager
def collecting() -> Iterator[dict[str, float | int]]:
    """Collect what is logged in this context (and tasks it starts) into a fresh dict."""
    collected: dict[str, float | int] = {}
    token = _CURRENT.set(collected)
    try:
        yield collected
    finally:
        _CURRENT.reset(token)


def log_metric(name: str, value: float | int) -> None:
    """Record one named number; logging the same name again replaces the value."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metric needs a non-empty name, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    number = int(value) if isinstance(value, int) else float(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"metric {name!r} must be finite, got {number}")
    target = _CURRENT.get()
    with _LOCK:
        (_METRICS if target is None else target)[name] = number


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
