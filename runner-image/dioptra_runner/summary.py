"""What ``dioptra run`` prints at the end: a results table, a sweep table, or JSON.

With ``--output json`` stdout receives exactly one document in every outcome (success, a
task failed, invalid input, a failed sync, an interruption): ``experiment``, ``phase``,
``exitCode``, ``message``, ``duration`` (seconds), ``log`` and, unless the run succeeded,
``error`` (``reason`` and ``message``); a run adds ``tasks`` and ``results``, a sweep
``points``. Lines for people go to stderr then.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from dioptra.graph import COMPLETED

from dioptra_runner.execution import PointRun, phase_name
from dioptra_runner.interrupts import RunInterrupted

# The phase of a run stopped by a signal (the runner's own account; the operator decides the
# Experiment's phase from the Job: Suspended, or gone with a deleted Experiment).
CANCELLED = "Cancelled"


def _document(
    args: argparse.Namespace,
    name: str | None,
    phase: str,
    code: int,
    message: str,
    elapsed: float,
    **fields: Any,
) -> dict[str, Any]:
    log = getattr(args, "log_path", None)
    return {
        "experiment": name,
        "phase": phase,
        "exitCode": code,
        "message": message,
        "duration": round(elapsed, 3),
        "log": str(log) if log else None,
        **fields,
    }


def _write_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_summary(
    args: argparse.Namespace,
    name: str,
    run_: PointRun,
    final_tasks: list[str],
    elapsed: float,
    code: int,
    out: IO[str],
    records: Any = None,
) -> None:
    from dioptra_api.clock import format_duration

    from dioptra_runner.status import result_rows, task_entry

    result = run_.result
    if args.output == "json":
        error = (
            {}
            if result.is_successful()
            else {"reason": failure_reason([run_]), "message": result.message}
        )
        fields: dict[str, Any] = {
            "tasks": [task_entry(t) for t in result.tasks.values()],
            "results": run_.results,
            **_artifact_document(run_),
        }
        if getattr(records, "tracking", None) is not None:
            fields["tracking"] = records.tracking
        if error:
            fields["error"] = error
        phase = phase_name(result.is_successful())
        _write_json(_document(args, name, phase, code, result.message, elapsed, **fields))
        if error:
            _print_failure_line(args, f"{name}: {result.message}")
        _print_tracking_warning(records)
        return
    console = _console(out)
    rows = result_rows(run_.results, final_tasks)
    if rows:
        table = _table(f"results of {name}", ["name", "value"])
        for key, value in rows:
            table.add_row(key, value)
        console.print(table, soft_wrap=False)
    took = format_duration(elapsed)
    if result.is_successful():
        console.print(f"[green]Succeeded[/] {name}: {len(result.tasks)} tasks in {took}")
    else:
        console.print(f"[bold red]Failed[/] {name} after {took}: {result.message}")
    _print_artifacts(console, [run_])
    _print_records(console, records)
    _print_log_hint(console, args, failed=not result.is_successful())


def print_sweep(
    args: argparse.Namespace,
    name: str,
    runs: list[PointRun],
    summary: dict[str, Any],
    message: str,
    elapsed: float,
    code: int,
    out: IO[str],
    records: Any = None,
) -> None:
    from dioptra_api.clock import format_duration

    succeeded = all(r.result.is_successful() for r in runs)
    if args.output == "json":
        fields: dict[str, Any] = {
            "points": [
                {
                    "label": r.point.label,
                    "parameters": r.values,
                    "phase": phase_name(r.result.is_successful()),
                    "message": r.result.message,
                    "results": r.results,
                    **_artifact_document(r),
                }
                for r in runs
            ],
            "sweep": summary,
        }
        if getattr(records, "tracking", None) is not None:
            fields["tracking"] = records.tracking
        if not succeeded:
            fields["error"] = {"reason": failure_reason(runs), "message": message}
            _print_failure_line(args, f"{name}: {message}")
        _write_json(_document(args, name, phase_name(succeeded), code, message, elapsed, **fields))
        _print_tracking_warning(records)
        return
    headline_names = list(
        dict.fromkeys(key for row in summary["points"] for key in row.get("results", {}))
    )
    console = _console(out)
    table = _table(f"sweep of {name}", ["point", "phase", *headline_names])
    for row, run_ in zip(summary["points"], runs, strict=False):
        values = [_cell(row.get("results", {}).get(k)) for k in headline_names]
        table.add_row(run_.point.label, row["phase"], *values)
    console.print(table, soft_wrap=False)
    took = format_duration(elapsed)
    colour = "green" if succeeded else "bold red"
    console.print(f"[{colour}]{phase_name(succeeded)}[/] {name}: {message} in {took}")
    for run_ in runs:
        if not run_.result.is_successful():
            console.print(f"  {run_.point.label}: {run_.result.message}")
    _print_artifacts(console, runs)
    _print_records(console, records)
    _print_log_hint(console, args, failed=not succeeded)


def _console(out: IO[str]) -> Any:
    from rich.console import Console

    # Soft wrapping keeps a long failure message on one line for grep and CI logs.
    return Console(file=out, highlight=False, soft_wrap=True)


def _table(title: str, columns: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Kept outputs listed one per line at the end of a run (the JSON output lists them all).
_ARTIFACT_LINES = 40


def failure_reason(runs: list[PointRun]) -> str:
    """Why runs that went to their end failed: the artifact store, or a task."""
    from dioptra_api import Reason

    from dioptra_runner.artifacts import StoreError

    for run_ in runs:
        for outcome in run_.result.failed_tasks:
            if isinstance(outcome.error, StoreError):
                return Reason.ARTIFACT_STORE_FAILED
    return "TaskFailed"


def _artifact_document(run_: PointRun) -> dict[str, Any]:
    """The JSON output's ``artifacts`` (every kept output: no size limit here), the number of
    cached tasks and the store's warnings."""
    fields: dict[str, Any] = {}
    if run_.artifacts:
        fields["artifacts"] = [record.entry() for record in run_.artifacts]
    cached = sum(1 for t in run_.result.tasks.values() if t.cached and t.state == COMPLETED)
    if run_.artifacts or cached:
        fields["tasksCached"] = cached
    if run_.artifact_warnings:
        fields["warnings"] = list(run_.artifact_warnings)
    return fields


