"""The kopf handlers: glue only. Each reads the event, calls `reconcile`, maps errors to retries.

Importing this module registers every handler of the operator with kopf's default registry.
What they share (settings, per-Experiment locks and memory, the Pod watch) lives in kopf's
memo as an `OperatorState`, created by the start-up handler.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any, cast

import dioptra_api as c
import kopf

from dioptra_operator import prometheus, reconcile, sweep_reconcile
from dioptra_operator.job_builder import InvalidSpecError
from dioptra_operator.k8s import ApiRefused, ApiUnavailable
from dioptra_operator.memory import ExperimentMemory, OperatorState
from dioptra_operator.pod_watch import PodWatch
from dioptra_operator.prometheus import PHASES_SEEN, RECONCILE_ERRORS
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import pod_started, waiting_problem
from dioptra_operator.sweep_summary import is_summary

RETRY_DELAY = 3  # seconds; a flaky API server or network is usually back by then
# A refusal lasts until someone changes RBAC or policy: retried after 3, 6, 12... up to 30 s.
REFUSED_RETRY_DELAY = 30
OWNED = {c.LABEL_EXPERIMENT: kopf.PRESENT}


@kopf.on.startup()
def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """All of kopf's non-default settings, our own Settings from the environment, the state."""
    ours = Settings.from_env()
    memory = ExperimentMemory()
    # Experiments whose Job has no Pod yet; a thread started on first need asks why.
    watch = PodWatch(functools.partial(reconcile.explain_missing_pod, memory))
    memo["state"] = OperatorState(settings=ours, memory=memory, pod_watch=watch)
    # Sync handlers share a thread pool; kopf's default (~CPU count + 4) left bursts of
    # Experiments waiting 1.7 s at p50 for a Job; 16 brings that to ~0.2 s (TESTING-NOTES).
    settings.execution.max_workers = 16
    # Our annotations and finalizer (if kopf ever needs one) carry our API group, not kopf's.
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    # kopf's own log lines about an Experiment (a handler that failed, and why) become
    # Warning Events on it, so `kubectl describe` shows them; INFO lines stay in the log. Our
    # handlers post their own Events for each condition transition, at any level.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # Give up on an API call after a while instead of hanging a worker forever.
    settings.networking.request_timeout = 60
    prometheus.serve(ours.metrics_port)
    logger.info("dioptra-operator started (runner image %s)", ours.runner_image)


@kopf.on.cleanup()
def stop_background_work(*, memo: kopf.Memo, **_: Any) -> None:
    watch = _state(memo).pod_watch
    if watch is not None:
        watch.stop()


def _state(memo: kopf.Memo) -> OperatorState:
    """The shared state (kopf copies the memo per object, shallowly: the same object)."""
    return cast(OperatorState, memo["state"])


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
    meta: dict[str, Any] = {key: body.metadata.get(key) for key in ("name", "creationTimestamp")}
    index = body.metadata.labels.get(c.LABEL_COMPLETION_INDEX)
    if index is not None:
        meta["labels"] = {c.LABEL_COMPLETION_INDEX: index}  # a sweep's Pod: the point it runs
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
    memo: kopf.Memo,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    **_: Any,
) -> None:
    """Ensure the Job for the Experiment's current generation (create, adopt or toggle it).

    With `spec.sweep`, the sweep's one Indexed Job instead (`sweep_reconcile`).
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
    state = _state(memo)
    push_suspend = _suspend_changed(diff)
    with _retry_policy(state.memory, experiment, retry):
        if experiment["spec"].get("sweep"):
            sweep_reconcile.reconcile_sweep(
                state.memory,
                namespace or "",
                body.metadata["name"],
                state.settings,
                _pods_for(namespace, pods_by_job),
                logger,
                spec_changed=True,
                push_suspend=push_suspend,
            )
            return
        # On create nobody else has written status yet, so the body is fresh; otherwise re-read.
        reconcile.ensure_job(
            state.memory,
            experiment,
            state.settings,
            pods,
            logger,
            reread=reason != "create",
            suspend_only=bool(diff) and all(_is_suspend(d.field) for d in diff),
            push_suspend=push_suspend,
        )


def _is_suspend(field: tuple[str, ...]) -> bool:
    # Relative to `spec` for the update handler, to the whole body for resume.
    return tuple(field) in (("suspend",), ("spec", "suspend"))


def _suspend_changed(diff: kopf.Diff) -> bool:
    """Whether the user changed `spec.suspend` now, the only time it goes to an existing Job.

    Once a Job exists, a queue (Kueue) admits or preempts it through the Job's `suspend`:
    a resume after an operator restart, or an unrelated change, must not undo that by
    carrying the spec's `suspend: true` ("queue it") over the queue's decision again.
    """
    return any(_is_suspend(d.field) for d in diff or [])


@contextlib.contextmanager
def _retry_policy(
    memory: ExperimentMemory, experiment: dict[str, Any], retry: int
) -> Iterator[None]:
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
            reconcile.reject_spec(memory, experiment, exc)
        except (ApiUnavailable, ApiRefused) as api_exc:
            raise kopf.TemporaryError(str(api_exc), delay=RETRY_DELAY) from api_exc
        raise kopf.PermanentError(f"{c.MESSAGES[c.Reason.INVALID_SPEC]}: {exc}") from exc
    except ApiRefused as exc:
        RECONCILE_ERRORS.labels("experiment", "refused").inc()
        with contextlib.suppress(ApiUnavailable, ApiRefused):
            reconcile.record_refusal(memory, experiment, exc)
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


def _waiting_for_its_pod(status: kopf.Status) -> bool:
    """An Experiment (a plain run or a sweep) whose Job exists but nothing has seen start."""
    return status.get("phase") == c.Phase.PENDING and bool(status.get("jobName"))


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
def experiment_seen(
    *,
    type: str,
    namespace: str | None,
    name: str,
    status: kopf.Status,
    memo: kopf.Memo,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    **_: Any,
) -> None:
    """Feed the phase gauge and the Pod watch; forget per-Experiment state on deletion."""
    namespace = namespace or ""
    state = _state(memo)
    watch = state.pod_watch
    if type == "DELETED":
        reconcile.forget(state.memory, namespace, name)
        if watch is not None:
            watch.done(namespace, name)
        return
    PHASES_SEEN.observe(namespace, name, status.get("phase"))
    if watch is None:
        return
    if _waiting_for_its_pod(status):
        watch.start_once()
        job = str(status["jobName"])
        watch.waiting(
            namespace, name, job, lambda: bool(pods_by_job and pods_by_job.get((namespace, job)))
        )
    else:
        watch.done(namespace, name)


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
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Mirror the Job's state (or its disappearance) into the Experiment's status."""
    state = _state(memo)
    if type != "DELETED" and not body.status:
        return  # a Job nobody has started yet: ensure_job already recorded what it implies
    if _is_sweep_job(body) or is_summary(labels):
        _sync_sweep(state, namespace or "", labels[c.LABEL_EXPERIMENT], pods_by_job, logger)
        return
    job = None if type == "DELETED" else _job_essence(body)
    pods = list(pods_by_job.get((namespace, name), [])) if pods_by_job else []
    _sync(state.memory, namespace or "", labels[c.LABEL_EXPERIMENT], name, job, pods, logger)


