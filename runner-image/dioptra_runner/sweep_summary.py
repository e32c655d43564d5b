"""``dioptra sweep summarize --in-cluster``: a sweep's plot and MLflow parent run, in the cluster.

In the cluster each point of a sweep runs in its own Pod and records only itself: its results
and its MLflow run id under ``status.sweepPoints.<key>``. Once every point is done the operator
runs this command in one more Pod (the sweep's summary Job, ``<name>-g<run>-summary``). It

1. reads the sweep from the Pod's ``DIOPTRA_EXPERIMENT`` snapshot and the points' reports from
   the Experiment's current status (``reporter.read_experiment``, the runner's only API
   client);
2. renders the sweep's plot (``sweep_plot``) from each point's values and results;
3. keeps the PNG in the artifact store when there is one (``spec.artifacts.store``, else the
   chart's), content-addressed as ``<store>/objects/sha256/<hex>.png``;
4. with ``MLFLOW_TRACKING_URI``, opens the sweep's parent run in the Experiment's MLflow
   experiment (``<namespace>/<name>``), logs the sweep's parameters and the plot, and makes
   each point's run its child (tag ``mlflow.parentRunId``);
5. writes ``status.sweep.plot`` (``uri``, ``sha256``, ``bytes``, ``mlflowArtifactUri``) and
   ``status.tracking`` (the parent run, the children by point key).

Everything it can do is done and reported even when one part fails; then it exits 1 with one
line on stderr (the Pod's termination message, which the operator shows in the TrackingFailed
condition), never a traceback, never a credential.

What is plotted: the metrics the points logged; when no point logged any, the numbers among
their task outputs (``results.outputs``; a dict output by key). The status does not say which
tasks were final (the Pod has no plugins to load the flow from), so unlike ``dioptra run``'s
plot every numeric output counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dioptra_api import EXPERIMENT_ENV, TRACKING_STATUS, Phase
from dioptra_api.sweep import SweepPoint, cluster_points

from dioptra_runner.sweep_plot import point_numbers  # matplotlib only when it draws
from dioptra_runner.tracking import sweep_parent_parameters  # MLflow only when it logs

__all__ = [
    "PlotRecord",
    "Summary",
    "add_summarize_arguments",
    "child_run_ids",
    "parent_parameters",
    "plot_input",
    "summarize",
    "summarize_command",
]

_LOG = logging.getLogger("dioptra.sweep")
PLOT_FORMAT = "png"
_OBJECTS = "objects/sha256"

PlotPoints = list[tuple[dict[str, Any], dict[str, float]]]


def add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        required=True,
        help="read the sweep from DIOPTRA_EXPERIMENT and its points from the Experiment's "
        "status; write status.sweep.plot and status.tracking",
    )
    parser.set_defaults(handler=summarize_command)


# -- the pure part -------------------------------------------------------------------------------


def sweep_points(snapshot: Mapping[str, Any]) -> list[SweepPoint]:
    """The sweep's points in the order of its Indexed Job (the operator's)."""
    spec = snapshot.get("spec") or {}
    if not spec.get("sweep"):
        raise ValueError(f"the Experiment in {EXPERIMENT_ENV} has no spec.sweep")
    return cluster_points(spec["sweep"], spec.get("parameters") or {})


def point_entries(
    points: Sequence[SweepPoint], status: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each point's ``status.sweepPoints`` entry of the current run (``status.jobName``)."""
    reports = status.get("sweepPoints") or {}
    job = status.get("jobName")
    entries: dict[str, dict[str, Any]] = {}
    for point in points:
        entry = reports.get(point.key)
        if isinstance(entry, Mapping) and entry.get("job") in (None, job):
            entries[point.key] = dict(entry)
    return entries


def point_succeeded(entry: Mapping[str, Any] | None) -> bool:
    """The point's runner and its Job both say Succeeded (a Job view alone lacks results)."""
    entry = entry or {}
    return entry.get("phase") == Phase.SUCCEEDED and entry.get("jobPhase") in (
        None,
        Phase.SUCCEEDED,
    )


