"""Prometheus metrics: how many Experiments are in each phase, and how often reconciling fails.

The phase gauge is computed at scrape time from a small in-memory map fed by watch events, so
it costs no API calls and cannot drift from what the operator has seen.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from collections.abc import Iterator

from dioptra_api import Phase
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PHASES = (
    Phase.PENDING,
    Phase.SUSPENDED,
    Phase.SYNCING_PLUGINS,
    Phase.RUNNING,
    Phase.SUCCEEDED,
    Phase.FAILED,
)


class PhaseTracker(Collector):
    """Remembers each Experiment's last seen phase; exposes counts per phase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or Phase.PENDING

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            tally = _Tally(self._phases.values())
        return {phase: tally.get(phase, 0) for phase in PHASES}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "dioptra_experiments", "Experiments known to the operator, by phase.", labels=["phase"]
        )
        for phase, count in self.counts().items():
            family.add_metric([phase], count)
        yield family


REGISTRY = CollectorRegistry()
PHASES_SEEN = PhaseTracker()
REGISTRY.register(PHASES_SEEN)
RECONCILE_ERRORS = Counter(
    "dioptra_reconcile_errors",
    "Reconcile attempts that failed, by handler and kind (temporary or permanent).",
    ["handler", "kind"],
    registry=REGISTRY,
)
JOBS_CREATED = Counter("dioptra_jobs_created", "Jobs created for Experiments.", registry=REGISTRY)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics on a background thread (all interfaces: scraped via the pod IP).

    Port 0 disables it.
    """
    if port:
        start_http_server(port, addr=address, registry=REGISTRY)
