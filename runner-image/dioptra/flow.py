"""Seed-style flow definitions (Prefect 1's ``Flow``/``Parameter``) executed on Prefect 3.

Dioptra entry points are written as::

    with Flow("Image Resizer") as flow:
        data_dir = Parameter("data_dir")
        resized = pyplugs.call_task("dioptra_builtins.data", "images", "resize", data_dir=data_dir)

Prefect 3 has no deferred flow builder, so this module records the graph while
the ``with`` block runs (nothing executes) and replays it as one Prefect 3 flow
run in :meth:`Flow.run`: each node is submitted as a Prefect task whose inputs
are the futures of the nodes it reads from (data edges) and whose ``wait_for``
are the nodes named in ``upstream_tasks`` (ordering edges). Independent nodes
therefore run concurrently, and a node whose upstream failed never runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dioptra import graph
from dioptra._prefect_engine import run_on_prefect
from dioptra.graph import *  # noqa: F403  (the graph's names are the flow module's too)
from dioptra.graph import Cancellation, FlowGraph, FlowRunResult, OutputStore, TaskListener

__all__ = ["Flow", *graph.__all__]


class Flow(FlowGraph):
    """A graph of task nodes, recorded in a ``with`` block and run on Prefect 3."""

    # -- execution ----------------------------------------------------------------------------

    def run(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        listener: TaskListener | None = None,
        max_parallel_tasks: int | None = None,
        cancellation: Cancellation | None = None,
        heartbeats: bool = True,
        store: OutputStore | None = None,
    ) -> FlowRunResult:
        """Run the graph as one Prefect 3 flow run and return every node's outcome.

        Raises FlowValidationError before anything runs when parameters or plugins
        are wrong. Task failures do not raise: they are in the returned result.
        Once ``cancellation`` is cancelled no further task starts, the flow run ends
        Cancelled and this returns without waiting for tasks still running.
        ``heartbeats=False`` turns off Prefect's flow-run heartbeats, which let a long-lived
        server notice a crashed run: a temporary server that ends with the process has no use
        for them, and the flow run's teardown waits up to a second for the heartbeat thread.
        ``store`` keeps each task's output and serves cached tasks (the runner's artifact
        store); without one nothing is stored and nothing is cached.
        """
        values = self.check(parameters)
        return run_on_prefect(
            self,
            values,
            listener=listener,
            max_workers=max_parallel_tasks or self.max_parallel_tasks,
            cancellation=cancellation,
            heartbeats=heartbeats,
            store=store,
        )

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {len(self.tasks)} tasks>"
