"""Run an Experiment's flow: plan one run (or one per sweep point), check them all, execute.

Shared by ``dioptra run`` on a laptop and in the Job's pod: the flow is loaded inside the
synced plugin folders, every run's parameters are checked before any task starts, and each
run feeds the progress view and the status reporter as its tasks change state.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dioptra_api import PLUGIN_DIR_ENV, Phase

from dioptra_runner.interrupts import RunInterrupted, SignalStop, StopRequested, stop_on_signals

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_SYNC = 0, 1, 2, 3

_LOG = logging.getLogger("dioptra.run")
# How long the flow runs get, after a stop signal, to end Cancelled in Prefect's API.
_CANCEL_GRACE_SECONDS = 15.0


class RunAborted(Exception):
    """The run cannot go on; carries the exit code and the one-line reason for the user."""

    def __init__(self, message: str, code: int, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass
class PointRun:
    """One run of the flow: the whole Experiment, or one point of its sweep."""

    point: Any  # a sweep.SweepPoint, or None for an Experiment without a sweep
    values: dict[str, Any]
    result: Any = None  # dioptra.flow.FlowRunResult once run
    metrics: dict[str, float | int] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    # Every log_metric call in order (dioptra.metrics.LoggedValue), for MLflow tracking.
    metric_history: list[Any] = field(default_factory=list)
    # The outputs kept in the artifact store (task_cache.ArtifactRecord), and its warnings.
    artifacts: list[Any] = field(default_factory=list)
    artifact_warnings: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"[{self.point.label}] " if self.point is not None else ""


def phase_name(succeeded: bool) -> str:
    return Phase.SUCCEEDED if succeeded else Phase.FAILED


def sweep_summary(runs: list[PointRun]) -> dict[str, Any]:
    from dioptra_api.sweep import summarize_points

    outcomes = {
        r.point.index: {
            "phase": phase_name(r.result.is_successful()),
            "results": r.results,
            "message": r.result.message,
        }
        for r in runs
    }
    return summarize_points([r.point for r in runs], outcomes)


def run_flow(
    experiment: Any,
    plugin_dir: Path | None,
    parameters: dict[str, Any],
    reporter: Any,
    args: argparse.Namespace,
    out: IO[str],
) -> tuple[list[PointRun], list[str]]:
    """Load the flow, check every run's parameters, then run (each sweep point in turn).

    A SIGINT or SIGTERM at any point in here cancels the flow runs and raises RunInterrupted
    with the runs as far as they got (none, before the flow is planned).
    """
    from dioptra.sdk.utilities.contexts import plugin_dirs

    runs: list[PointRun] = []
    try:
        with stop_on_signals() as stop:
            stop.on_exit(_warmup_stopper(args))
            with _plugin_dir_env(plugin_dir), plugin_dirs([]), _plugin_deps_path(plugin_dir):
                searched = [p for p in sys.path[1:] if plugin_dir and p.startswith(str(plugin_dir))]
                flow = _load_flow(experiment)
                artifacts = _artifact_setup(experiment, flow, args)
                runs = _plan_runs(
                    flow, experiment.spec.get("sweep"), parameters, searched, artifacts
                )
                max_parallel = experiment.spec.get("maxParallelTasks")
                _execute(flow, runs, max_parallel, reporter, args, out, stop, artifacts)
            upstream = {dep.name for node in flow.tasks for dep in node.dependencies}
            final_tasks = [node.name for node in flow.tasks if node.name not in upstream]
    except StopRequested as stopped:
        if _threads_left_behind():
            stopped.stop.exit_at_shutdown()
        raise RunInterrupted(stopped.signum, runs) from None
    return runs, final_tasks


def _warmup_stopper(args: argparse.Namespace) -> Callable[[bool], None]:
    """Stop the embedded Prefect server when the process exits the hard way (see interrupts)."""

    def stop_warmup(hurry: bool) -> None:
        warmup = getattr(args, "prefect_warmup", None)
        if warmup is None:
            return
        if hurry:
            warmup.terminate()
        else:
            warmup.stop()

    return stop_warmup


def _drain_prefect(hurry: bool) -> None:
    """Send Prefect's pending logs and events while its API still answers (a hard exit skips
    Prefect's own exit hooks); on a second signal nothing is waited for."""
    if hurry or "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=3)
    EventsWorker.drain_all(timeout=3)


def _threads_left_behind() -> bool:
    """Whether a thread that interpreter exit would wait for is still running (a task's)."""
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())


@contextlib.contextmanager
def _plugin_dir_env(plugin_dir: Path | None) -> Iterator[None]:
    """DIOPTRA_PLUGIN_DIR names the synced folder for the run only (plugin_dirs reads it)."""
    if plugin_dir is None:
        yield
        return
    previous = os.environ.get(PLUGIN_DIR_ENV)
    os.environ[PLUGIN_DIR_ENV] = str(plugin_dir.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PLUGIN_DIR_ENV, None)
        else:
            os.environ[PLUGIN_DIR_ENV] = previous


