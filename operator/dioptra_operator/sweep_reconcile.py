"""Run a sweep in the cluster: one Job per point, at most `maxConcurrent` unfinished at once.

Called by the handlers for an Experiment with `spec.sweep` on every Experiment change and every
event of one of its point Jobs. Each call looks at what exists (the point Jobs, listed from the
API, and `status.sweepPoints`), lets the pure `sweep_plan` decide which points to start and
what the status says, creates those Jobs (a 409 means one exists: nothing is ever created
twice) and writes one merge patch. It holds the same per-Experiment lock as `reconcile`, since
the Job events of several points arrive on different worker threads.

The run's identity lives in `status.sweep` (`generation`, `specHash`): a generation that only
toggles `suspend` keeps the run (and its Job names) going; any other change starts a new run,
whose Jobs replace the old run's unfinished ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import dioptra_api as c
import kopf
from dioptra_api import clock
from dioptra_api.clock import duration_between
from dioptra_api.conditions import (
    Condition,
    find_condition,
    make_condition,
    set_conditions,
)
from dioptra_api.sweep import SweepPoint, max_concurrent

from dioptra_operator import k8s
from dioptra_operator.job_builder import (
    build_job,
    point_job_name,
    spec_hash,
    sweep_points,
    validate_spec,
)
from dioptra_operator.memory import ExperimentMemory
from dioptra_operator.prometheus import JOBS_CREATED, PHASES_SEEN
from dioptra_operator.reconcile import post_condition_events
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import RUN_REPORT_FIELDS, observe
from dioptra_operator.sweep_plan import (
    job_finished,
    job_phase,
    plan_sweep,
    point_outcomes,
    sweep_status,
)

C = c.ConditionType
R = c.Reason
P = c.Phase

PodsFor = Callable[[str], list[dict[str, Any]]]

# Conditions that describe one run; a new run starts without them.
_PER_RUN = frozenset({C.JOB_CREATED, C.STALLED, C.COMPLETE, C.FAILED, C.SUSPENDED})
# Top-level fields of a run that a new run clears (a former run without sweep wrote some).
_RUN_FIELDS = ("jobName", *RUN_REPORT_FIELDS, "sweepPoints")


@dataclass(frozen=True)
class _SweepRun:
    """Which run of the sweep this pass serves, and the Job name of each of its points."""

    generation: int  # the spec generation observed now
    run: int  # the generation that started the run (names its Jobs)
    same_run: bool  # the recorded run goes on (only `suspend` changed since)
    spec_hash: str
    names: dict[str, str]

    @classmethod
    def of(cls, experiment: Mapping[str, Any], points: list[SweepPoint]) -> _SweepRun:
        meta = experiment["metadata"]
        generation = int(meta.get("generation", 1))
        desired_hash = spec_hash(experiment.get("spec") or {})
        recorded = (experiment.get("status") or {}).get("sweep") or {}
        same_run = bool(recorded.get("specHash") == desired_hash and recorded.get("generation"))
        run = int(recorded["generation"]) if same_run else generation
        names = {point.key: point_job_name(meta["name"], run, point.key) for point in points}
        return cls(generation, run, same_run, desired_hash, names)


def reconcile_sweep(
    memory: ExperimentMemory,
    namespace: str,
    name: str,
    settings: Settings,
    pods_for: PodsFor,
    log: kopf.Logger,
) -> None:
    """Start the sweep's next point Jobs and write its status; see the module docstring.

    Raises InvalidSpecError for a spec that cannot run and k8s.ApiUnavailable for API trouble.
    """
    with memory.lock(namespace, name):
        experiment = k8s.read_experiment(namespace, name)
        if experiment is None or (experiment.get("metadata") or {}).get("deletionTimestamp"):
            return
        spec = experiment.get("spec") or {}
        validate_spec(spec)
        points = sweep_points(spec)
        if points is None:
            return  # the sweep was removed; the new generation is a plain run (ensure_job)
        run = _SweepRun.of(experiment, points)
        jobs = _point_jobs(namespace, name, set(run.names.values()))
        status = dict(experiment.get("status") or {})
        conditions_before = list(status.get("conditions") or [])
        if not run.same_run:
            status = _clear_former_run(namespace, name, status)
        reports: dict[str, Any] = dict(status.get("sweepPoints") or {})
        pods = {job_name: pods_for(job_name) for job_name in jobs}
        failures = {
            job_name: observe(job, pods[job_name]).message or ""
            for job_name, job in jobs.items()
            if job_finished(job) == P.FAILED
        }
        limit = max_concurrent(spec["sweep"])
        plan = plan_sweep(points, run.names, jobs, reports, limit, failures, pods)
        suspend = bool(spec.get("suspend"))
        _suspend_unfinished(namespace, jobs, suspend)
        created = _start_points(experiment, settings, plan.create, run.run, jobs, log)

        records = _job_records(run.names, jobs, reports, failures, pods)
        for key, record in records.items():
            reports[key] = {**(reports.get(key) or {}), **record}
        outcomes = point_outcomes(points, run.names, jobs, reports, failures, pods)
        summary = sweep_status(points, outcomes, suspended=suspend)
        summary["sweep"].update(generation=run.run, specHash=run.spec_hash)
        now = clock.now()
        kept = conditions_before if run.same_run else _without_run_conditions(conditions_before)
        conditions, changed = _conditions(kept, summary, created, suspend, run.generation, now)
        patch = _sweep_patch(status, summary, conditions, run.generation, bool(jobs), now)
        if records:
            patch["sweepPoints"] = records
        if patch:
            k8s.patch_experiment_status(namespace, name, patch)
        PHASES_SEEN.observe(namespace, name, summary["phase"])
    post_condition_events(experiment, changed, before=conditions_before)


def _point_jobs(namespace: str, name: str, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """This run's point Jobs, by name; an older run's unfinished ones are deleted."""
    jobs: dict[str, dict[str, Any]] = {}
    for job in k8s.list_jobs(namespace, f"{c.LABEL_EXPERIMENT}={name}"):
        job_name = (job.get("metadata") or {}).get("name") or ""
        if job_name in wanted:
            jobs[job_name] = job
        elif job_finished(job) is None:
            k8s.delete_job(namespace, job_name)  # an older run's, superseded by this one
    return jobs


def _clear_former_run(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Clear what a former run (a plain one, or another sweep) wrote; the status without it."""
    reset = {field: None for field in _RUN_FIELDS if field in status}
    if reset:
        k8s.patch_experiment_status(namespace, name, reset)
    return {key: value for key, value in status.items() if key not in reset}


