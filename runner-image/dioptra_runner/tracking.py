"""MLflow tracking of a run: one MLflow run per Experiment run, a parent run for a sweep.

Only when ``MLFLOW_TRACKING_URI`` is set (the environment, or the chart's
``tracking.mlflowTrackingUri`` that the operator passes to runner pods); otherwise nothing
of MLflow is imported. This is the only module that imports ``mlflow`` (an import-linter
contract), and it does so only at the end of the run, in :func:`track_runs`: MLflow's import
costs about 2 s and must never delay the first task.

What is logged, into the MLflow experiment named after the Experiment (``<namespace>/<name>``
in a cluster, ``<name>`` locally), through ``MlflowClient`` (no global active run):

- parameters: the run's resolved parameters (non-strings as compact JSON);
- metrics: every ``dioptra.metrics.log_metric`` value in order, at its ``step`` (without one,
  the how-many-th value of that name it is), and the numeric outputs of the flow's final
  tasks as ``outputs.<task>[.<key>]``;
- tags: ``dioptra.experiment.name/namespace/uid/generation``, ``dioptra.plugins.sha256`` (the
  digest of ``status.plugins``, the same as a sweep point's ``pluginsSha256``),
  ``dioptra.runner.image``, ``dioptra.prefect.flowRunId``, a point's ``dioptra.sweep.point``;
  a sweep point's run carries ``mlflow.parentRunId``;
- artifacts: ``experiment.yaml`` (the Experiment file, or the pod's snapshot as YAML),
  ``results.json`` (phase, message, parameters and results), and a sweep's plot on the parent.

Tracking is a report: MLflow unreachable or failing never fails the run. :func:`track_runs`
returns ``status.tracking`` with ``error`` set (one line, the URI without credentials), and
gives up after ``DIOPTRA_TRACKING_TIMEOUT`` seconds (default 60).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TRACKING_URI_ENV",
    "TrackedRun",
    "public_uri",
    "sweep_parent_parameters",
    "track_runs",
    "track_sweep_parent",
    "tracking_uri",
]

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
TIMEOUT_ENV = "DIOPTRA_TRACKING_TIMEOUT"
RUNNER_IMAGE_ENV = "DIOPTRA_RUNNER_IMAGE"
_LOG = logging.getLogger("dioptra.run")
# MLflow's own defaults retry a failing server for minutes (7 retries, backoff factor 2,
# 120 s per request) and print run URLs on stdout (which --output json owns): a report must
# give up sooner and print nothing. A user's own setting of any of these wins.
_MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_CONFIGURE_LOGGING": "false",
}
_MAX_PARAM_CHARS = 6000
# A run's phase as MLflow's run status (anything else: FAILED).
_MLFLOW_STATUS = {"Succeeded": "FINISHED", "Cancelled": "KILLED"}
_BATCH = {"metrics": 1000, "params": 100}  # MLflow's log_batch limits
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def tracking_uri(environ: Mapping[str, str] | None = None) -> str | None:
    """The MLflow tracking URI, or None when tracking is off."""
    uri = (environ if environ is not None else os.environ).get(TRACKING_URI_ENV, "").strip()
    return uri or None


def public_uri(uri: str) -> str:
    """The URI without userinfo (``https://user:token@host`` -> ``https://host``)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return _USERINFO.sub("", uri)
    if parts.username is None and parts.password is None:
        return _USERINFO.sub("", uri)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass
class TrackedRun:
    """One MLflow run to log: a plain run, a sweep's parent, or one of its points."""

    name: str
    parameters: dict[str, Any]
    results: dict[str, Any]
    phase: str
    message: str = ""
    metric_history: list[Any] = field(default_factory=list)  # dioptra.metrics.LoggedValue
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)  # artifact path -> local file
    outputs: dict[str, float | int] = field(default_factory=dict)


