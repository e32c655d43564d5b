"""A sweep's summary Job: once every point is done, one Pod draws and records the whole sweep.

Pure: no I/O. In the cluster each point of a sweep runs in its own Pod of the sweep's Indexed
Job and tracks only itself (its MLflow run, its results under `status.sweepPoints.<key>`);
nothing in those Pods sees the whole sweep. So once the sweep's phase is terminal
(`sweep_plan.sweep_status`) and there is somewhere to put a summary (the chart's MLflow
tracking URI, or an artifact store: `spec.artifacts.store`, else the chart's), the operator
creates one more Job, `<name>-g<run>-summary`, running `dioptra sweep summarize --in-cluster`:
it reads the points' values and results from the status, renders the sweep's plot, keeps the
PNG in the artifact store, opens the MLflow parent run with the points' runs as children, and
writes `status.sweep.plot` and `status.tracking`.

Why a Job and not the operator itself: the operator never imports MLflow, matplotlib or the
store's client (import-linter contracts) and holds no store or MLflow credentials; the Job
gets them exactly as the point Pods do (secretKeyRef), with the same image, ServiceAccount
and restricted security context.

Created once per run: the name is deterministic (a 409 adopts it, after an operator restart
too) and the operator records it in `status.sweep.summary` before anything else can ask
again, so a Job removed by its TTL is never created a second time. A failed summary never
changes the Experiment's phase (the points decided it): it shows as the TrackingFailed
condition with the Pod's one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dioptra_api as c
from dioptra_api.conditions import Condition, make_condition

from dioptra_operator.job_builder import (
    _COMMON_ENV,
    _MOUNTS,
    _container,
    _with_suffix,
    artifact_env,
    experiment_snapshot,
    runner_pod_spec,
    tracking_env,
)
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import failure_message, pod_started

P = c.Phase
C = c.ConditionType
R = c.Reason

# The summary Job and its Pod carry this component label (the points': `runner`), which is how
# the handlers tell its events from a plain run's.
COMPONENT_SWEEP_SUMMARY = "sweep-summary"
SUMMARY_COMMAND = ["dioptra", "sweep", "summarize", "--in-cluster"]
# `status.sweep.summary`: the operator's record of the run's summary Job.
SUMMARY_FIELD = "summary"
# `status.sweep.plot`: the summary Pod's (where the PNG went).
PLOT_FIELD = "plot"
# One Pod, no retry (a retry would open a second MLflow parent run); ten minutes at most
# (MLflow gives up after DIOPTRA_TRACKING_TIMEOUT, 60 s by default).
_BACKOFF_LIMIT = 0
_DEADLINE_SECONDS = 600
# Reading a status, drawing one PNG and a few MLflow requests: small, whatever the points need
# (a sweep's GPU requests must not hold a GPU for its summary).
_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
_VOLUMES = [{"name": "tmp", "emptyDir": {}}]
_ENDED = frozenset({"Succeeded", "Failed"})  # Pod phases
_TMP_MOUNTS = [mount for mount in _MOUNTS if mount["name"] == "tmp"]


def summary_job_name(experiment_name: str, run: int) -> str:
    """`<name>-g<run>-summary`, shortened with a stable hash past a DNS label."""
    return _with_suffix(experiment_name, f"-g{run}-summary")


def summary_destination(spec: Mapping[str, Any], settings: Settings) -> str | None:
    """Where a summary would go: `mlflow`, `store`, `mlflow+store`, or None (nowhere)."""
    store = (spec.get("artifacts") or {}).get("store") or settings.artifacts_store
    where = [
        name for name, on in (("mlflow", settings.mlflow_tracking_uri), ("store", store)) if on
    ]
    return "+".join(where) or None


def wants_summary_job(
    phase: str,
    spec: Mapping[str, Any],
    settings: Settings,
    recorded: Mapping[str, Any] | None,
    job_name: str,
) -> bool:
    """Whether the run's summary Job should be created now.

    Only once the sweep's phase is terminal (every point done), only with a destination, and
    only when `status.sweep.summary` does not name this run's Job already (created before,
    perhaps by an operator that restarted since, or removed by its TTL since).
    """
    if phase not in P.TERMINAL or summary_destination(spec, settings) is None:
        return False
    return not (recorded and recorded.get("job") == job_name)


def summary_labels(experiment: Mapping[str, Any], run: int) -> dict[str, str]:
    """The summary Job's labels: the Experiment's, the run, and the summary's component."""
    meta = experiment.get("metadata") or {}
    return {
        c.LABEL_EXPERIMENT: str(meta["name"]),
        c.LABEL_GENERATION: str(run),
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_COMPONENT: COMPONENT_SWEEP_SUMMARY,
    }