def _without_run_conditions(conditions: list[Condition]) -> list[Condition]:
    return [cond for cond in conditions if cond.get("type") not in _PER_RUN]


def _suspend_unfinished(
    namespace: str, jobs: Mapping[str, Mapping[str, Any]], suspend: bool
) -> None:
    """Give every unfinished point Job the Experiment's `suspend`."""
    for job_name, job in jobs.items():
        if job_finished(job) is None and bool((job.get("spec") or {}).get("suspend")) != suspend:
            k8s.set_job_suspend(namespace, job_name, suspend)


def _start_points(
    experiment: dict[str, Any],
    settings: Settings,
    points: list[SweepPoint],
    run: int,
    jobs: dict[str, dict[str, Any]],
    log: kopf.Logger,
) -> list[str]:
    """Create the points' Jobs (adding them to `jobs`); the names of those created now."""
    created: list[str] = []
    for point in points:
        desired = build_job(experiment, settings, point, generation=run)
        kopf.adopt(desired, owner=kopf.Body(cast(kopf.RawBody, experiment)))
        job_name = desired["metadata"]["name"]
        job, was_created = k8s.create_job(experiment["metadata"]["namespace"], desired)
        jobs[job_name] = job
        if was_created:
            JOBS_CREATED.inc()
            created.append(job_name)
            log.info("Created Job %s for sweep point %s", job_name, point.label)
    return created


def _sweep_patch(
    status: Mapping[str, Any],
    summary: Mapping[str, Any],
    conditions: list[Condition],
    generation: int,
    started: bool,
    now: str,
) -> dict[str, Any]:
    """The changed top-level fields: the summary, conditions and the run's timings."""
    patch: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions, **summary}
    if not status.get("startTime") and started:
        patch["startTime"] = now
    if summary["phase"] in P.TERMINAL and not status.get("completionTime"):
        patch["completionTime"] = now
        start = status.get("startTime") or patch.get("startTime")
        if start:
            patch["duration"] = duration_between(start, now)
    return {key: value for key, value in patch.items() if status.get(key) != value}


def _job_records(
    names: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Any],
    failures: Mapping[str, str],
    pods: Mapping[str, list[dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """The operator's changed fields of `status.sweepPoints`: each point Job's name and phase.

    They outlive the Job (a TTL may remove it once finished), so a finished point is never run
    again, and a Job deleted before it finished is recorded as a failed point.
    """
    records: dict[str, dict[str, Any]] = {}
    for key, job_name in names.items():
        report = reports.get(key) or {}
        job = jobs.get(job_name)
        if job is not None:
            phase = job_phase(job, pods.get(job_name, []))
            record: dict[str, Any] = {"job": job_name, "jobPhase": phase}
            if job_name in failures:
                record["jobMessage"] = failures[job_name]
        elif report.get("job") == job_name and report.get("jobPhase") not in (None, *P.TERMINAL):
            message = c.MESSAGES[R.JOB_MISSING].format(job=job_name)
            record = {"job": job_name, "jobPhase": P.FAILED, "jobMessage": message}
        else:
            continue
        if any(report.get(field) != value for field, value in record.items()):
            records[key] = record
    return records


def _conditions(
    conditions: list[Condition],
    summary: Mapping[str, Any],
    created: list[str],
    suspend: bool,
    generation: int,
    now: str,
) -> tuple[list[Condition], list[Condition]]:
    """The sweep's conditions after this pass, and those that changed (for Events)."""

    def cond(type_: str, ok: bool, reason: str, message: str) -> Condition:
        return make_condition(type_, ok, reason, message, generation)

    phase = summary["phase"]
    wanted = [cond(C.ACCEPTED, True, R.SPEC_ACCEPTED, c.MESSAGES[R.SPEC_ACCEPTED])]
    wanted.extend(
        cond(C.JOB_CREATED, True, R.JOB_CREATED, c.MESSAGES[R.JOB_CREATED].format(job=job))
        for job in created
    )
    if phase == P.SUCCEEDED:
        wanted.append(cond(C.COMPLETE, True, R.SUCCEEDED, summary["message"]))
    elif phase == P.FAILED:
        wanted.append(cond(C.FAILED, True, R.SWEEP_POINTS_FAILED, summary["message"]))
    elif suspend:
        wanted.append(cond(C.SUSPENDED, True, R.SUSPENDED, c.MESSAGES[R.SUSPENDED]))
    elif find_condition(conditions, C.SUSPENDED):
        wanted.append(cond(C.SUSPENDED, False, R.RESUMED, c.MESSAGES[R.RESUMED]))
    return set_conditions(conditions, wanted, now)