def track_runs(
    experiment: Any,
    runs: Sequence[Any],
    final_tasks: Sequence[str],
    *,
    phase: str,
    message: str,
    plugins: Any = None,
    sweep: dict[str, Any] | None = None,
    plot: Path | None = None,
    environ: Mapping[str, str] | None = None,
    time_limit: float | None = None,
) -> dict[str, Any] | None:
    """Log the runs to MLflow; ``status.tracking``, or None when tracking is off.

    ``runs`` are the execution's PointRuns: one without a point (a plain run, or one point
    of an in-cluster sweep), or a sweep's points (a parent run and a child per point); a run
    stopped by a signal is KILLED. ``time_limit`` caps the tracking timeout (a stopped pod
    has only its grace period left).
    """
    env = environ if environ is not None else os.environ
    uri = tracking_uri(env)
    if uri is None:
        return None

    def work() -> dict[str, Any]:
        return _log(uri, experiment, runs, final_tasks, phase, message, plugins, sweep, plot, env)

    return _bounded(uri, env, work, time_limit)


# -- the MLflow side (imported only from here on) ------------------------------------------------


def _log(
    uri: str,
    experiment: Any,
    runs: Sequence[Any],
    final_tasks: Sequence[str],
    phase: str,
    message: str,
    plugins: Any,
    sweep: dict[str, Any] | None,
    plot: Path | None,
    env: Mapping[str, str],
) -> dict[str, Any]:
    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, _experiment_name(experiment))
        status: dict[str, Any] = {"mlflowExperimentId": experiment_id}
        base_tags = _base_tags(experiment, plugins, env)
        document = _experiment_yaml(experiment)
        is_sweep = any(getattr(r, "point", None) is not None for r in runs)
        try:
            if not is_sweep:
                run_ = runs[0]
                tracked = _point_run(experiment.name, run_, final_tasks, base_tags)
                tracked.tags.update(_point_tag(env))
                run_id = _log_run(client, experiment_id, tracked, document, parent=None)
                status["mlflowRunId"] = run_id
                return status
            parent = _parent_run(experiment, runs, phase, message, sweep, base_tags, plot)
            parent_id = _start_run(client, experiment_id, parent, parent=None)
            status["mlflowRunId"] = parent_id
            children: dict[str, str] = {}

            def child(run_: Any) -> None:
                tracked = _point_run(
                    f"{experiment.name} {run_.point.label}", run_, final_tasks, base_tags
                )
                tracked.tags["dioptra.sweep.point"] = run_.point.key
                tracked.tags["dioptra.sweep.label"] = run_.point.label
                children[run_.point.key] = _log_run(
                    client, experiment_id, tracked, document, parent=parent_id
                )

            # A few points at once: each is ~8 requests, mostly waiting on the server.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dioptra-mlflow") as pool:
                for done in [pool.submit(child, run_) for run_ in runs]:
                    done.result()
            status["mlflowChildRunIds"] = {
                r.point.key: children[r.point.key] for r in runs if r.point.key in children
            }
            _finish_run(client, parent_id, parent, document)
            return status
        except Exception as error:
            error.dioptra_partial = status  # type: ignore[attr-defined]
            raise


def _experiment_name(experiment: Any) -> str:
    namespace = getattr(experiment, "namespace", None)
    return f"{namespace}/{experiment.name}" if namespace else str(experiment.name)


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, tags={"dioptra.experiment.name": name}))
    except MlflowException as error:
        if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        again = client.get_experiment_by_name(name)  # another runner created it just now
        if again is None:
            raise
        return str(again.experiment_id)