@contextlib.contextmanager
def _plugin_deps_path(plugin_dir: Path | None) -> Iterator[None]:
    """The plugin packages' installed requirements (recorded by the sync) go on sys.path right
    after the plugin folder, for the run only. sys.path is the process's, so the flow's tasks
    (Prefect runs them in threads of this process) import them too."""
    from dioptra_sync.deps import recorded_paths

    folders = recorded_paths(plugin_dir) if plugin_dir is not None else []
    if not folders:
        yield
        return
    missing = [folder for folder in folders if not os.path.isdir(folder)]
    if missing:
        raise RunAborted(
            f"the plugin requirements installed by the sync are missing at {missing[0]}: "
            "mount the dependency cache (DIOPTRA_DEPS_CACHE) at the same path in the sync "
            "and the run",
            EXIT_SYNC,
            "PluginSyncFailed",
        )
    saved = list(sys.path)
    anchor = str(plugin_dir.resolve()) if plugin_dir is not None else ""
    at = saved.index(anchor) + 1 if anchor in saved else 1
    sys.path[:] = list(dict.fromkeys([*saved[:at], *folders, *saved[at:]]))
    try:
        yield
    finally:
        sys.path[:] = saved


def _wait_for_prefect(args: argparse.Namespace) -> None:
    """Wait for the early-started Prefect server; if it failed, let Prefect start its own.

    The Job's sidecar is the exception: a run that falls back silently would hide a broken
    sidecar and pay the start it exists to save, so its absence ends the run.
    """
    from dioptra_runner.prefect_warmup import SidecarUnavailable, WarmupError

    warmup = getattr(args, "prefect_warmup", None)
    if warmup is None:
        return
    try:
        warmup.wait()
    except SidecarUnavailable as error:
        raise RunAborted(str(error), EXIT_INVALID, "PrefectUnavailable") from None
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


def _artifact_setup(experiment: Any, flow: Any, args: argparse.Namespace) -> Any:
    """The run's artifact store (dioptra_runner.artifact_setup), opened before any task runs."""
    from dioptra_runner.artifact_setup import ArtifactSetup
    from dioptra_runner.artifacts import StoreError

    cache = getattr(args, "cache_dir", None)
    if cache is None:
        from dioptra_runner.local_server import cache_dir

        cache = Path(args.plugin_cache) if args.plugin_cache else cache_dir(os.environ)
    setup = ArtifactSetup(experiment.spec, Path(cache))
    cached = bool(experiment.spec.get("cache")) or any(n.options.cache for n in flow.tasks)
    try:
        setup.open(cached_tasks=cached)
    except StoreError as error:
        raise RunAborted(str(error), EXIT_INVALID, "ArtifactStoreFailed") from None
    if cached and setup.configured is None and getattr(args, "in_cluster", False):
        # The operator warns of spec.cache (CacheNotKept); a plugin's call_task(cache=True)
        # is only visible here.
        _LOG.warning(
            "cached tasks with no artifact store (spec.artifacts.store, or the chart's "
            "artifacts.store): their outputs stay in this pod and no later run reuses them"
        )
    return setup


def _plan_runs(
    flow: Any,
    sweep: dict[str, Any] | None,
    parameters: dict[str, Any],
    searched: list[str],
    artifacts: Any = None,
) -> list[PointRun]:
    """One run, or one per sweep point; every problem of every run reported before any runs."""
    from dioptra.flow import FlowValidationError
    from dioptra_api.sweep import SweepError, expand_sweep

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
    from dioptra_runner.parameter_types import type_problems

    for point, given in planned:
        where = f"sweep point {point.label}: " if point is not None else ""
        try:
            values = flow.resolve_parameters(given)
        except FlowValidationError as error:
            problems.extend(f"{where}{p}" for p in error.problems)
            continue
        # Artifact inputs are fetched and checked now; the run keeps {artifact: <uri>} (what
        # the summary shows) and gets the objects when it starts.
        loaded = values if artifacts is None else _load_artifact_inputs(artifacts, values, where)
        runs.append(PointRun(point, values))
        problems.extend(f"{where}{p}" for p in type_problems(flow.tasks, loaded))
    if problems:
        folders = f" (plugin folders searched: {', '.join(searched) or 'none'})"
        listing = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
        raise RunAborted(f"the flow cannot start{folders}:\n{listing}", EXIT_INVALID, "InvalidFlow")
    return runs