def is_summary(labels: Mapping[str, Any] | None) -> bool:
    """Whether a Job's or Pod's labels are those of a sweep's summary."""
    return (labels or {}).get(c.LABEL_COMPONENT) == COMPONENT_SWEEP_SUMMARY


def build_summary_job(
    experiment: Mapping[str, Any], settings: Settings, run: int
) -> dict[str, Any]:
    """The summary Job's manifest for the sweep run `run` (without ownerReferences).

    The point Pods' runner image, ServiceAccount, restricted security context, tracking and
    artifact env (credentials by secretKeyRef only) and the user's `runner.env`; no plugin
    sync, no Prefect. The caller adopts it (owner reference) and creates it.
    """
    meta = experiment["metadata"]
    spec = dict(experiment.get("spec") or {})
    runner = spec.get("runner") or {}
    image = runner.get("image") or settings.runner_image
    pull_policy = runner.get("imagePullPolicy") or settings.image_pull_policy
    labels = summary_labels(experiment, run)
    env = [
        *_COMMON_ENV,
        {"name": c.EXPERIMENT_ENV, "value": experiment_snapshot(dict(experiment))},
        {"name": c.NAME_ENV, "value": meta["name"]},
        {"name": c.NAMESPACE_ENV, "value": meta.get("namespace") or "default"},
        *artifact_env(spec, settings),
        *tracking_env(settings, image),
        *(dict(item) for item in runner.get("env") or []),
    ]
    main = _container(
        c.MAIN_CONTAINER,
        image,
        pull_policy,
        _RESOURCES,
        command=list(SUMMARY_COMMAND),
        env=env,
        volumeMounts=[dict(mount) for mount in _TMP_MOUNTS],
    )
    pod = runner_pod_spec(spec, settings, main, _VOLUMES)
    job_spec: dict[str, Any] = {
        "backoffLimit": _BACKOFF_LIMIT,
        "activeDeadlineSeconds": _DEADLINE_SECONDS,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if spec.get("ttlSecondsAfterFinished") is not None:
        job_spec["ttlSecondsAfterFinished"] = int(spec["ttlSecondsAfterFinished"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": summary_job_name(meta["name"], run),
            "namespace": meta.get("namespace"),
            "labels": labels,
        },
        "spec": job_spec,
    }


def _finished(job: Mapping[str, Any]) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return P.SUCCEEDED if cond["type"] == "Complete" else P.FAILED
    return None


def summary_record(
    job_name: str,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    before: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`status.sweep.summary`: `{job, phase, message?}` from the summary Job and its Pods.

    `before` is the recorded one: a finished summary stays as it was when its Job is gone (its
    TTL); a Job gone before it finished failed.
    """
    before = dict(before or {}) if (before or {}).get("job") == job_name else {}
    if job is None:
        if before.get("phase") in P.TERMINAL:
            return before
        if not before:
            return {"job": job_name, "phase": P.PENDING}  # just created: not in the cache yet
        message = c.MESSAGES[R.JOB_MISSING].format(job=job_name)
        return {"job": job_name, "phase": P.FAILED, "message": message}
    finished = _finished(job)
    if finished == P.SUCCEEDED:
        return {"job": job_name, "phase": P.SUCCEEDED}
    if finished == P.FAILED:
        return {"job": job_name, "phase": P.FAILED, "message": failure_message(job, pods)}
    alive = [pod for pod in pods if (pod.get("status") or {}).get("phase") not in _ENDED]
    return {"job": job_name, "phase": P.RUNNING if pod_started(alive) else P.PENDING}


def summary_failed_condition(
    record: Mapping[str, Any] | None, generation: int | None = None
) -> Condition | None:
    """TrackingFailed (reason SweepSummaryFailed, with the Pod's one line) when the summary Job
    failed; None otherwise: then the runners' MLflow reports decide the condition
    (`status_mapping.tracking_conditions`: the summary's `status.tracking` and the points')."""
    record = record or {}
    if record.get("phase") != P.FAILED:
        return None
    lines = str(record.get("message") or "").strip().splitlines()
    detail = lines[-1][:300] if lines else ""
    message = c.MESSAGES[R.SWEEP_SUMMARY_FAILED].format(job=record.get("job"))
    if detail:
        message += f": {detail}"
    return make_condition(C.TRACKING_FAILED, True, R.SWEEP_SUMMARY_FAILED, message, generation)
