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

from dioptra import pyplugs
from dioptra._prefect_engine import run_on_prefect
from dioptra.graph import (
    COMPLETED,
    FAILED,
    NOT_RUN,
    PENDING,
    RUNNING,
    FlowDefinitionError,
    FlowGraph,
    FlowRunResult,
    FlowValidationError,
    ItemRef,
    Parameter,
    TaskListener,
    TaskNode,
    TaskOptions,
    TaskOutcome,
    current_flow,
)

__all__ = [
    "COMPLETED",
    "FAILED",
    "NOT_RUN",
    "PENDING",
    "RUNNING",
    "Flow",
    "FlowDefinitionError",
    "FlowGraph",
    "FlowRunResult",
    "FlowValidationError",
    "ItemRef",
    "Parameter",
    "TaskListener",
    "TaskNode",
    "TaskOptions",
    "TaskOutcome",
    "current_flow",
]


class Flow(FlowGraph):
    """A graph of task nodes, recorded in a ``with`` block and run on Prefect 3."""

    def add_plugin_task(
        self,
        package: str,
        plugin: str,
        func: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None = None,
        *,
        name: str | None = None,
    ) -> TaskNode:
        """Record a call of a registered plugin; a missing plugin is noted, not raised.

        Noting instead of raising lets :meth:`problems` list every missing plugin at
        once. A plugin module that exists but fails to import (say a library is not
        installed) raises here, with its own error, as Dioptra does.
        """
        return pyplugs.add_plugin_task(
            self, package, plugin, func, args, kwargs, options, name=name
        )

    # -- execution ----------------------------------------------------------------------------

    def run(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        listener: TaskListener | None = None,
        max_parallel_tasks: int | None = None,
    ) -> FlowRunResult:
        """Run the graph as one Prefect 3 flow run and return every node's outcome.

        Raises FlowValidationError before anything runs when parameters or plugins
        are wrong. Task failures do not raise: they are in the returned result.
        """
        values = self.check(parameters)
        return run_on_prefect(
            self,
            values,
            listener=listener,
            max_workers=max_parallel_tasks or self.max_parallel_tasks,
        )

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {len(self.tasks)} tasks>"