def _load_artifact_inputs(artifacts: Any, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Parameters given as ``{artifact: <uri>}``, fetched and checked (before any task runs)."""
    from dioptra_runner.artifacts import ArtifactInputError, StoreError

    try:
        loaded: dict[str, Any] = artifacts.load_inputs(values)
    except ArtifactInputError as error:
        raise RunAborted(f"{where}{error}", EXIT_INVALID, "InvalidArtifact") from None
    except StoreError as error:
        raise RunAborted(f"{where}{error}", EXIT_FAILED, "ArtifactStoreFailed") from None
    return loaded


def _execute(
    flow: Any,
    runs: list[PointRun],
    max_parallel_tasks: int | None,
    reporter: Any,
    args: argparse.Namespace,
    out: IO[str],
    stop: SignalStop,
    artifacts: Any = None,
) -> None:
    """Run each PointRun on Prefect, feeding the progress view and the status reporter.

    The runs go on in worker threads while the main thread waits, so that a stop signal
    (StopRequested, raised in the main thread) reaches it here: it cancels the runs, gives
    them a few seconds to end their flow runs Cancelled, and passes the StopRequested on.
    """
    import dataclasses
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
    # Each run's latest outcomes by node name: the account of a run cut short (see below).
    latest: dict[str, dict[str, TaskOutcome]] = {r.prefix: {} for r in runs}
    lock = threading.Lock()

    class Monitor:
        """Fans one run's task changes out to the progress view and the status reporter."""

        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        def task_changed(self, outcome: TaskOutcome) -> None:
            shown = dataclasses.replace(outcome, name=f"{self.prefix}{outcome.name}")
            with lock:
                latest[self.prefix][outcome.name] = dataclasses.replace(outcome)
                outcomes[shown.name] = shown
                fields = progress_fields(list(outcomes.values()))
            board.task_changed(shown)
            reporter.update(**fields)

    def execute(run_: PointRun) -> None:
        keeper = artifacts.keeper(run_.prefix) if artifacts is not None else None
        with metrics.collecting() as logged, metrics.recording() as history:
            run_.result = flow.run(
                artifacts.load_inputs(run_.values) if artifacts is not None else run_.values,
                listener=Monitor(run_.prefix),
                max_parallel_tasks=max_parallel_tasks,
                cancellation=stop.cancellation,
                # Heartbeats let a long-lived server notice a crashed run; the temporary
                # server ends with this process, and its teardown would wait ~1 s for them.
                heartbeats=bool(getattr(args, "external_prefect", True)),
                store=keeper,
            )
        if keeper is not None:
            run_.artifacts, run_.artifact_warnings = list(keeper.records), list(keeper.warnings)
        run_.metrics = dict(logged)
        run_.metric_history = list(history)
        run_.results = collect_results(run_.result.tasks, run_.metrics)
        for outcome in run_.result.failed_tasks:
            if outcome.traceback:
                _LOG.error("task %s%s failed:\n%s", run_.prefix, outcome.name, outcome.traceback)

    _wait_for_prefect(args)
    stop.on_exit(_drain_prefect)
    if len(runs) > 1 and args.parallel > 1:
        _start_prefect_api()
    reporter.update(**progress_fields(list(outcomes.values())))
    live = out.isatty() and args.output == "table"
    with ProgressBoard(out, live=live) as board:
        board.declare(list(outcomes.values()))
        pool = ThreadPoolExecutor(max_workers=max(1, args.parallel))
        pending: list[concurrent.futures.Future[None]] = []
        try:
            for run_ in runs:
                pending.append(pool.submit(execute, run_))
            for finished in pending:
                finished.result()
        except StopRequested:
            _LOG.warning("%s received: cancelling the flow runs", stop.signal_name)
            stop.cancel()
            for waiting in pending:
                waiting.cancel()  # sweep points not started yet never start
            # A run ends its flow run Cancelled and returns without waiting for its running
            # tasks; the bound is for a Prefect API that no longer answers.
            concurrent.futures.wait(pending, timeout=_CANCEL_GRACE_SECONDS)
            with lock:
                for run_ in runs:
                    if run_.result is None:
                        run_.result = _cut_short(flow, latest[run_.prefix], stop)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _cut_short(flow: Any, latest: dict[str, Any], stop: SignalStop) -> Any:
    """The account of a run that did not return: never started, or stuck in its cancelling.

    Its tasks as last reported, those not finished Cancelled.
    """
    import dataclasses

    from dioptra.graph import (
        CANCELLED,
        FINAL_STATES,
        FlowRunResult,
        TaskOutcome,
        cancel_outcome,
        cancelled_run_message,
    )

    tasks = {}
    for node in flow.tasks:
        known = latest.get(node.name)
        outcome = dataclasses.replace(known) if known else TaskOutcome(node.name, node.task)
        if outcome.state not in FINAL_STATES:
            cancel_outcome(outcome, stop.signal_name)
        tasks[node.name] = outcome
    return FlowRunResult(flow.name, CANCELLED, tasks, cancelled_run_message(stop.signal_name))