def _print_artifacts(console: Any, runs: list[PointRun]) -> None:
    """The kept outputs (task, object name, size, format), the cached count and the store's
    warnings; one line each, so that a URI is never cut."""
    from rich.markup import escape

    records = [record for run_ in runs for record in run_.artifacts]
    for warning in (w for run_ in runs for w in run_.artifact_warnings):
        console.print(f"[yellow]warning[/] {escape(warning)}")
    if not records:
        return
    store = records[0].uri.rpartition("/")[0]
    console.print(f"artifacts in {store}/:", markup=False)
    width = max(len(record.task) for record in records)
    for record in records[:_ARTIFACT_LINES]:
        name = record.uri.rpartition("/")[2] if record.uri.startswith(store) else record.uri
        note = "  (cached)" if record.cached else ""
        line = f"  {record.task:<{width}}  {name}  {_size(record.size):>9}  {record.format}{note}"
        console.print(line, markup=False)
    cached = sum(
        1 for run_ in runs for t in run_.result.tasks.values() if t.cached and t.state == COMPLETED
    )
    if len(records) > _ARTIFACT_LINES:
        left = len(records) - _ARTIFACT_LINES
        console.print(f"  ... and {left} more (--output json lists them all)", markup=False)
    total = sum(len(run_.result.tasks) for run_ in runs)
    console.print(f"{cached} of {total} tasks cached; {len(records)} outputs kept")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def _print_records(console: Any, records: Any) -> None:
    """Where the run was recorded: the sweep's plot, the MLflow run (or why tracking failed)."""
    if records is None:
        return
    if records.plot is not None:
        console.print(f"plot: {records.plot}", markup=False)
    tracking = records.tracking
    if not tracking:
        return
    if tracking.get("error"):
        console.print(
            f"warning: MLflow tracking failed: {tracking['error']}", markup=False, style="yellow"
        )
    if tracking.get("mlflowRunId"):
        children = tracking.get("mlflowChildRunIds") or {}
        more = f" (+{len(children)} point runs)" if children else ""
        console.print(
            f"mlflow: run {tracking['mlflowRunId']}{more} in experiment "
            f"{tracking.get('mlflowExperimentId')} at {tracking['mlflowTrackingUri']}",
            markup=False,
        )