def _snapshot_metadata(env: Mapping[str, str]) -> dict[str, Any]:
    """The pod's Experiment metadata (uid included) from its DIOPTRA_EXPERIMENT snapshot."""
    from dioptra_api import EXPERIMENT_ENV

    try:
        document = json.loads(env.get(EXPERIMENT_ENV) or "{}")
    except ValueError:
        return {}
    metadata = document.get("metadata") if isinstance(document, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _base_tags(experiment: Any, plugins: Any, env: Mapping[str, str]) -> dict[str, str]:
    metadata = _snapshot_metadata(env)
    tags = {
        "dioptra.experiment.name": str(experiment.name),
        "dioptra.experiment.namespace": str(getattr(experiment, "namespace", None) or ""),
        "dioptra.experiment.uid": str(metadata.get("uid") or ""),
        "dioptra.experiment.generation": str(getattr(experiment, "generation", None) or ""),
        "dioptra.plugins.sha256": plugins_digest(plugins) if plugins else "",
        "dioptra.runner.image": env.get(RUNNER_IMAGE_ENV, ""),
        "dioptra.entrypoint": str(getattr(experiment, "entry_point_kind", "") or ""),
    }
    return {key: value for key, value in tags.items() if value}


def _point_tag(env: Mapping[str, str]) -> dict[str, str]:
    """An in-cluster sweep point (its own pod): the point's key as a tag."""
    from dioptra_api import SWEEP_POINT_ENV

    key = env.get(SWEEP_POINT_ENV, "").strip()
    return {"dioptra.sweep.point": key} if key else {}


def plugins_digest(plugins: Any) -> str:
    """SHA-256 of ``status.plugins`` in canonical JSON (a sweep point's ``pluginsSha256``)."""
    canonical = json.dumps(plugins, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _experiment_yaml(experiment: Any) -> str:
    """The Experiment file as the user wrote it, else the snapshot the run used, as YAML."""
    source = getattr(experiment, "source_path", None)
    if source is not None:
        try:
            return Path(source).read_text(encoding="utf-8")
        except OSError:
            pass
    import yaml

    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {
            key: value
            for key, value in {
                "name": experiment.name,
                "namespace": getattr(experiment, "namespace", None),
                "generation": getattr(experiment, "generation", None),
            }.items()
            if value is not None
        },
        "spec": experiment.spec,
    }
    return str(yaml.safe_dump(document, sort_keys=False))


def _final_outputs(results: Mapping[str, Any], final_tasks: Sequence[str]) -> dict[str, Any]:
    """The numeric outputs of the final tasks, flattened one level (``task.key``)."""
    numbers: dict[str, float | int] = {}
    for task, value in (results.get("outputs") or {}).items():
        if task not in final_tasks:
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in items:
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            numbers[f"outputs.{task}" + (f".{key}" if key is not None else "")] = item
    return numbers


def _point_run(
    name: str, run_: Any, final_tasks: Sequence[str], base_tags: dict[str, str]
) -> TrackedRun:
    result = run_.result
    tags = dict(base_tags)
    if getattr(result, "flow_run_id", None):
        tags["dioptra.prefect.flowRunId"] = str(result.flow_run_id)
    phase = "Succeeded" if result.is_successful() else "Failed"
    if getattr(result, "is_cancelled", lambda: False)():
        phase = "Cancelled"  # stopped by a signal: KILLED in MLflow
    return TrackedRun(
        name=name,
        parameters=dict(run_.values),
        results=dict(run_.results),
        phase=phase,
        message=result.message,
        metric_history=list(getattr(run_, "metric_history", [])),
        tags=tags,
        outputs=_final_outputs(run_.results, final_tasks),
    )


def _parent_run(
    experiment: Any,
    runs: Sequence[Any],
    phase: str,
    message: str,
    sweep: dict[str, Any] | None,
    base_tags: dict[str, str],
    plot: Path | None,
) -> TrackedRun:
    swept = sorted({name for r in runs for name in r.point.values})
    common = sweep_parent_parameters([(r.point.values, r.values) for r in runs])
    tags = {
        **base_tags,
        "dioptra.sweep.parameters": ",".join(swept),
        "dioptra.sweep.points": str(len(runs)),
    }
    artifacts = {f"plots/{plot.name}": plot} if plot is not None else {}
    return TrackedRun(
        name=str(experiment.name),
        parameters=common,
        results={"sweep": sweep or {}},
        phase=phase,
        message=message,
        tags=tags,
        artifacts=artifacts,
    )


def sweep_parent_parameters(
    points: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> dict[str, Any]:
    """A sweep's parent-run parameters from each point's (swept values, all parameters): the
    parameters every point shares, and ``sweep.<name>``: the values swept, in order, once
    each (one JSON list). The same for a local sweep and for one summarized in the cluster."""
    swept = sorted({name for values, _ in points for name in values})
    first = points[0][1] if points else {}
    common: dict[str, Any] = {
        name: value
        for name, value in first.items()
        if name not in swept and all(parameters.get(name) == value for _, parameters in points)
    }
    for name in swept:
        seen = {
            json.dumps(values.get(name), sort_keys=True, default=str): values.get(name)
            for values, _ in points
            if name in values
        }
        common[f"sweep.{name}"] = list(seen.values())
    return common


def _start_run(client: Any, experiment_id: str, run: TrackedRun, parent: str | None) -> str:
    tags = {**run.tags, "dioptra.phase": run.phase}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    created = client.create_run(experiment_id, tags=tags, run_name=run.name)
    return str(created.info.run_id)


def _log_run(
    client: Any, experiment_id: str, run: TrackedRun, document: str, parent: str | None
) -> str:
    run_id = _start_run(client, experiment_id, run, parent)
    try:
        _finish_run(client, run_id, run, document)
    except Exception:
        import contextlib

        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def _finish_run(client: Any, run_id: str, run: TrackedRun, document: str) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(name, _param_value(value)) for name, value in run.parameters.items()]
    metrics = []
    seen: dict[str, int] = {}
    for logged in run.metric_history:
        step = logged.step if logged.step is not None else seen.get(logged.name, 0)
        seen[logged.name] = seen.get(logged.name, 0) + 1
        metrics.append(Metric(logged.name, float(logged.value), logged.timestamp_ms, step))
    if not run.metric_history:  # logged outside a recording (older callers): the last values
        for name, value in (run.results.get("metrics") or {}).items():
            metrics.append(Metric(name, float(value), now, 0))
    metrics.extend(Metric(name, float(value), now, 0) for name, value in run.outputs.items())
    # One request while it fits in a batch (MLflow: 100 params, 1000 entities in all).
    while params or metrics:
        batch_params, params = params[: _BATCH["params"]], params[_BATCH["params"] :]
        room = _BATCH["metrics"] - len(batch_params)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
    results = {
        "phase": run.phase,
        "message": run.message,
        "parameters": run.parameters,
        "results": run.results,
    }
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dioptra-mlflow-") as folder:
        files = Path(folder)
        (files / "experiment.yaml").write_text(document, encoding="utf-8")
        (files / "results.json").write_text(
            json.dumps(results, indent=2, default=str), encoding="utf-8"
        )
        for artifact_path, local in run.artifacts.items():
            target = files / artifact_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(local).read_bytes())
        client.log_artifacts(run_id, folder)
    client.set_terminated(run_id, status=_MLFLOW_STATUS.get(run.phase, "FAILED"))