@kopf.on.event("", "v1", "pods", labels=OWNED)
def pod_changed(
    *,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    jobs_by_name: kopf.Index[Any, Any] | None = None,
    pods_by_job: kopf.Index[Any, Any] | None = None,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Mirror a runner Pod's container states (sync running, image pull, OOM...)."""
    job_name = _owner_job(body)
    if job_name is None or jobs_by_name is None or pods_by_job is None:
        return
    if c.LABEL_COMPLETION_INDEX in labels or is_summary(labels):
        # A sweep point's Pod (or the sweep's summary Pod): its start and end tell which points
        # run and why one failed, and a Pod that waits on a problem (an image pull, a missing
        # Secret) why the sweep is Stalled; a Pod simply not started yet changes nothing.
        if (
            pod_started([body])
            or body.status.get("phase") in ("Succeeded", "Failed")
            or waiting_problem(dict(body)) is not None
        ):
            state = _state(memo)
            experiment = labels[c.LABEL_EXPERIMENT]
            _sync_sweep(state, namespace or "", experiment, pods_by_job, logger)
        return
    jobs = list(jobs_by_name.get((namespace, job_name), []))
    if not jobs:
        return  # the Job's own events cover it
    pods = list(pods_by_job.get((namespace, job_name), []))
    memory = _state(memo).memory
    _sync(memory, namespace or "", labels[c.LABEL_EXPERIMENT], job_name, jobs[0], pods, logger)


def _is_sweep_job(body: kopf.Body) -> bool:
    """A sweep's Job: one Indexed Job runs all its points."""
    return body.spec.get("completionMode") == "Indexed"


def _sync(
    memory: ExperimentMemory,
    namespace: str,
    experiment: str,
    job_name: str,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    logger: kopf.Logger,
) -> None:
    with _logged(logger, f"Mirroring Job {job_name} into Experiment {experiment}"):
        reconcile.sync_status(memory, namespace, experiment, job_name, job, pods)


def _pods_for(
    namespace: str | None, pods_by_job: kopf.Index[Any, Any] | None
) -> sweep_reconcile.PodsFor:
    """A lookup of a Job's Pods in the in-memory index (the sweep explains failed points)."""

    def pods(job_name: str) -> list[dict[str, Any]]:
        return list(pods_by_job.get((namespace, job_name), [])) if pods_by_job else []

    return pods


def _sync_sweep(
    state: OperatorState,
    namespace: str,
    experiment: str,
    pods_by_job: kopf.Index[Any, Any] | None,
    logger: kopf.Logger,
) -> None:
    # The sweep's Job or one of its Pods changed: update the points and the summary.
    with _logged(logger, f"Following the sweep of Experiment {experiment}"):
        sweep_reconcile.reconcile_sweep(
            state.memory,
            namespace,
            experiment,
            state.settings,
            _pods_for(namespace, pods_by_job),
            logger,
        )
