"""The kopf handlers: glue only. Each reads the event, calls `reconcile`, maps errors to retries.

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dioptra_api as c
import kopf

from dioptra_operator import reconcile, sweep_reconcile
from dioptra_operator.job_builder import InvalidSpecError
from dioptra_operator.k8s import ApiRefused, ApiUnavailable
from dioptra_operator.pod_watch import PodWatch
from dioptra_operator.prometheus import PHASES_SEEN, RECONCILE_ERRORS
from dioptra_operator.settings import Settings

# Loaded once by the startup handler in __main__; tests may replace it before the operator runs.
SETTINGS = Settings()
RETRY_DELAY = 3  # seconds; a flaky API server or network is usually back by then
# A refusal lasts until someone changes RBAC or policy: retried after 3, 6, 12... up to 30 s.
REFUSED_RETRY_DELAY = 30
# Experiments whose Job has no Pod yet; a thread started with the operator asks why.
POD_WATCH = PodWatch(reconcile.explain_missing_pod)
OWNED = {c.LABEL_EXPERIMENT: kopf.PRESENT}


def _owner_job(body: kopf.Body) -> str | None:
    """The Job that owns a Pod (the Job controller also labels it `job-name`)."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job":
            return str(ref.get("name"))
    name = body.get("metadata", {}).get("labels", {}).get("job-name")
    return str(name) if name else None


