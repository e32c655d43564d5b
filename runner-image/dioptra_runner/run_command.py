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
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from dioptra_api import EXPERIMENT_ENV, PLUGIN_DIR_ENV, Phase

from dioptra_runner.execution import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_SYNC,
    RunAborted,
    phase_name,
    run_flow,
    sweep_summary,
)
from dioptra_runner.interrupts import RunInterrupted, StopRequested, stop_on_signals
from dioptra_runner.summary import (
    CANCELLED,
    failure_reason,
    interruption_message,
    print_error,
    print_interrupted,
    print_summary,
    print_sweep,
)

_LOG = logging.getLogger("dioptra.run")


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
    """The ``dioptra run`` command; returns the process exit code.

    With ``--output json`` stdout holds exactly one JSON document whatever the outcome, and
    every line meant for a person (sync, progress, errors) goes to stderr.
    """
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    from dioptra_runner.local_server import use_local_server
    from dioptra_runner.prefect_warmup import SidecarApi, pod_prefect_api, uses_external_server

    # No traceback-free line is ever printed twice: Python's last-resort handler would echo
    # each error logged before the log file is set up.
    logging.getLogger("dioptra").addHandler(logging.NullHandler())
    # A server someone runs, read before we point Prefect at one of ours: checked up front,
    # with heartbeats. The Job's sidecar is a temporary server like ours: waited for (it may
    # still be starting), and no heartbeats.
    args.external_prefect = uses_external_server(os.environ)
    # Without a Prefect server to talk to, start Prefect's temporary one now: it boots while
    # we load the Experiment, import Prefect and the plugins (docs/prefect-startup.md). A pod
    # gets its own (or its Job's sidecar serves it, started before the plugin sync); a laptop
    # shares one kept between runs (a later run starts none).
    if args.in_cluster:
        args.prefect_warmup, args.prefect_note = pod_prefect_api(), ""
    else:
        args.prefect_warmup, args.prefect_note = use_local_server()
    if isinstance(args.prefect_warmup, SidecarApi):
        args.external_prefect = False
    out = sys.stderr if args.output == "json" else sys.stdout
    from dioptra_runner.reporter import NullStatusReporter, StatusReporter

    reporter: StatusReporter = NullStatusReporter()
    experiment: Any = None
    # From here on the first SIGINT or SIGTERM stops the command cleanly wherever it is
    # (loading, syncing, running, printing); a second one exits at once.
    with stop_on_signals():
        try:
            experiment = _load_experiment(args)
            _check_local_prefect(args)
            cache = _cache_dir(args, experiment.name)
            args.cache_dir = cache
            _configure_logging(args, cache, experiment.name, started)
            if args.prefect_note:
                _LOG.info("Prefect API: %s", args.prefect_note)
            if args.in_cluster:
                experiment = _sweep_point(experiment)
                reporter = _cluster_reporter()
            reporter.update(
                phase=Phase.RUNNING, startTime=_iso(started), message="running the entry point"
            )
            parameters = _parameters(experiment.spec, args.overrides)
            _check_parameter_size(parameters)
            _check_prefect_api(args)
            plugin_dir = _plugin_folder(args, experiment, cache, out)
            manifest = _manifest(plugin_dir)
            plugins = None
            if manifest is not None:
                from dioptra_sync import status_entries  # a bundle as its digest, not its files

                plugins = status_entries(manifest)
                reporter.update(plugins=plugins)
            runs, final_tasks = run_flow(experiment, plugin_dir, parameters, reporter, args, out)
            return _report_outcome(
                args, experiment, runs, final_tasks, reporter, started, clock, out, plugins
            )
        except RunAborted as aborted:
            _LOG.error("%s", aborted)
            elapsed = time.monotonic() - clock
            _finish(reporter, Phase.FAILED, str(aborted), started, elapsed, reason=aborted.reason)
            print_error(args, experiment, aborted.code, aborted.reason, str(aborted), elapsed)
            return aborted.code
        except (RunInterrupted, StopRequested) as caught:
            stop = (
                caught if isinstance(caught, RunInterrupted) else RunInterrupted(caught.signum, [])
            )
            elapsed = time.monotonic() - clock
            message = interruption_message(stop)
            _LOG.warning("%s", message)
            tracking = _track_interrupted(experiment, stop.runs, message)
            _finish(
                reporter,
                CANCELLED,
                message,
                started,
                elapsed,
                reason="Interrupted",
                tracking=tracking,
            )
            print_interrupted(args, experiment, stop, message, elapsed)
            return stop.code


