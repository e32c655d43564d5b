"""Record headline numbers from inside a plugin: ``dioptra.metrics.log_metric("accuracy", 0.93)``.

The runner puts what is logged here into the Experiment's ``status.results.metrics``
and the summary table of ``dioptra run``. A plugin needs no handle: inside
``collecting()`` (the runner wraps each flow run in one) numbers go to that run's own
dict, found through a context variable that Prefect copies into task threads, so
concurrent runs (sweep points) never mix; outside it they go to a process-wide dict.
Every value logged (not only the latest of each name) is kept in order, with its ``step``
when one is given, for MLflow tracking (``recording()``).
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real

__all__ = [
    "LoggedValue",
    "clear_metrics",
    "collecting",
    "log_metric",
    "log_metrics",
    "logged_metrics",
    "recording",
]

_LOCK = threading.Lock()
_METRICS: dict[str, float | int] = {}
_CURRENT: contextvars.ContextVar[dict[str, float | int] | None] = contextvars.ContextVar(
    "dioptra_metrics", default=None
)
_HISTORY: contextvars.ContextVar[list[LoggedValue] | None] = contextvars.ContextVar(
    "dioptra_metric_history", default=None
)


@dataclass(frozen=True)
class LoggedValue:
    """One call of ``log_metric``: the name, the value, its step (if given) and when."""

    name: str
    value: float | int
    step: int | None
    timestamp_ms: int


@contextmanager
def collecting() -> Iterator[dict[str, float | int]]:
    """Collect what is logged in this context (and tasks it starts) into a fresh dict."""
    collected: dict[str, float | int] = {}
    token = _CURRENT.set(collected)
    try:
        yield collected
    finally:
        _CURRENT.reset(token)


@contextmanager
def recording() -> Iterator[list[LoggedValue]]:
    """Keep every value logged in this context (and tasks it starts), in order."""
    history: list[LoggedValue] = []
    token = _HISTORY.set(history)
    try:
        yield history
    finally:
        _HISTORY.reset(token)


def log_metric(name: str, value: float | int, step: int | None = None) -> None:
    """Record one named number; logging the same name again replaces the value.

    ``step`` (e.g. the epoch) orders the values of one name in MLflow's metric history.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metric needs a non-empty name, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    number = int(value) if isinstance(value, int) else float(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"metric {name!r} must be finite, got {number}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"metric {name!r}: step must be an integer, got {type(step).__name__}")
    target = _CURRENT.get()
    history = _HISTORY.get()
    with _LOCK:
        (_METRICS if target is None else target)[name] = number
        if history is not None:
            history.append(LoggedValue(name, number, step, int(time.time() * 1000)))


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
