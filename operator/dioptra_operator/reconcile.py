"""The operator's work, called by the thin handlers: ensure the Job, mirror its state.

Both entry points hold a per-Experiment lock while they read the status, compute a merge patch
with the pure modules and write it, because Experiment, Job and Pod events for the same
Experiment are handled on different worker threads and conditions are a read-modify-write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import dioptra_api as c
import kopf
from dioptra_api import clock
from dioptra_api.conditions import Condition, make_condition, set_condition, set_conditions

from dioptra_operator import k8s
from dioptra_operator.acceptance import accepted_condition
from dioptra_operator.job_builder import InvalidSpecError, build_job
from dioptra_operator.memory import ExperimentMemory
from dioptra_operator.prometheus import JOBS_CREATED, PHASES_SEEN
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import (
    RUN_REPORT_FIELDS,
    creation_failure,
    observe,
    status_patch,
)

C = c.ConditionType
R = c.Reason
P = c.Phase

# Conditions that describe one run; a new Job starts without them.
_PER_RUN_CONDITIONS = frozenset({C.PLUGINS_SYNCED, C.STALLED, C.COMPLETE, C.FAILED, C.SUSPENDED})


# What a run writes (the runner's account and report, the operator's view of it), cleared when
# a new Job starts the next run.
_PER_RUN_FIELDS = (*RUN_REPORT_FIELDS, "progress", "plugins")


def forget(memory: ExperimentMemory, namespace: str, name: str) -> None:
    """Drop per-Experiment state once the Experiment is gone."""
    memory.forget(namespace, name)
    PHASES_SEEN.forget(namespace, name)


def _already_mirrored(
    memory: ExperimentMemory,
    namespace: str,
    name: str,
    job_name: str,
    job: dict[str, Any],
    pods: list[dict[str, Any]],
) -> bool:
    known = memory.recall(namespace, name)
    return (
        known is not None
        and known[0] == job_name
        and observe(job, pods, generation=known[1]) == known[2]
    )


def _apply(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(status)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def post_condition_events(
    experiment: dict[str, Any], changed: Iterable[Condition], before: Iterable[Condition] = ()
) -> None:
    """One Event per condition that changed, reusing its reason and message.

    A spec becoming accepted is the normal case and says nothing `JobCreated` does not, so
    it gets no Event of its own (one less API call per Experiment in a burst), unless it was
    accepted with a warning (CacheNotKept). Two conditions
    telling the same news (PluginsSynced=False, then Failed, both PluginSyncFailed with the
    same message) make one Event: news already told, here or before `changed`, is skipped.
    """
    told = {(cond.get("reason"), cond.get("message")) for cond in before}
    for cond in changed:
        if cond["type"] == C.ACCEPTED and cond.get("reason") == R.SPEC_ACCEPTED:
            continue
        news = (cond.get("reason"), cond.get("message"))
        if news in told:
            continue
        told.add(news)
        bad = (
            (cond["status"] == "True" and cond["type"] in c.WARNING_WHEN_TRUE)
            or (cond["status"] == "False" and cond["type"] in c.WARNING_WHEN_FALSE)
            or cond.get("reason") in c.WARNING_REASONS
        )
        k8s.post_event(
            experiment, "Warning" if bad else "Normal", cond["reason"], cond.get("message", "")
        )


def reject_spec(
    memory: ExperimentMemory, experiment: dict[str, Any], error: InvalidSpecError
) -> None:
    """Record an InvalidSpec condition, phase Failed and an Event for a spec that cannot run."""
    meta = experiment["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    message = f"{c.MESSAGES[R.INVALID_SPEC]}: {error}"
    with memory.lock(namespace, name):
        status = dict(experiment.get("status") or {})
        conditions, changed = set_condition(
            status.get("conditions"),
            make_condition(C.ACCEPTED, False, R.INVALID_SPEC, message, meta.get("generation")),
            clock.now(),
        )
        patch: dict[str, Any] = {"observedGeneration": meta.get("generation")}
        if changed:
            patch.update(conditions=conditions, phase=P.FAILED, message=message)
        k8s.patch_experiment_status(namespace, name, patch)
    if changed:
        k8s.post_event(experiment, "Warning", R.INVALID_SPEC, message)


def record_refusal(
    memory: ExperimentMemory, experiment: dict[str, Any], error: k8s.ApiRefused
) -> None:
    """Show a refused request on the Experiment (JobCreated=False, message, a Warning Event)."""
    meta = experiment["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    message = f"{c.MESSAGES[R.API_REFUSED]}: {error}"
    with memory.lock(namespace, name):
        fresh = k8s.read_experiment(namespace, name) or experiment
        status = dict(fresh.get("status") or {})
        conditions, changed = set_condition(
            status.get("conditions"),
            make_condition(C.JOB_CREATED, False, R.API_REFUSED, message, meta.get("generation")),
            clock.now(),
        )
        if not changed:
            return
        k8s.patch_experiment_status(namespace, name, {"conditions": conditions, "message": message})
    k8s.post_event(experiment, "Warning", R.API_REFUSED, message)


def explain_missing_pod(memory: ExperimentMemory, namespace: str, name: str, job_name: str) -> None:
    """Record why the Job controller cannot create the Job's Pod, if it said why."""
    failures = k8s.job_creation_failures(namespace, job_name)
    if not failures:
        return
    with memory.lock(namespace, name):
        experiment = k8s.read_experiment(namespace, name)
        if experiment is None:
            return
        status = dict(experiment.get("status") or {})
        if status.get("jobName") != job_name or status.get("phase") != P.PENDING:
            return  # moved on meanwhile
        observation = creation_failure(failures[0], namespace, status.get("observedGeneration"))
        patch, changed = status_patch(status, observation, clock.now())
        if patch:
            k8s.patch_experiment_status(namespace, name, patch)
    post_condition_events(experiment, changed, before=status.get("conditions") or [])