# What is left for MLflow once a signal stopped the run: a pod's grace period is 30 s by
# default, and the Prefect flow runs and the status report need some of it too.
INTERRUPTED_TRACKING_SECONDS = 10.0


def _track_interrupted(experiment: Any, runs: list[Any], message: str) -> dict[str, Any] | None:
    """The MLflow record of a run stopped by a signal (KILLED), if tracking is on and the
    flow got as far as a run; None otherwise. A second signal still exits at once."""
    if experiment is None or not runs:
        return None
    from dioptra_runner.tracking import track_runs

    return track_runs(
        experiment,
        runs,
        [],
        phase=CANCELLED,
        message=message,
        time_limit=INTERRUPTED_TRACKING_SECONDS,
    )


def _report_outcome(
    args: argparse.Namespace,
    experiment: Any,
    runs: list[Any],
    final_tasks: list[str],
    reporter: Any,
    started: dt.datetime,
    clock: float,
    out: IO[str],
    plugins: Any = None,
) -> int:
    """The final status, the summary and the exit code of a run that went to its end."""
    elapsed = time.monotonic() - clock
    succeeded = all(r.result.is_successful() for r in runs)
    code = EXIT_OK if succeeded else EXIT_FAILED
    single = len(runs) == 1 and runs[0].point is None
    outcome: dict[str, Any]
    if single:
        done = f"{len(runs[0].result.tasks)} tasks completed"
        message = done if succeeded else runs[0].result.message
        outcome = {"results": runs[0].results}
    else:
        ok = sum(1 for r in runs if r.result.is_successful())
        message = f"{ok}/{len(runs)} sweep points succeeded"
        outcome = {"sweep": sweep_summary(runs)}
    reason = "Succeeded" if succeeded else failure_reason(runs)
    # Prefect artifacts, a sweep's plot and MLflow tracking (reports: they never fail the run).
    from dioptra_runner.run_records import record_run

    records = record_run(
        args,
        experiment,
        runs,
        final_tasks,
        phase=phase_name(succeeded),
        message=message,
        sweep=outcome.get("sweep"),
        plugins=plugins,
    )
    if records.plot is not None and "sweep" in outcome:
        outcome["sweep"]["plot"] = str(records.plot)
    if records.tracking is not None:
        outcome["tracking"] = records.tracking
    from dioptra_runner.status import artifact_fields

    kept = artifact_fields(record for run_ in runs for record in run_.artifacts)
    if kept:
        reporter.update(**kept)
    _finish(reporter, phase_name(succeeded), message, started, elapsed, reason=reason, **outcome)
    if single:
        print_summary(
            args, experiment.name, runs[0], final_tasks, elapsed, code, out, records=records
        )
    else:
        sweep = outcome["sweep"]
        print_sweep(
            args, experiment.name, runs, sweep, message, elapsed, code, out, records=records
        )
    return code


