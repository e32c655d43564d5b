"""What a run leaves behind once it has ended: Prefect artifacts, a sweep's plot, MLflow.

Called by ``dioptra run`` after the last flow run and before the final status and summary,
so that the summary, the JSON document and ``status`` can name what was recorded. Every part
is a report: none of them fails the run, each failure is one warning line.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunRecords", "record_run"]

_LOG = logging.getLogger("dioptra.run")


@dataclass
class RunRecords:
    """Where the run was recorded: ``tracking`` is ``status.tracking`` (None: tracking off)."""

    tracking: dict[str, Any] | None = None
    plot: Path | None = None


def record_run(
    args: argparse.Namespace,
    experiment: Any,
    runs: list[Any],
    final_tasks: list[str],
    *,
    phase: str,
    message: str,
    sweep: dict[str, Any] | None,
    plugins: Any = None,
) -> RunRecords:
    from dioptra_api import SWEEP_POINT_ENV

    from dioptra_runner import prefect_artifacts

    records = RunRecords()
    point_key = os.environ.get(SWEEP_POINT_ENV, "").strip() or None
    for run_ in runs:
        prefect_artifacts.publish_run_results(experiment, run_, point_key=point_key)
    is_sweep = any(r.point is not None for r in runs)
    if is_sweep:
        prefect_artifacts.publish_sweep_table(experiment, runs)
        records.plot = _plot(args, experiment, runs, final_tasks)
    from dioptra_runner.tracking import track_runs, tracking_uri

    if tracking_uri() is not None:
        records.tracking = track_runs(
            experiment,
            runs,
            final_tasks,
            phase=phase,
            message=message,
            plugins=plugins,
            sweep=sweep,
            plot=records.plot,
        )
    if records.plot is not None:
        where = []
        if records.tracking and records.tracking.get("mlflowRunId"):
            where.append(f"MLflow run {records.tracking['mlflowRunId']}, plots/{records.plot.name}")
        prefect_artifacts.publish_plot_note(experiment, str(records.plot), where)
    return records


def _plot(
    args: argparse.Namespace, experiment: Any, runs: list[Any], final_tasks: list[str]
) -> Path | None:
    """The sweep's PNG, beside the run's log (``<cache>/plots/<log name>.png``)."""
    from dioptra_runner.sweep_plot import write_sweep_plot

    log = getattr(args, "log_path", None)
    cache = getattr(args, "cache_dir", None)
    stem = Path(log).stem if log else experiment.name
    folder = Path(cache) / "plots" if cache else Path(os.environ.get("TMPDIR") or "/tmp")
    try:
        return write_sweep_plot(experiment.name, runs, final_tasks, folder / f"{stem}.png")
    except Exception as error:  # a report: the run's results stand without it
        _LOG.warning("could not draw the sweep's plot: %s: %s", type(error).__name__, error)
        return None