@kopf.index("", "v1", "pods", labels=OWNED)
def pods_by_job(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Our runner Pods, kept in memory by Job: status mapping needs them without API calls."""
    job = _owner_job(body)
    if job is None:
        return {}
    # Keep only what status mapping reads: the index lives as long as the Pod does.
    meta = {key: body.metadata.get(key) for key in ("name", "creationTimestamp")}
    return {(namespace, job): {"metadata": meta, "status": dict(body.status)}}


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def jobs_by_name(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Our Jobs, kept in memory by name, for mapping a Pod event to its Job's state."""
    return {(namespace, name): _job_essence(body)}


def _job_essence(body: kopf.Body) -> dict[str, Any]:
    """The parts of a Job that status mapping reads (name, suspend, init containers, status)."""
    template = (body.spec.get("template") or {}).get("spec") or {}
    inits = [{"name": init.get("name")} for init in template.get("initContainers") or []]
    return {
        "metadata": {"name": body.metadata.get("name")},
        "spec": {
            "suspend": body.spec.get("suspend", False),
            "template": {"spec": {"initContainers": inits}},
        },
        "status": dict(body.status),
    }


@kopf.on.resume(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, c.PLURAL, field="spec")
def experiment_changed(
    *,
    reason: str,
    retry: int,
    diff: kopf.Diff,
    body: kopf.Body,
    namespace: str | None,
    logger: kopf.Logger,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    **_: Any,
) -> None:
    """Ensure the Job for the Experiment's current generation (create, adopt or toggle it).

    With `spec.sweep`, the point Jobs instead (`sweep_reconcile`): as many as may run now.
    """
    experiment = {
        "apiVersion": body.get("apiVersion", c.API_VERSION),
        "kind": body.get("kind", c.KIND),
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }
    job = (experiment["status"] or {}).get("jobName")
    pods = list(pods_by_job.get((namespace, job), [])) if job and pods_by_job else []
    with _retry_policy(experiment, retry):
        if experiment["spec"].get("sweep"):
            sweep_reconcile.reconcile_sweep(
                namespace or "",
                body.metadata["name"],
                SETTINGS,
                _pods_for(namespace, pods_by_job),
                logger,
            )
            return
        # On create nobody else has written status yet, so the body is fresh; otherwise re-read.
        reconcile.ensure_job(
            experiment,
            SETTINGS,
            pods,
            logger,
            reread=reason != "create",
            suspend_only=bool(diff) and all(d.field == ("suspend",) for d in diff),
        )


@contextlib.contextmanager
def _retry_policy(experiment: dict[str, Any], retry: int) -> Iterator[None]:
    """What each failure of a change handler means for kopf's retries, in one place.

    A spec that cannot run is final (InvalidSpec on the Experiment); a refused request is
    shown on the Experiment and retried now and then, since a person may fix RBAC or policy;
    an unreachable or failing API server is retried soon.
    """
    try:
        yield
    except InvalidSpecError as exc:
        RECONCILE_ERRORS.labels("experiment", "permanent").inc()
        try:
            reconcile.reject_spec(experiment, exc)
        except (ApiUnavailable, ApiRefused) as api_exc:
            raise kopf.TemporaryError(str(api_exc), delay=RETRY_DELAY) from api_exc
        raise kopf.PermanentError(f"{c.MESSAGES[c.Reason.INVALID_SPEC]}: {exc}") from exc
    except ApiRefused as exc:
        RECONCILE_ERRORS.labels("experiment", "refused").inc()
        with contextlib.suppress(ApiUnavailable, ApiRefused):
            reconcile.record_refusal(experiment, exc)
        delay = min(REFUSED_RETRY_DELAY, RETRY_DELAY * 2**retry)
        raise kopf.TemporaryError(str(exc), delay=delay) from exc
    except ApiUnavailable as exc:
        RECONCILE_ERRORS.labels("experiment", "temporary").inc()
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


@contextlib.contextmanager
def _logged(logger: kopf.Logger, what: str) -> Iterator[None]:
    """Event handlers are not retried by kopf: log and count; the next event retries."""
    try:
        yield
    except InvalidSpecError as exc:
        logger.warning("%s: the spec cannot run: %s", what, exc)
    except (ApiUnavailable, ApiRefused) as exc:
        RECONCILE_ERRORS.labels("status", "temporary").inc()
        logger.warning("%s failed: %s", what, exc)


def _waiting_for_its_pod(status: kopf.Status, spec: kopf.Spec) -> bool:
    """A plain Experiment whose Job exists but which nothing has seen start yet."""
    return (
        not spec.get("sweep")
        and status.get("phase") == c.Phase.PENDING
        and bool(status.get("jobName"))
    )


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
def experiment_seen(
    *,
    type: str,
    namespace: str | None,
    name: str,
    status: kopf.Status,
    spec: kopf.Spec,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    **_: Any,
) -> None:
    """Feed the phase gauge and the Pod watch; forget per-Experiment state on deletion."""
    namespace = namespace or ""
    if type == "DELETED":
        reconcile.forget(namespace, name)
        POD_WATCH.done(namespace, name)
        return
    PHASES_SEEN.observe(namespace, name, status.get("phase"))
    if _waiting_for_its_pod(status, spec):
        POD_WATCH.start_once()
        job = str(status["jobName"])
        POD_WATCH.waiting(
            namespace, name, job, lambda: bool(pods_by_job and pods_by_job.get((namespace, job)))
        )
    else:
        POD_WATCH.done(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
def job_changed(
    *,
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Mirror the Job's state (or its disappearance) into the Experiment's status."""
    if type != "DELETED" and not body.status:
        return  # a Job nobody has started yet: ensure_job already recorded what it implies
    if labels.get(c.LABEL_SWEEP_POINT):
        _sync_sweep(namespace or "", labels[c.LABEL_EXPERIMENT], pods_by_job, logger)
        return
    job = None if type == "DELETED" else _job_essence(body)
    pods = list(pods_by_job.get((namespace, name), [])) if pods_by_job else []
    _sync(namespace or "", labels[c.LABEL_EXPERIMENT], name, job, pods, logger)


@kopf.on.event("", "v1", "pods", labels=OWNED)
def pod_changed(
    *,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    jobs_by_name: kopf.Index[Any, Any] | None = None,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Mirror a runner Pod's container states (sync running, image pull, OOM...)."""
    job_name = _owner_job(body)
    if job_name is None or jobs_by_name is None or pods_by_job is None:
        return
    if labels.get(c.LABEL_SWEEP_POINT):
        return  # a sweep follows its point Jobs' own events (done or not)
    jobs = list(jobs_by_name.get((namespace, job_name), []))
    if not jobs:
        return  # the Job's own events cover it
    pods = list(pods_by_job.get((namespace, job_name), []))
    _sync(namespace or "", labels[c.LABEL_EXPERIMENT], job_name, jobs[0], pods, logger)


def _sync(
    namespace: str,
    experiment: str,
    job_name: str,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    logger: kopf.Logger,
) -> None:
    with _logged(logger, f"Mirroring Job {job_name} into Experiment {experiment}"):
        reconcile.sync_status(namespace, experiment, job_name, job, pods)


def _pods_for(
    namespace: str | None, pods_by_job: kopf.Index[Any, Any] | None
) -> sweep_reconcile.PodsFor:
    """A lookup of a Job's Pods in the in-memory index (the sweep explains failed points)."""

    def pods(job_name: str) -> list[dict[str, Any]]:
        return list(pods_by_job.get((namespace, job_name), [])) if pods_by_job else []

    return pods


def _sync_sweep(
    namespace: str,
    experiment: str,
    pods_by_job: kopf.Index[Any, Any] | None,
    logger: kopf.Logger,
) -> None:
    # A point Job changed: start the next points and update the summary.
    with _logged(logger, f"Advancing the sweep of Experiment {experiment}"):
        sweep_reconcile.reconcile_sweep(
            namespace, experiment, SETTINGS, _pods_for(namespace, pods_by_job), logger
        )