def plot_input(
    points: Sequence[SweepPoint], entries: Mapping[str, Mapping[str, Any]]
) -> PlotPoints:
    """``(point values, {metric: number})`` per point, for ``sweep_plot.render_sweep_plot``.

    The logged metrics when any point logged some, else the numbers among the task outputs; a
    parameter's own name is left out, and a point that did not succeed has no numbers (a gap).
    """
    logged = any(((entries.get(p.key) or {}).get("results") or {}).get("metrics") for p in points)
    swept = {name for point in points for name in point.values}
    found: PlotPoints = []
    for point in points:
        entry = entries.get(point.key) or {}
        numbers: dict[str, float] = {}
        if point_succeeded(entry):
            numbers = point_numbers(entry.get("results") or {}, swept, logged=logged)
        found.append((dict(point.values), numbers))
    return found


def child_run_ids(
    points: Sequence[SweepPoint], entries: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """Each point's MLflow run id (``sweepPoints.<key>.tracking.mlflowRunId``), by key."""
    found: dict[str, str] = {}
    for point in points:
        tracking = (entries.get(point.key) or {}).get(TRACKING_STATUS) or {}
        run_id = tracking.get("mlflowRunId") if isinstance(tracking, Mapping) else None
        if run_id:
            found[point.key] = str(run_id)
    return found


def parent_parameters(points: Sequence[SweepPoint]) -> dict[str, Any]:
    """The parent run's parameters, as ``dioptra run`` logs them on a local sweep's parent
    (``tracking.sweep_parent_parameters``)."""
    return sweep_parent_parameters([(point.values, point.parameters) for point in points])


def sweep_outcome(
    points: Sequence[SweepPoint], entries: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str]:
    """The sweep's phase and message as its points decided them (for the parent run)."""
    ok = sum(1 for point in points if point_succeeded(entries.get(point.key)))
    phase = Phase.SUCCEEDED if ok == len(points) else Phase.FAILED
    return phase, f"{ok}/{len(points)} sweep points succeeded"


def plot_name(sha256: str) -> str:
    """The PNG's object name in the artifact store: named by its digest, as every object."""
    return f"{_OBJECTS}/{sha256}.{PLOT_FORMAT}"


# -- doing it ------------------------------------------------------------------------------------


@dataclass
class PlotRecord:
    """``status.sweep.plot``."""

    sha256: str
    bytes: int
    uri: str | None = None
    mlflow_artifact_uri: str | None = None

    def status(self) -> dict[str, Any]:
        fields = {
            "uri": self.uri or self.mlflow_artifact_uri,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "format": PLOT_FORMAT,
            "mlflowArtifactUri": self.mlflow_artifact_uri,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass
class Summary:
    """What the command did: the status it writes and the failures it reports."""

    plot: PlotRecord | None = None
    tracking: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def kept_plot(self) -> PlotRecord | None:
        """The plot, if it was kept somewhere (a picture with no home goes unreported)."""
        if self.plot is None or not (self.plot.uri or self.plot.mlflow_artifact_uri):
            return None
        return self.plot

    def status(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.kept_plot is not None:
            fields["sweep"] = {"plot": self.kept_plot.status()}
        if self.tracking is not None:
            fields[TRACKING_STATUS] = self.tracking
        return fields


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def summarize(
    snapshot: Mapping[str, Any],
    status: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    render: Callable[[str, PlotPoints], bytes | None] | None = None,
    track: Callable[..., dict[str, Any] | None] | None = None,
) -> Summary:
    """Render, store and track the sweep; never raises for a failing destination (see errors).

    ``render`` and ``track`` default to ``sweep_plot.render_sweep_plot`` and
    ``tracking.track_sweep_parent`` (imported only then: matplotlib and MLflow are slow).
    """
    meta = snapshot.get("metadata") or {}
    name = str(meta.get("name") or "")
    points = sweep_points(snapshot)
    entries = point_entries(points, status)
    summary = Summary()
    png: bytes | None = None
    try:
        draw = render if render is not None else _default_render()
        png = draw(name, plot_input(points, entries))
    except Exception as error:  # a report: the rest goes on without the picture
        summary.errors.append(f"could not draw the sweep's plot: {_one_line(error)}")
    if png is None and not summary.errors:
        summary.notes.append("no point has a number to plot: no plot")
    if png is not None:
        import hashlib

        summary.plot = PlotRecord(sha256=hashlib.sha256(png).hexdigest(), bytes=len(png))
        _store_plot(snapshot, environ, png, summary)
    _track(snapshot, environ, points, entries, png, summary, track)
    return summary


def _default_render() -> Callable[[str, PlotPoints], bytes | None]:
    from dioptra_runner.sweep_plot import render_sweep_plot  # matplotlib: only now

    return render_sweep_plot


def _default_track() -> Callable[..., dict[str, Any] | None]:
    from dioptra_runner.tracking import track_sweep_parent  # MLflow: only now

    return track_sweep_parent


def _store_plot(
    snapshot: Mapping[str, Any], environ: Mapping[str, str], png: bytes, summary: Summary
) -> None:
    from dioptra_runner.artifact_setup import ArtifactSetup
    from dioptra_runner.artifacts import ArtifactError

    assert summary.plot is not None
    setup = ArtifactSetup(
        snapshot.get("spec") or {}, Path(environ.get("TMPDIR") or "/tmp"), dict(environ)
    )
    if setup.configured is None:
        return
    try:
        store = setup.open(cached_tasks=False)
        if store is None:
            return
        name = plot_name(summary.plot.sha256)
        if not store.exists(name):  # content-addressed: the same picture is written once
            store.write(name, png)
        summary.plot.uri = store.uri(name)
    except ArtifactError as error:
        summary.errors.append(str(error).splitlines()[0][:300])


def _track(
    snapshot: Mapping[str, Any],
    environ: Mapping[str, str],
    points: Sequence[SweepPoint],
    entries: Mapping[str, Mapping[str, Any]],
    png: bytes | None,
    summary: Summary,
    track: Callable[..., dict[str, Any] | None] | None,
) -> None:
    if not (environ.get("MLFLOW_TRACKING_URI") or "").strip():
        return
    log_parent = track if track is not None else _default_track()
    meta = snapshot.get("metadata") or {}
    phase, message = sweep_outcome(points, entries)
    plot_file = f"{meta.get('name')}.{PLOT_FORMAT}"
    tracking = log_parent(
        snapshot,
        parent_parameters(points),
        child_run_ids(points, entries),
        phase=phase,
        message=message,
        sweep_points=len(points),
        plot=(plot_file, png) if png is not None else None,
        environ=environ,
    )
    summary.tracking = tracking
    if not tracking:
        return
    if tracking.get("error"):
        summary.errors.append(f"MLflow: {tracking['error']}")
    run_id = tracking.get("mlflowRunId")
    if summary.plot is not None and run_id and not tracking.get("error"):
        summary.plot.mlflow_artifact_uri = f"runs:/{run_id}/plots/{plot_file}"


def summarize_command(args: argparse.Namespace) -> int:
    """The command: one line on stdout per thing done, one on stderr when something failed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dioptra_runner import reporter

    try:
        snapshot = json.loads(os.environ.get(EXPERIMENT_ENV) or "")
        if not isinstance(snapshot, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        return _fail(f"{EXPERIMENT_ENV} holds no Experiment: {_one_line(error)}")
    meta = snapshot.get("metadata") or {}
    try:
        experiment = reporter.read_experiment(str(meta.get("name")), str(meta.get("namespace")))
        summary = summarize(snapshot, experiment.get("status") or {}, os.environ)
    except Exception as error:  # one line, never a traceback
        return _fail(_one_line(error))
    fields = summary.status()
    if fields:
        sender = reporter.KubernetesStatusReporter.from_environment()
        sender.update(**fields)
        sender.close(timeout=15)
    out = sys.stdout
    if summary.kept_plot is not None:
        plot = summary.kept_plot
        out.write(f"plot: {plot.status().get('uri')} (sha256 {plot.sha256})\n")
    if summary.tracking and summary.tracking.get("mlflowRunId"):
        children = len(summary.tracking.get("mlflowChildRunIds") or {})
        out.write(
            f"MLflow: parent run {summary.tracking['mlflowRunId']} with {children} point runs\n"
        )
    for note in summary.notes:
        out.write(f"{note}\n")
    out.flush()
    if summary.errors:
        return _fail("; ".join(summary.errors))
    return 0


def _fail(line: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"dioptra sweep summarize: {line}\n")
    sys.stderr.flush()
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dioptra sweep summarize")
    add_summarize_arguments(parser)
    args = parser.parse_args(argv)
    sys.exit(args.handler(args))


if __name__ == "__main__":
    main()
