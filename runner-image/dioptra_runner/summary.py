"""What ``dioptra run`` prints at the end: a results table, a sweep table, or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from dioptra_runner.execution import PointRun, phase_name


def print_summary(
    args: argparse.Namespace,
    name: str,
    run_: PointRun,
    final_tasks: list[str],
    elapsed: float,
    out: IO[str],
) -> None:
    from dioptra_api.clock import format_duration

    from dioptra_runner.status import result_rows, task_entry

    result = run_.result
    if args.output == "json":
        document = {
            "experiment": name,
            "phase": phase_name(result.is_successful()),
            "message": result.message,
            "duration": round(elapsed, 3),
            "tasks": [task_entry(t) for t in result.tasks.values()],
            "results": run_.results,
        }
        out.write(json.dumps(document, indent=2, default=str) + "\n")
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
        _print_log_hint(console, args)


def print_sweep(
    args: argparse.Namespace,
    name: str,
    runs: list[PointRun],
    summary: dict[str, Any],
    message: str,
    elapsed: float,
    out: IO[str],
) -> None:
    from dioptra_api.clock import format_duration

    succeeded = all(r.result.is_successful() for r in runs)
    if args.output == "json":
        document = {
            "experiment": name,
            "phase": phase_name(succeeded),
            "message": message,
            "duration": round(elapsed, 3),
            "points": [
                {
                    "label": r.point.label,
                    "parameters": r.values,
                    "phase": phase_name(r.result.is_successful()),
                    "message": r.result.message,
                    "results": r.results,
                }
                for r in runs
            ],
        }
        out.write(json.dumps(document, indent=2, default=str) + "\n")
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
    if not succeeded:
        _print_log_hint(console, args)


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


def _print_log_hint(console: Any, args: argparse.Namespace) -> None:
    if getattr(args, "log_path", None):
        console.print(f"full tracebacks: {args.log_path}")


def print_error(message: str, args: argparse.Namespace) -> None:
    sys.stderr.write(f"dioptra run: {message}\n")
    if getattr(args, "log_path", None) and not args.in_cluster:
        sys.stderr.write(f"log: {args.log_path}\n")
