"""What the operator remembers between events, kept in kopf's memo rather than module globals.

Experiment, Job and Pod events for one Experiment are handled on different worker threads, so
each Experiment has a lock held around every read-modify-write of its status. The operator
also remembers the observation it last mirrored from each Experiment's Job, so that an event
implying nothing new costs neither a read nor a write.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dioptra_operator.pod_watch import PodWatch
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import Observation

Key = tuple[str, str]  # (namespace, Experiment name)
Mirrored = tuple[str, Any, Observation]  # (Job name, generation, observation)


class ExperimentMemory:
    """Per-Experiment locks and last mirrored observations, safe to use from any thread."""

    def __init__(self) -> None:
        self._locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._mirrored: dict[Key, Mirrored] = {}
        self._guard = threading.Lock()

    def lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks[(namespace, name)]

    def remember(self, namespace: str, name: str, seen: Mirrored) -> None:
        with self._guard:
            self._mirrored[(namespace, name)] = seen

    def recall(self, namespace: str, name: str) -> Mirrored | None:
        with self._guard:
            return self._mirrored.get((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)
            self._mirrored.pop((namespace, name), None)


@dataclass
class OperatorState:
    """Everything the handlers share, created at start-up and kept in kopf's memo."""

    settings: Settings = field(default_factory=Settings)
    memory: ExperimentMemory = field(default_factory=ExperimentMemory)
    pod_watch: PodWatch | None = None
