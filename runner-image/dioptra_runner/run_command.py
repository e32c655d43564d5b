"""``dioptra run``: run an Experiment's entry point on Prefect 3, locally or in the Job's pod.

Locally (the embedded default) it syncs the plugin sources into a cache folder,
runs the flow with a live progress view and prints the results. In a pod
(``--in-cluster``) it reads the Experiment snapshot the operator put into
``DIOPTRA_EXPERIMENT``, uses the plugins the init container synced, and patches
the Experiment's status as the run goes. Both paths share every step below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_SYNC = 0, 1, 2, 3

_LOG = logging.getLogger("dioptra.run")


class RunAborted(Exception):
    """The run cannot go on; carries the exit code and the one-line reason for the user."""

    def __init__(self, message: str, code: int, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "experiment",
        nargs="?",
        help="the Experiment YAML file (omit with --in-cluster: read from $DIOPTRA_EXPERIMENT)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter (VALUE is parsed as YAML: 0.1, [28, 28], true)",
    )
    parser.add_argument(
        "--output", choices=("table", "json"), default="table", help="how to print the results"
    )
    parser.add_argument(
        "--plugin-cache",
        type=Path,
        help="folder to sync plugins into (default: $DIOPTRA_CACHE_DIR or ~/.cache/dioptra)",
    )
    parser.add_argument(
        "--log-file", type=Path, help="where the full log goes (default: in the cache folder)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="with spec.sweep: run up to N points at once (default: one after another)",
    )
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        help="run inside the Job's pod: no sync, report status to the Kubernetes API",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``dioptra run`` command; returns the process exit code."""
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    from dioptra_runner.prefect_warmup import start_background_warmup

    # Without a Prefect server to talk to, start Prefect's temporary one now: it boots while
    # we load the Experiment, import Prefect and the plugins (docs/prefect-startup.md).
    args.prefect_warmup = start_background_warmup()
    out = sys.stdout
    from dioptra_runner.reporter import NullStatusReporter, StatusReporter

    reporter: StatusReporter = NullStatusReporter()
    try:
        experiment = _load_experiment(args)
        cache = _cache_dir(args, experiment.name)
        _configure_logging(args, cache)
        if args.in_cluster:
            reporter = _cluster_reporter()
        reporter.update(phase="Running", startTime=_iso(started), message="running the entry point")
        parameters = _parameters(experiment.spec, args.overrides)
        plugin_dir = _plugin_folder(args, experiment, cache, out)
        manifest = _manifest(plugin_dir)
        if manifest is not None:
            reporter.update(plugins=manifest.get("files", []))
        runs, final_tasks = _run_flow(experiment, plugin_dir, parameters, reporter, args, out)
    except RunAborted as aborted:
        _LOG.error("%s", aborted)
        elapsed = time.monotonic() - clock
        _finish(reporter, "Failed", str(aborted), started, elapsed, reason=aborted.reason)
        _print_error(str(aborted), args)
        return aborted.code

    elapsed = time.monotonic() - clock
    succeeded = all(r.result.is_successful() for r in runs)
    if len(runs) == 1 and runs[0].point is None:
        run_ = runs[0]
        done = f"{len(run_.result.tasks)} tasks completed"
        message = done if succeeded else run_.result.message
        _finish(reporter, _phase(succeeded), message, started, elapsed, results=run_.results)
        _print_summary(args, experiment.name, run_, final_tasks, elapsed, out)
    else:
        summary = _sweep_summary(runs)
        ok = sum(1 for r in runs if r.result.is_successful())
        message = f"{ok}/{len(runs)} sweep points succeeded"
        _finish(reporter, _phase(succeeded), message, started, elapsed, sweep=summary)
        _print_sweep(args, experiment.name, runs, summary, message, elapsed, out)
    return EXIT_OK if succeeded else EXIT_FAILED


@dataclass
class PointRun:
    """One run of the flow: the whole Experiment, or one point of its sweep."""

    point: Any  # a sweep.SweepPoint, or None for an Experiment without a sweep
    values: dict[str, Any]
    result: Any = None  # dioptra.flow.FlowRunResult once run
    metrics: dict[str, float | int] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"[{self.point.label}] " if self.point is not None else ""