def _print_tracking_warning(records: Any) -> None:
    """JSON mode: the tracking failure also as a line for the person watching stderr."""
    tracking = getattr(records, "tracking", None) or {}
    if tracking.get("error"):
        sys.stderr.write(f"dioptra run: warning: MLflow tracking failed: {tracking['error']}\n")


def _print_log_hint(console: Any, args: argparse.Namespace, *, failed: bool) -> None:
    """Where this run's own log file is (the tracebacks, when something failed)."""
    if getattr(args, "log_path", None):
        console.print(f"{'full tracebacks' if failed else 'log'}: {args.log_path}")


def _print_failure_line(args: argparse.Namespace, message: str) -> None:
    """One line for the person watching stderr (JSON mode), and where the details are."""
    sys.stderr.write(f"dioptra run: {message}\n")
    if getattr(args, "log_path", None) and not args.in_cluster:
        sys.stderr.write(f"log: {args.log_path}\n")


def print_error(
    args: argparse.Namespace,
    experiment: Any,
    code: int,
    reason: str,
    message: str,
    elapsed: float,
) -> None:
    """A run that could not start or go on: one message on stderr (and the JSON document)."""
    _print_failure_line(args, message)
    if args.output == "json":
        write_json_error(args, getattr(experiment, "name", None), code, reason, message, elapsed)


def write_json_error(
    args: argparse.Namespace,
    name: str | None,
    code: int,
    reason: str,
    message: str,
    elapsed: float,
) -> None:
    """The JSON document of a run that could not start or go on (also for a refused command
    line, whose ``args`` hold nothing)."""
    error = {"reason": reason, "message": message}
    _write_json(_document(args, name, "Failed", code, message, elapsed, error=error))


def interruption_message(stop: RunInterrupted) -> str:
    """``stopped by SIGINT after 2 of 5 tasks; not run: a, b, c`` (what ran and what did not)."""
    outcomes = [
        (f"{run_.prefix}{name}", outcome)
        for run_ in stop.runs
        if getattr(run_, "result", None) is not None
        for name, outcome in run_.result.tasks.items()
    ]
    if not outcomes:
        return f"stopped by {stop.signal_name} before the first task"
    done = [name for name, outcome in outcomes if outcome.state == COMPLETED]
    left = [name for name, outcome in outcomes if outcome.state != COMPLETED]
    message = f"stopped by {stop.signal_name} after {len(done)} of {len(outcomes)} tasks"
    if left:
        shown = ", ".join(left[:10]) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        message += f"; not completed: {shown}"
    return message


def print_interrupted(
    args: argparse.Namespace,
    experiment: Any,
    stop: RunInterrupted,
    message: str,
    elapsed: float,
) -> None:
    """A run stopped by a signal: what ran and what did not, no traceback."""
    from dioptra_runner.status import task_entry

    name = getattr(experiment, "name", None)
    _print_failure_line(args, f"{name}: {message}" if name else message)
    if args.output == "json":
        tasks = [
            task_entry(outcome)
            for run_ in stop.runs
            if getattr(run_, "result", None) is not None
            for outcome in run_.result.tasks.values()
        ]
        error = {"reason": "Interrupted", "message": message}
        document = _document(
            args, name, CANCELLED, stop.code, message, elapsed, tasks=tasks, error=error
        )
        _write_json(document)