def ensure_job(
    memory: ExperimentMemory,
    experiment: dict[str, Any],
    settings: Settings,
    pods: list[dict[str, Any]],
    log: kopf.Logger,
    *,
    reread: bool = True,
    suspend_only: bool = False,
    push_suspend: bool = True,
) -> None:
    """Make the Job for this generation exist (created or adopted) and record it in status.

    `suspend_only` says the update changed nothing but `spec.suspend`, which never calls for a
    new Job. `push_suspend` says the user changed `spec.suspend` now: only then does it go to
    the Job that exists, whose `suspend` a queue (Kueue) owns otherwise. Raises
    InvalidSpecError for a spec that cannot run and k8s.ApiUnavailable for API trouble.
    """
    meta = experiment["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation", 1))
    desired = build_job(experiment, settings)
    desired_name = desired["metadata"]["name"]
    desired_hash = desired["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]

    with memory.lock(namespace, name):
        # Re-read: the status in the handler's body may predate our own last write.
        fresh = (k8s.read_experiment(namespace, name) if reread else None) or experiment
        status = dict(fresh.get("status") or {})
        conditions_before = list(status.get("conditions") or [])
        recorded = status.get("jobName")
        current = k8s.read_job(namespace, recorded) if recorded else None
        if recorded and current is None and (recorded == desired_name or suspend_only):
            # This run's Job existed and is gone (removed by its TTL after the run, or deleted
            # by someone). A generation never runs twice: record the loss unless it was over.
            _record_missing_job(fresh, status, recorded)
            return
        base: dict[str, Any] = {"observedGeneration": generation}
        conditions = status.get("conditions") or []
        annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
        if current is not None and annotations.get(c.ANNOTATION_SPEC_HASH) == desired_hash:
            # Same work, maybe a different `suspend`: keep the Job, toggle it in place.
            job = (
                _with_suspend(namespace, current, bool(desired["spec"]["suspend"]))
                if push_suspend
                else current
            )
            created_reason = None
        else:
            job, created_reason = _start_job(experiment, desired, current, recorded, log)
            if status.get("sweep"):
                # The spec dropped its sweep: this Job replaces the sweep's (recorded in
                # `jobName`, deleted by `_start_job` if unfinished); its points are history.
                base.update(sweep=None, sweepPoints=None, progress=None)
            if recorded != desired_name:
                # A new run: the former run's report no longer describes this generation.
                base.update(dict.fromkeys(_PER_RUN_FIELDS), phase=P.PENDING, jobName=desired_name)
                conditions = [
                    cond for cond in conditions if cond.get("type") not in _PER_RUN_CONDITIONS
                ]
        now = clock.now()
        accepted = accepted_condition(experiment.get("spec") or {}, settings, generation)
        conditions, changed = _accepted_conditions(
            conditions, generation, accepted, created_reason, desired_name, now
        )
        base["conditions"] = conditions
        status = _apply(status, base)
        observation = observe(job, pods, generation=generation)
        observed, observed_changed = status_patch(status, observation, now)
        k8s.patch_experiment_status(namespace, name, {**base, **observed})
        memory.remember(namespace, name, (job["metadata"]["name"], generation, observation))
        PHASES_SEEN.observe(namespace, name, _apply(status, observed).get("phase"))
    post_condition_events(fresh, [*changed, *observed_changed], before=conditions_before)


def _with_suspend(namespace: str, job: dict[str, Any], wanted: bool) -> dict[str, Any]:
    """The Job with `spec.suspend` set to `wanted` (patched only when it differs)."""
    if bool((job.get("spec") or {}).get("suspend")) == wanted:
        return job
    k8s.patch_job_spec(namespace, job["metadata"]["name"], {"suspend": wanted})
    return {**job, "spec": {**(job.get("spec") or {}), "suspend": wanted}}


def _start_job(
    experiment: dict[str, Any],
    desired: dict[str, Any],
    current: dict[str, Any] | None,
    recorded: str | None,
    log: kopf.Logger,
) -> tuple[dict[str, Any], str]:
    """Create (or adopt, after a restart) the desired Job; stop the run it replaces.

    Returns the Job and the reason for its JobCreated condition.
    """
    namespace = experiment["metadata"]["namespace"]
    desired_name = desired["metadata"]["name"]
    kopf.adopt(desired, owner=kopf.Body(cast(kopf.RawBody, experiment)))
    job, created = k8s.create_job(namespace, desired)
    if created:
        JOBS_CREATED.inc()
        log.info("Created Job %s", desired_name)
    superseded = current is not None and recorded != desired_name
    if superseded and not ((current or {}).get("status") or {}).get("completionTime"):
        # A new generation replaces a run still going (parameters or knobs changed).
        k8s.delete_job(namespace, recorded or "")
    return job, R.JOB_CREATED if created else R.JOB_ADOPTED


def _accepted_conditions(
    conditions: list[Condition],
    generation: int,
    accepted: Condition,
    created_reason: str | None,
    job_name: str,
    now: str,
) -> tuple[list[Condition], list[Condition]]:
    """Accepted (and JobCreated when a Job was just created or adopted) merged in."""
    wanted = [accepted]
    if created_reason:
        message = c.MESSAGES[created_reason].format(job=job_name)
        wanted.append(make_condition(C.JOB_CREATED, True, created_reason, message, generation))
    return set_conditions(conditions, wanted, now)


def _record_missing_job(experiment: dict[str, Any], status: dict[str, Any], job_name: str) -> None:
    """Mark a run whose Job vanished as Failed/JobMissing (call with the lock held)."""
    if status.get("phase") in P.TERMINAL:
        return
    meta = experiment["metadata"]
    observation = observe(None, [], generation=status.get("observedGeneration"))
    message = c.MESSAGES[R.JOB_MISSING].format(job=job_name)
    for cond in observation.conditions:
        cond["message"] = message
    observation.message = message
    patch, changed = status_patch(status, observation, clock.now())
    if patch:
        k8s.patch_experiment_status(meta["namespace"], meta["name"], patch)
    post_condition_events(experiment, changed, before=status.get("conditions") or [])


def sync_status(
    memory: ExperimentMemory,
    namespace: str,
    experiment_name: str,
    job_name: str,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
) -> None:
    """Mirror a Job's (None: deleted) and its Pods' state into the Experiment's status."""
    if job is not None and _already_mirrored(
        memory, namespace, experiment_name, job_name, job, pods
    ):
        return  # nothing new since our last write (e.g. the event of our own Job's creation)
    with memory.lock(namespace, experiment_name):
        experiment = k8s.read_experiment(namespace, experiment_name)
        if experiment is None or (experiment.get("metadata") or {}).get("deletionTimestamp"):
            return
        status = experiment.get("status") or {}
        if status.get("jobName") != job_name:
            return  # a superseded Job, or ensure_job has not recorded this one yet
        if job is None:
            # Removed by ttlSecondsAfterFinished after the run ended is not news; else it is.
            _record_missing_job(experiment, status, job_name)
            return
        generation = status.get("observedGeneration")
        observation = observe(job, pods, generation=generation)
        patch, changed = status_patch(status, observation, clock.now())
        if patch:
            k8s.patch_experiment_status(namespace, experiment_name, patch)
            PHASES_SEEN.observe(namespace, experiment_name, _apply(status, patch).get("phase"))
        memory.remember(namespace, experiment_name, (job_name, generation, observation))
    post_condition_events(experiment, changed, before=status.get("conditions") or [])