def _phase(succeeded: bool) -> str:
    return "Succeeded" if succeeded else "Failed"


def _sweep_summary(runs: list[PointRun]) -> dict[str, Any]:
    from dioptra_runner.sweep import summarize_points

    outcomes = {
        r.point.index: {
            "phase": _phase(r.result.is_successful()),
            "results": r.results,
            "message": r.result.message,
        }
        for r in runs
    }
    return summarize_points([r.point for r in runs], outcomes)


# -- steps ------------------------------------------------------------------------------------


def _load_experiment(args: argparse.Namespace) -> Any:
    from dioptra_runner.experiment import (
        ExperimentError,
        experiment_from_env,
        load_experiment_file,
    )

    try:
        if args.experiment:
            return load_experiment_file(args.experiment)
        if args.in_cluster and os.environ.get("DIOPTRA_EXPERIMENT"):
            return experiment_from_env(os.environ["DIOPTRA_EXPERIMENT"])
    except ExperimentError as error:
        raise RunAborted(str(error), EXIT_INVALID, "InvalidSpec") from None
    raise RunAborted(
        "no Experiment given: pass a file, or set DIOPTRA_EXPERIMENT with --in-cluster",
        EXIT_INVALID,
        "InvalidSpec",
    )


def _parameters(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    import yaml

    parameters = dict(spec.get("parameters") or {})
    for override in overrides:
        name, sep, raw = override.partition("=")
        if not sep or not name.strip():
            raise RunAborted(
                f"--set expects NAME=VALUE, got {override!r}", EXIT_INVALID, "InvalidParameters"
            )
        try:
            parameters[name.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            parameters[name.strip()] = raw
    return parameters


def _plugin_folder(
    args: argparse.Namespace, experiment: Any, cache: Path, out: IO[str]
) -> Path | None:
    """Where the plugins are: synced by the init container in a pod, synced now locally."""
    if args.in_cluster:
        folder = os.environ.get("DIOPTRA_PLUGIN_DIR")
        return Path(folder) if folder else None
    sources = experiment.resolved_plugin_sources()
    if not sources:
        return None
    from dioptra_runner.sync import SyncError, sync_sources

    plugins_spec = experiment.spec.get("plugins", {})
    if plugins_spec.get("region"):
        os.environ.setdefault("AWS_DEFAULT_REGION", plugins_spec["region"])
    dest = cache / "plugins" / experiment.name
    dest.mkdir(parents=True, exist_ok=True)
    try:
        report = sync_sources(
            sources,
            dest,
            endpoint_url=plugins_spec.get("endpointURL"),
            base=experiment.base_dir,
            progress_stream=out if out.isatty() else None,
        )
    except SyncError as error:
        raise RunAborted(f"plugin sync failed: {error}", EXIT_SYNC, "PluginSyncFailed") from None
    out.write(f"plugins: {report.summary()}\n")
    return dest


def _manifest(plugin_dir: Path | None) -> dict[str, Any] | None:
    if plugin_dir is None:
        return None
    from dioptra_runner.sync import load_manifest

    return load_manifest(plugin_dir)


def _run_flow(
    experiment: Any,
    plugin_dir: Path | None,
    parameters: dict[str, Any],
    reporter: Any,
    args: argparse.Namespace,
    out: IO[str],
) -> tuple[list[PointRun], list[str]]:
    """Load the flow, check every run's parameters, then run (each sweep point in turn)."""
    from dioptra.sdk.utilities.contexts import plugin_dirs

    if plugin_dir is not None:
        os.environ["DIOPTRA_PLUGIN_DIR"] = str(plugin_dir.resolve())
    with plugin_dirs([]):
        searched = [p for p in sys.path[1:] if plugin_dir and p.startswith(str(plugin_dir))]
        flow = _load_flow(experiment)
        runs = _plan_runs(flow, experiment.spec.get("sweep"), parameters, searched)
        _execute(flow, runs, experiment.spec.get("maxParallelTasks"), reporter, args, out)
    upstream = {dep.name for node in flow.tasks for dep in node.dependencies}
    return runs, [node.name for node in flow.tasks if node.name not in upstream]


def _wait_for_prefect(args: argparse.Namespace) -> None:
    """Wait for the early-started Prefect server; if it failed, let Prefect start its own."""
    from dioptra_runner.prefect_warmup import WarmupError

    warmup = getattr(args, "prefect_warmup", None)
    if warmup is None:
        return
    try:
        warmup.wait()
    except WarmupError as error:
        _LOG.warning("%s; Prefect will start its own temporary server", error)
        warmup.stop()


def _start_prefect_api() -> None:
    """Start Prefect's temporary API server (if one is needed) before runs start in threads.

    Prefect starts it lazily, and threads that race to the first client each start their
    own; the extra one outlives the process.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def _load_flow(experiment: Any) -> Any:
    from dioptra_runner.entrypoint import EntryPointError, load_flow

    try:
        return load_flow(experiment.spec["entryPoint"])
    except EntryPointError as error:
        if error.details:
            _LOG.error("entry point failed to load:\n%s", error.details)
        raise RunAborted(str(error), EXIT_INVALID, "InvalidEntryPoint") from None


def _plan_runs(
    flow: Any, sweep: dict[str, Any] | None, parameters: dict[str, Any], searched: list[str]
) -> list[PointRun]:
    """One run, or one per sweep point; every problem of every run reported before any runs."""
    from dioptra.flow import FlowValidationError

    from dioptra_runner.sweep import SweepError, expand_sweep

    plugin_problems = flow.problems()
    if sweep:
        try:
            points = expand_sweep(sweep, parameters, known_parameters=set(flow.parameters))
        except SweepError as error:
            listing = "\n".join(f"  - {p}" for p in error.problems)
            raise RunAborted(f"invalid sweep:\n{listing}", EXIT_INVALID, "InvalidSweep") from None
        planned: list[tuple[Any, dict[str, Any]]] = [(p, p.parameters) for p in points]
    else:
        planned = [(None, parameters)]
    runs, problems = [], list(plugin_problems)
    for point, given in planned:
        try:
            runs.append(PointRun(point, flow.resolve_parameters(given)))
        except FlowValidationError as error:
            where = f"sweep point {point.label}: " if point is not None else ""
            problems.extend(f"{where}{p}" for p in error.problems)
    if problems:
        folders = f" (plugin folders searched: {', '.join(searched) or 'none'})"
        listing = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
        raise RunAborted(f"the flow cannot start{folders}:\n{listing}", EXIT_INVALID, "InvalidFlow")
    return runs


def _execute(
    flow: Any,
    runs: list[PointRun],
    max_parallel_tasks: int | None,
    reporter: Any,
    args: argparse.Namespace,
    out: IO[str],
) -> None:
    """Run each PointRun on Prefect, feeding the progress view and the status reporter."""
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from dioptra import metrics
    from dioptra.flow import TaskOutcome

    from dioptra_runner.progress import ProgressBoard
    from dioptra_runner.status import collect_results, progress_fields

    outcomes = {
        f"{r.prefix}{n.name}": TaskOutcome(name=f"{r.prefix}{n.name}", task=n.task)
        for r in runs
        for n in flow.tasks
    }
    lock = threading.Lock()

    class Monitor:
        """Fans one run's task changes out to the progress view and the status reporter."""

        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        def task_changed(self, outcome: TaskOutcome) -> None:
            shown = dataclasses.replace(outcome, name=f"{self.prefix}{outcome.name}")
            with lock:
                outcomes[shown.name] = shown
                fields = progress_fields(list(outcomes.values()))
            board.task_changed(shown)
            reporter.update(**fields)

    def execute(run_: PointRun) -> None:
        with metrics.collecting() as logged:
            run_.result = flow.run(
                run_.values, listener=Monitor(run_.prefix), max_parallel_tasks=max_parallel_tasks
            )
        run_.metrics = dict(logged)
        run_.results = collect_results(run_.result.tasks, run_.metrics)
        for outcome in run_.result.failed_tasks:
            if outcome.traceback:
                _LOG.error("task %s%s failed:\n%s", run_.prefix, outcome.name, outcome.traceback)

    _wait_for_prefect(args)
    if len(runs) > 1 and args.parallel > 1:
        _start_prefect_api()
    reporter.update(**progress_fields(list(outcomes.values())))
    live = out.isatty() and args.output == "table"
    with ProgressBoard(out, live=live) as board:
        board.declare(list(outcomes.values()))
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            for finished in [pool.submit(execute, r) for r in runs]:
                finished.result()


def _finish(
    reporter: Any,
    phase: str,
    message: str,
    started: dt.datetime,
    elapsed: float,
    *,
    results: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    from dioptra_runner.status import format_duration

    fields: dict[str, Any] = {
        "phase": phase,
        "message": _one_line(message)[:1000],
        "completionTime": _iso(started + dt.timedelta(seconds=elapsed)),
        "duration": format_duration(elapsed),
    }
    if results is not None:
        fields["results"] = results
    if sweep is not None:
        fields["sweep"] = sweep
    if reason is not None:
        _LOG.info("run ended %s (%s)", phase, reason)
    reporter.update(**fields)
    reporter.close(timeout=10)


# -- output -----------------------------------------------------------------------------------


def _print_summary(
    args: argparse.Namespace,
    name: str,
    run_: PointRun,
    final_tasks: list[str],
    elapsed: float,
    out: IO[str],
) -> None:
    from dioptra_runner.status import format_duration, result_rows, task_entry

    result = run_.result
    if args.output == "json":
        document = {
            "experiment": name,
            "phase": _phase(result.is_successful()),
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


def _print_sweep(
    args: argparse.Namespace,
    name: str,
    runs: list[PointRun],
    summary: dict[str, Any],
    message: str,
    elapsed: float,
    out: IO[str],
) -> None:
    from dioptra_runner.status import format_duration

    succeeded = all(r.result.is_successful() for r in runs)
    if args.output == "json":
        document = {
            "experiment": name,
            "phase": _phase(succeeded),
            "message": message,
            "duration": round(elapsed, 3),
            "points": [
                {
                    "label": r.point.label,
                    "parameters": r.values,
                    "phase": _phase(r.result.is_successful()),
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
    console.print(f"[{colour}]{_phase(succeeded)}[/] {name}: {message} in {took}")
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


def _print_error(message: str, args: argparse.Namespace) -> None:
    sys.stderr.write(f"dioptra run: {message}\n")
    if getattr(args, "log_path", None) and not args.in_cluster:
        sys.stderr.write(f"log: {args.log_path}\n")


# -- plumbing ---------------------------------------------------------------------------------


def _one_line(message: str) -> str:
    """A multi-line problem list as one status line: ``head problem; problem``."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} {'; '.join(lines[1:])}"


def _iso(moment: dt.datetime) -> str:
    from dioptra_runner.status import iso

    return iso(moment) or ""


def _cache_dir(args: argparse.Namespace, name: str) -> Path:
    if args.plugin_cache:
        return Path(args.plugin_cache)
    base = os.environ.get("DIOPTRA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dioptra"
    )
    return Path(base)


def _configure_logging(args: argparse.Namespace, cache: Path) -> None:
    """Full detail (tracebacks, Prefect's logs) to a file locally, to stderr in a pod.

    Locally the terminal belongs to the progress view and the summary, so Prefect's
    console handler is silenced (before Prefect configures logging) and a file
    handler on the root logger receives everything instead.
    """
    if not args.in_cluster:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    logging.getLogger("dioptra").setLevel(logging.INFO)
    if args.in_cluster:
        args.log_path = None
        return
    path = args.log_file or cache / "logs" / "dioptra-run.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    args.log_path = path


def _cluster_reporter() -> Any:
    from dioptra_runner.reporter import SWEEP_POINT_ENV, KubernetesStatusReporter
    from dioptra_runner.reporter import PointStatusReporter as Point

    try:
        inner = KubernetesStatusReporter.from_environment()
        point = os.environ.get(SWEEP_POINT_ENV, "").strip()  # one point Job of a sweep
        return Point(inner, point) if point else inner
    except Exception as error:  # the run must go on without status reporting
        _LOG.error("status reporting disabled: %s", error)
        from dioptra_runner.reporter import NullStatusReporter

        return NullStatusReporter()
