"""Pure translations from a flow run to the Experiment's status fields and summaries."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from dioptra.flow import COMPLETED, TaskOutcome
from dioptra.graph import FINAL_STATES
from dioptra_api.clock import rfc3339

FINISHED_STATES = FINAL_STATES  # Completed, Failed, NotRun, Cancelled
# A task output larger than this (as JSON) stays out of the status: etcd objects are
# limited to ~1.5 MiB and `kubectl get -o yaml` must stay readable.
MAX_OUTPUT_BYTES = 2048
# At most this many entries in status.artifacts (a big graph or a sweep stays small: about
# 250 bytes each); the count of those left out is in artifactsOmitted.
MAX_ARTIFACT_ENTRIES = 100


def task_entry(outcome: TaskOutcome) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": outcome.name,
        "task": outcome.task,
        "state": outcome.shown_state,
    }
    if outcome.start_time:
        entry["startTime"] = rfc3339(outcome.start_time)
    if outcome.end_time:
        entry["endTime"] = rfc3339(outcome.end_time)
    if outcome.message:
        entry["message"] = outcome.message[:500]
    return entry


def progress_fields(outcomes: Iterable[TaskOutcome]) -> dict[str, Any]:
    """``tasks``, ``tasksTotal``, ``tasksDone`` and the ``progress`` printer column."""
    outcomes = list(outcomes)
    entries = [task_entry(o) for o in outcomes]
    done = sum(1 for o in outcomes if o.state in FINISHED_STATES)
    return {
        "tasks": entries,
        "tasksTotal": len(entries),
        "tasksDone": done,
        "tasksCached": sum(1 for o in outcomes if o.cached and o.state == COMPLETED),
        "progress": f"{done}/{len(entries)}",
    }


def artifact_fields(records: Iterable[Any]) -> dict[str, Any]:
    """``artifacts`` (the first MAX_ARTIFACT_ENTRIES kept outputs), ``artifactsKept`` and,
    when the list is cut, ``artifactsOmitted``; nothing when no output was kept."""
    entries = [record.entry() for record in records]
    if not entries:
        return {}
    fields: dict[str, Any] = {
        "artifacts": entries[:MAX_ARTIFACT_ENTRIES],
        "artifactsKept": len(entries),
    }
    if len(entries) > MAX_ARTIFACT_ENTRIES:
        fields["artifactsOmitted"] = len(entries) - MAX_ARTIFACT_ENTRIES
    return fields


def small_json(value: Any, limit: int = MAX_OUTPUT_BYTES) -> Any | None:
    """``value`` when it is JSON data of at most ``limit`` bytes, else None.

    Non-finite floats are not JSON; numpy scalars become plain numbers.
    """
    value = _plain(value)
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value if len(text.encode()) <= limit else None


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        try:
            return item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def collect_results(
    outcomes: Mapping[str, TaskOutcome], metrics: Mapping[str, float | int]
) -> dict[str, Any]:
    """``status.results``: logged metrics and the small outputs of completed tasks."""
    outputs = {}
    for name, outcome in outcomes.items():
        if outcome.state == COMPLETED and outcome.result is not None:
            small = small_json(outcome.result)
            if small is not None:
                outputs[name] = small
    results: dict[str, Any] = {}
    if metrics:
        results["metrics"] = dict(metrics)
    if outputs:
        results["outputs"] = outputs
    return results


def result_rows(
    results: Mapping[str, Any], tasks: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """Flatten results into (name, value) rows for the summary table.

    ``tasks`` limits the task outputs shown (the runner passes the flow's final tasks:
    intermediate outputs stay in the status and the JSON output, not in the table).
    """
    shown = None if tasks is None else set(tasks)
    rows: list[tuple[str, str]] = []
    for name, value in results.get("metrics", {}).items():
        rows.append((name, _show(value)))
    for task, value in results.get("outputs", {}).items():
        if shown is not None and task not in shown:
            continue
        if isinstance(value, dict):
            rows.extend((f"{task}.{key}", _show(item)) for key, item in value.items())
        else:
            rows.append((task, _show(value)))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