def _param_value(value: Any) -> str:
    text = (
        value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    )
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _describe(error: BaseException, uri: str) -> str:
    """One line: what failed, with the URI's credentials (and any other userinfo) removed."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.replace(uri, public_uri(uri))
    text = _USERINFO.sub("", text)
    name = type(error).__name__
    line = f"{name}: {text}" if text else name
    return f"{line[:300]} (tracking URI {public_uri(uri)})"


# -- a sweep run in the cluster: the parent run, opened by `dioptra sweep summarize` ------------


def track_sweep_parent(
    snapshot: Mapping[str, Any],
    parameters: Mapping[str, Any],
    children: Mapping[str, str],
    *,
    phase: str,
    message: str,
    sweep_points: int,
    plot: tuple[str, bytes] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The parent run of a sweep whose points ran in their own Pods; ``status.tracking``.

    ``snapshot`` is the Pod's ``DIOPTRA_EXPERIMENT``; ``children`` the points' MLflow runs by
    point key (``status.sweepPoints.<key>.tracking.mlflowRunId``), which become the parent's
    children (tag ``mlflow.parentRunId``); ``plot`` is ``(file name, PNG bytes)``, logged as
    ``plots/<file name>``. None when tracking is off; never raises (``error`` says why).
    """
    env = environ if environ is not None else os.environ
    uri = tracking_uri(env)
    if uri is None:
        return None

    def work() -> dict[str, Any]:
        return _log_parent(
            uri, snapshot, parameters, children, phase, message, sweep_points, plot, env
        )

    return _bounded(uri, env, work)


