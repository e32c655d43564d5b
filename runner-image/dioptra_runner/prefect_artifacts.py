"""Publish a run's results to the Prefect UI as artifacts next to its flow run.

A user with the chart's Prefect server (or any Prefect server the runner talks to) finds each
run's results and metrics as a table artifact on the flow run's page, and under a stable key
on the Artifacts page, which keeps every version (one per run):

- ``dioptra-<experiment>-results``: one run (in a cluster ``dioptra-<namespace>-<experiment>-
  results``; a sweep point adds its key: ``dioptra-<experiment>-<point key>-results``), rows
  ``{name, value}``: the logged metrics, then the small task outputs (dict outputs flattened).
- ``dioptra-<experiment>-sweep``: a sweep run by ``dioptra run``, one row per point.
- ``dioptra-<experiment>-sweep-plot``: a markdown artifact naming the sweep's plot.

Publishing is a report, like the status: it never fails the run. A failure is one warning
line (no traceback) and the run goes on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "artifact_key",
    "publish_plot_note",
    "publish_run_results",
    "publish_sweep_table",
    "result_table",
]

_LOG = logging.getLogger("dioptra.run")
_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str | None) -> str:
    """``dioptra-<parts>``: lowercase letters, digits and dashes only (Prefect's rule)."""
    words = ["dioptra", *(p for p in parts if p)]
    key = "-".join(_KEY_CHARS.sub("-", word.lower()).strip("-") for word in words)
    return re.sub("-{2,}", "-", key)


def result_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status.results`` as ``{name, value}`` rows: metrics first, then every task output."""
    rows: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in results.get("metrics", {}).items()
    ]
    for task, value in results.get("outputs", {}).items():
        if isinstance(value, dict):
            rows.extend({"name": f"{task}.{k}", "value": _cell(v)} for k, v in value.items())
        else:
            rows.append({"name": task, "value": _cell(value)})
    return rows


def _cell(value: Any) -> Any:
    """A scalar stays itself (the UI sorts numbers); anything else shows as its JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


def publish_run_results(experiment: Any, run_: Any, *, point_key: str | None = None) -> str | None:
    """The run's results as a table artifact on its flow run; returns the key, or None."""
    result = run_.result
    flow_run_id = getattr(result, "flow_run_id", None)
    if result is None or flow_run_id is None:
        return None  # no flow run was created (cancelled before it started)
    point = getattr(run_, "point", None)
    key = artifact_key(
        getattr(experiment, "namespace", None),
        experiment.name,
        point_key or (point.key if point is not None else None),
        "results",
    )
    where = f" (sweep point {point.label})" if point is not None else ""
    description = (
        f"Results of Experiment **{experiment.name}**{where}: {_phase(result)}. "
        "Metrics logged with `dioptra.metrics.log_metric`, then the small task outputs."
    )
    rows = result_table(run_.results) or [{"name": "(no results)", "value": None}]
    return _create("table", key, rows, description, flow_run_id)


def publish_sweep_table(experiment: Any, runs: Sequence[Any]) -> str | None:
    """One row per sweep point (its values, phase and headline results)."""
    from dioptra_api.sweep import summarize_points

    outcomes = {
        r.point.index: {
            "phase": _phase(r.result),
            "results": r.results,
            "message": getattr(r.result, "message", ""),
        }
        for r in runs
    }
    summary = summarize_points([r.point for r in runs], outcomes, max_rows=1000)
    rows = [
        {"point": row["key"], **row["values"], "phase": row["phase"], **row.get("results", {})}
        for row in summary["points"]
    ]
    key = artifact_key(getattr(experiment, "namespace", None), experiment.name, "sweep")
    description = f"Sweep of Experiment **{experiment.name}**: one row per point."
    return _create("table", key, rows, description, None)


def _phase(result: Any) -> str:
    if result is None:
        return "Pending"
    if result.is_successful():
        return "Succeeded"
    return "Cancelled" if result.is_cancelled() else "Failed"


def publish_plot_note(experiment: Any, plot: str, where: Iterable[str] = ()) -> str | None:
    """A markdown artifact naming the sweep's plot (Prefect artifacts hold no images)."""
    places = "".join(f"\n- {place}" for place in where)
    markdown = f"# Sweep plot of {experiment.name}\n\nThe PNG: `{plot}`{places}\n"
    key = artifact_key(getattr(experiment, "namespace", None), experiment.name, "sweep-plot")
    return _create("markdown", key, markdown, f"Sweep plot of {experiment.name}", None)


def _create(kind: str, key: str, data: Any, description: str, flow_run_id: Any) -> str | None:
    """Create one artifact through Prefect's client; a failure is a warning, never raised."""
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        payload = data if isinstance(data, str) else json.dumps(data, default=str)
        artifact = ArtifactCreate(
            key=key,
            type=kind,
            data=payload,
            description=description,
            flow_run_id=UUID(str(flow_run_id)) if flow_run_id else None,
        )
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
    except Exception as error:  # a report: the run goes on without it
        first = str(error).splitlines()[0][:200] if str(error) else ""
        _LOG.warning(
            "could not publish artifact %s to Prefect: %s%s",
            key,
            type(error).__name__,
            f": {first}" if first else "",
        )
        return None
    return key