def _load_experiment(args: argparse.Namespace) -> Any:
    from dioptra_runner.experiment import (
        ExperimentError,
        experiment_from_env,
        load_experiment_file,
    )

    try:
        if args.experiment:
            return load_experiment_file(args.experiment)
        if args.in_cluster and os.environ.get(EXPERIMENT_ENV):
            return experiment_from_env(os.environ[EXPERIMENT_ENV])
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
    problems = []
    for override in overrides:
        name, sep, raw = override.partition("=")
        if not sep or not name.strip():
            problems.append(f"--set expects NAME=VALUE, got {override!r}")
            continue
        try:
            parameters[name.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None else ""
            reason = getattr(error, "problem", None) or "not valid YAML"
            problems.append(
                f"--set {name.strip()}: {raw!r} does not parse ({reason}{where}); "
                "quote it to pass a string: --set 'NAME=\"text\"'"
            )
    if problems:
        raise RunAborted(
            _listing("invalid --set values", problems), EXIT_INVALID, "InvalidParameters"
        )
    return parameters


def _listing(head: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{head}:\n" + "\n".join(f"  - {problem}" for problem in problems)


def _check_parameter_size(parameters: dict[str, Any]) -> None:
    """Refuse, up front and naming the largest, parameters that Prefect would refuse mid-run.

    Prefect stores a flow run's parameters in its database and caps them (512 KiB by
    default); the value itself is never echoed, only its name and size.
    """
    import json

    from dioptra_runner.prefect_checks import max_parameter_size

    limit = max_parameter_size()
    if limit <= 0:
        return
    try:
        size = len(json.dumps({"parameters": parameters}, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return  # not JSON: the flow's own checks say what is wrong with it
    if size <= limit:
        return
    sizes = {
        name: len(json.dumps(value, separators=(",", ":"), default=str))
        for name, value in parameters.items()
    }
    largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
    named = ", ".join(f"{name} ({sizes[name]:,} bytes)" for name in largest)
    raise RunAborted(
        f"the parameters are {size:,} bytes as JSON, over Prefect's limit of {limit:,} "
        f"(PREFECT_SERVER_API_MAX_PARAMETER_SIZE); largest: {named}. Pass large inputs as "
        "files in the plugin sources, or as a path parameter",
        EXIT_INVALID,
        "InvalidParameters",
    )


def _check_local_prefect(args: argparse.Namespace) -> None:
    """The temporary Prefect server needs a writable PREFECT_HOME; say so before anything runs."""
    error = getattr(args.prefect_warmup, "error", None)
    if error is None:
        return
    from dioptra_runner.prefect_warmup import prefect_home

    raise RunAborted(
        f"cannot start the local Prefect server: {prefect_home()} is not writable "
        f"({error.strerror or error}); set PREFECT_HOME to a writable folder (in a pod, "
        "mount a writable emptyDir at /tmp, as the operator's Jobs do) or PREFECT_API_URL "
        "to a Prefect server",
        EXIT_INVALID,
        "PrefectUnavailable",
    )


def _check_prefect_api(args: argparse.Namespace) -> None:
    """A Prefect server named by the user must answer before anything runs."""
    if not args.external_prefect:
        return
    from prefect.settings import get_current_settings

    from dioptra_runner.prefect_checks import PrefectUnreachable, check_reachable

    api_url = str(get_current_settings().api.url or "")
    if not api_url:
        return
    try:
        check_reachable(api_url)
    except PrefectUnreachable as error:
        raise RunAborted(str(error), EXIT_INVALID, "PrefectUnavailable") from None


def _plugin_folder(
    args: argparse.Namespace, experiment: Any, cache: Path, out: IO[str]
) -> Path | None:
    """Where the plugins are: synced by the init container in a pod, synced now locally."""
    if args.in_cluster:
        folder = os.environ.get(PLUGIN_DIR_ENV)
        return Path(folder) if folder else None
    sources = experiment.resolved_plugin_sources()
    if not sources:
        return None
    from dioptra_sync import SyncError, sync_sources
    from dioptra_sync.deps import install_plugin_deps

    plugins_spec = experiment.spec.get("plugins", {})
    if plugins_spec.get("region"):
        os.environ.setdefault("AWS_DEFAULT_REGION", plugins_spec["region"])
    dest = cache / "plugins" / experiment.name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunAborted(
            f"cannot use {dest} for the plugins: {error.strerror or error}; "
            "pass --plugin-cache DIR (or set DIOPTRA_CACHE_DIR) to a writable folder",
            EXIT_INVALID,
            "InvalidArguments",
        ) from None
    try:
        report = sync_sources(
            sources,
            dest,
            endpoint_url=plugins_spec.get("endpointURL"),
            base=experiment.base_dir,
            progress_stream=out if out.isatty() else None,
        )
        deps = install_plugin_deps(dest, _deps_cache(cache))
    except SyncError as error:
        raise RunAborted(f"plugin sync failed: {error}", EXIT_SYNC, "PluginSyncFailed") from None
    out.write(f"plugins: {report.summary()}\n")
    if deps is not None:
        out.write(f"plugins: {deps.summary()}\n")
    return dest


def _deps_cache(cache: Path) -> Path:
    """Where local runs install plugin requirements: $DIOPTRA_DEPS_CACHE, else the cache's
    `deps/` (shared by every Experiment: one folder per resolved set)."""
    return Path(os.environ.get("DIOPTRA_DEPS_CACHE") or cache / "deps")


def _manifest(plugin_dir: Path | None) -> dict[str, Any] | None:
    if plugin_dir is None:
        return None
    from dioptra_sync import load_manifest

    return load_manifest(plugin_dir)


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
    tracking: dict[str, Any] | None = None,
) -> None:
    from dioptra_api.clock import format_duration

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
    if tracking is not None:
        fields["tracking"] = tracking
    if reason is not None:
        fields["reason"] = reason
        _LOG.info("run ended %s (%s)", phase, reason)
    reporter.update(**fields)
    reporter.close(timeout=10)


def _one_line(message: str) -> str:
    """A multi-line problem list as one status line: ``head problem; problem``."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} {'; '.join(lines[1:])}"


def _iso(moment: dt.datetime) -> str:
    from dioptra_api.clock import rfc3339 as iso

    return iso(moment) or ""


def _cache_dir(args: argparse.Namespace, name: str) -> Path:
    if args.plugin_cache:
        return Path(args.plugin_cache)
    from dioptra_runner.local_server import cache_dir

    return cache_dir(os.environ)


def _configure_logging(
    args: argparse.Namespace, cache: Path, name: str, started: dt.datetime
) -> None:
    """Full detail (tracebacks, Prefect's logs) to a file of this run's own locally, to stderr
    in a pod.

    Locally the terminal belongs to the progress view and the summary, so Prefect's console
    handler is silenced (before Prefect configures logging) and a file handler on the root
    logger receives everything instead. Each run writes its own file (the Experiment's name,
    the start time and the pid): two runs at once never share one.
    """
    if not args.in_cluster:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    logging.getLogger("dioptra").setLevel(logging.INFO)
    if args.in_cluster:
        args.log_path = None
        return
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = args.log_file or cache / "logs" / f"{name}-{stamp}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    except OSError as error:
        raise RunAborted(
            f"cannot write the log file {path}: {error.strerror or error}; "
            "pass --log-file PATH (or --plugin-cache DIR) somewhere writable",
            EXIT_INVALID,
            "InvalidArguments",
        ) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    args.log_path = path


def _sweep_point(experiment: Any) -> Any:
    """In the cluster, the Experiment of this Pod's point when the snapshot holds a sweep.

    A sweep runs as one Indexed Job: each Pod takes the point of its JOB_COMPLETION_INDEX (the
    operator's order, `cluster_points`), runs it as a plain run with the point's parameters,
    and tells the rest of the process its key (DIOPTRA_SWEEP_POINT: the reporter writes under
    `status.sweepPoints.<key>`). A bad index or sweep fails this point in one line.
    """
    import dataclasses

    from dioptra_api import JOB_COMPLETION_INDEX_ENV, SWEEP_POINT_ENV
    from dioptra_api.sweep import SweepError, point_for_index

    spec = experiment.spec
    if not spec.get("sweep"):
        return experiment
    index = os.environ.get(JOB_COMPLETION_INDEX_ENV)
    try:
        point = point_for_index(spec["sweep"], spec.get("parameters") or {}, index)
    except SweepError as error:
        raise RunAborted(str(error), EXIT_INVALID, "InvalidSpec") from None
    os.environ[SWEEP_POINT_ENV] = point.key
    _LOG.info("sweep point %s (index %s): %s", point.key, index, point.label)
    plain = {key: value for key, value in spec.items() if key != "sweep"}
    return dataclasses.replace(experiment, spec={**plain, "parameters": dict(point.parameters)})


def _cluster_reporter() -> Any:
    from dioptra_api import SWEEP_POINT_ENV

    from dioptra_runner.reporter import (
        KubernetesStatusReporter,
        PointStatusReporter,
        RunStatusReporter,
    )

    try:
        inner = KubernetesStatusReporter.from_environment()
        point = os.environ.get(SWEEP_POINT_ENV, "").strip()  # one point of a sweep
        return PointStatusReporter(inner, point) if point else RunStatusReporter(inner)
    except Exception as error:  # the run must go on without status reporting
        _LOG.error("status reporting disabled: %s", error)
        from dioptra_runner.reporter import NullStatusReporter

        return NullStatusReporter()