def _bounded(
    uri: str,
    env: Mapping[str, str],
    work: Callable[[], dict[str, Any]],
    time_limit: float | None = None,
) -> dict[str, Any]:
    """``status.tracking`` from ``work()``, run in a thread for at most the tracking timeout
    (``DIOPTRA_TRACKING_TIMEOUT``, 60 s, or ``time_limit`` if less): MLflow never holds up
    or fails the run."""
    status: dict[str, Any] = {"mlflowTrackingUri": public_uri(uri)}
    try:
        timeout = float(env.get(TIMEOUT_ENV) or 60)
    except ValueError:
        timeout = 60.0
    if time_limit is not None:
        timeout = min(timeout, time_limit)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome.update(work())
        except BaseException as error:  # reported below, never raised
            outcome["error"] = _describe(error, uri)
            outcome.update(getattr(error, "dioptra_partial", {}))

    worker = threading.Thread(target=run, name="dioptra-mlflow", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        outcome = {"error": f"MLflow did not answer within {timeout:g} s"}
    status.update(outcome)
    if "error" in status:
        _LOG.warning("MLflow tracking failed: %s", status["error"])
    return status


def _log_parent(
    uri: str,
    snapshot: Mapping[str, Any],
    parameters: Mapping[str, Any],
    children: Mapping[str, str],
    phase: str,
    message: str,
    sweep_points: int,
    plot: tuple[str, bytes] | None,
    env: Mapping[str, str],
) -> dict[str, Any]:
    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import tempfile
    import types
    import warnings

    meta = snapshot.get("metadata") or {}
    experiment = types.SimpleNamespace(
        name=str(meta.get("name") or ""),
        namespace=meta.get("namespace"),
        generation=meta.get("generation"),
        spec=dict(snapshot.get("spec") or {}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, _experiment_name(experiment))
        status: dict[str, Any] = {"mlflowExperimentId": experiment_id}
        swept = [name.removeprefix("sweep.") for name in parameters if name.startswith("sweep.")]
        tags = {
            **_base_tags(experiment, None, env),
            "dioptra.sweep.parameters": ",".join(swept),
            "dioptra.sweep.points": str(sweep_points),
        }
        with tempfile.TemporaryDirectory(prefix="dioptra-plot-") as folder:
            artifacts: dict[str, Path] = {}
            if plot is not None:
                local = Path(folder) / plot[0]
                local.write_bytes(plot[1])
                artifacts[f"plots/{plot[0]}"] = local
            parent = TrackedRun(
                name=experiment.name,
                parameters=dict(parameters),
                results={"sweep": {"points": sweep_points, "children": dict(children)}},
                phase=phase,
                message=message,
                tags=tags,
                artifacts=artifacts,
            )
            parent_id = _start_run(client, experiment_id, parent, parent=None)
            status["mlflowRunId"] = parent_id
            try:
                for run_id in children.values():
                    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
                status["mlflowChildRunIds"] = dict(children)
                _finish_run(client, parent_id, parent, _experiment_yaml(experiment))
            except Exception as error:
                error.dioptra_partial = status  # type: ignore[attr-defined]
                raise
        return status
