"""Notice Jobs that never get a Pod, and ask why.

The Job controller reports a Pod it cannot create (a missing ServiceAccount, a quota, a Pod
Security refusal) only as `FailedCreate` Events on the Job: nothing changes on the Job or on a
Pod, so no watch event would ever tell the operator. `PodWatch` remembers Experiments whose Job
exists but has no Pod yet and, once one has waited past a grace period, calls `check` for it
every `interval` seconds until a Pod appears or the Experiment moves on.

Why not a kopf timer: kopf puts a finalizer on every object a timer may run for, and an
Experiment must stay deletable when the operator is not running.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PodWatch"]

Key = tuple[str, str]  # (namespace, Experiment name)
Check = Callable[[str, str, str], None]  # (namespace, Experiment name, Job name)

_log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    job: str
    has_pod: Callable[[], bool]
    next_check: float


class PodWatch:
    """Experiments waiting for their Job's first Pod; `run()` checks the overdue ones."""

    def __init__(
        self,
        check: Check,
        *,
        grace: float = 10.0,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._grace = grace
        self._interval = interval
        self._clock = clock
        self._waiting: dict[Key, _Waiting] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def waiting(self, namespace: str, name: str, job: str, has_pod: Callable[[], bool]) -> None:
        """The Experiment's Job `job` exists and nothing has seen its Pod start."""
        with self._lock:
            current = self._waiting.get((namespace, name))
            if current is None or current.job != job:
                self._waiting[(namespace, name)] = _Waiting(
                    job, has_pod, self._clock() + self._grace
                )

    def done(self, namespace: str, name: str) -> None:
        """The Experiment no longer waits (a Pod runs, it finished, or it is gone)."""
        with self._lock:
            self._waiting.pop((namespace, name), None)

    def due(self) -> list[tuple[str, str, str]]:
        """The Experiments to check now (past their time, still without a Pod)."""
        now = self._clock()
        found = []
        with self._lock:
            for (namespace, name), entry in list(self._waiting.items()):
                if entry.next_check > now:
                    continue
                if entry.has_pod():
                    del self._waiting[(namespace, name)]
                    continue
                entry.next_check = now + self._interval
                found.append((namespace, name, entry.job))
        return found

    def start_once(self) -> None:
        """Start the checking thread, in a copy of the caller's context (a kopf handler's).

        kopf finds its Event queue through context variables that exist only once the operator
        runs, so the thread is started from the first handler rather than at start-up.
        """
        with self._lock:
            if self._thread is not None:
                return
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self.run,), name="pod-watch", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self, tick: float = 1.0) -> None:
        """Check overdue Experiments until `stop()` (the operator's background thread)."""
        while not self._stop.wait(tick):
            for namespace, name, job in self.due():
                try:
                    self._check(namespace, name, job)
                except Exception as exc:  # one Experiment's trouble must not stop the others
                    _log.warning(
                        "Could not check why Job %s/%s has no Pod: %s", namespace, job, exc
                    )
