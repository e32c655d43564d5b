"""Run a sweep in the cluster: one Indexed Job per run, one completion index per point.

Called by the handlers for an Experiment with `spec.sweep` on every Experiment change and every
event of its Job or of a Pod of it that started or ended. Each call looks at what exists (the
run's Job, read from the API, its Pods from the operator's index, and `status.sweepPoints`),
creates the Job if the run has none yet (a 409 means it exists: nothing is ever created twice),
lets the pure `sweep_plan` say where each point stands and what the status says, and writes one
merge patch. The Job controller paces the points (`parallelism: maxConcurrent`); the operator
creates one object per run, whatever the number of points. It holds the same per-Experiment
lock as `reconcile`, since Job and Pod events arrive on different worker threads.

The run's identity lives in `status.sweep` (`generation`, `specHash`): a generation that only
toggles `suspend` keeps the run (and its Job) going, suspending or resuming the Job in place;
any other change starts a new run, whose Job replaces the old run's unfinished one.
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
)

from dioptra_operator import k8s
from dioptra_operator.acceptance import accepted_condition
from dioptra_operator.job_builder import (
    build_job,
    job_name,
    spec_hash,
    sweep_parallelism,
    sweep_points,
    validate_spec,
)
from dioptra_operator.memory import ExperimentMemory
from dioptra_operator.prometheus import JOBS_CREATED, PHASES_SEEN
from dioptra_operator.reconcile import post_condition_events
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import (
    RUN_REPORT_FIELDS,
    merge_conditions,
    tracking_conditions,
)
from dioptra_operator.sweep_plan import (
    RECORD_FIELDS,
    changed_records,
    job_finished,
    point_outcomes,
    point_records,
    stalled_condition,
    sweep_status,
)
from dioptra_operator.sweep_summary import (
    PLOT_FIELD,
    SUMMARY_FIELD,
    build_summary_job,
    summary_failed_condition,
    summary_job_name,
    summary_record,
    wants_summary_job,
)

C = c.ConditionType
R = c.Reason
P = c.Phase

PodsFor = Callable[[str], list[dict[str, Any]]]

# Conditions that describe one run; a new run starts without them.
_PER_RUN = frozenset(
    {C.JOB_CREATED, C.STALLED, C.COMPLETE, C.FAILED, C.SUSPENDED, C.TRACKING_FAILED}
)
# Top-level fields of a run that a new run clears (a former run, plain or sweep, wrote some).
_RUN_FIELDS = ("jobName", *RUN_REPORT_FIELDS, "sweepPoints", "sweep")


@dataclass(frozen=True)
class _SweepRun:
    """Which run of the sweep this pass serves, and the name of its Job."""

    generation: int  # the spec generation observed now
    run: int  # the generation that started the run (names its Job)
    same_run: bool  # the recorded run goes on (only `suspend` changed since)
    spec_hash: str
    job_name: str

    @classmethod
    def of(cls, experiment: Mapping[str, Any]) -> _SweepRun:
        meta = experiment["metadata"]
        generation = int(meta.get("generation", 1))
        desired_hash = spec_hash(experiment.get("spec") or {})
        recorded = (experiment.get("status") or {}).get("sweep") or {}
        same_run = bool(recorded.get("specHash") == desired_hash and recorded.get("generation"))
        run = int(recorded["generation"]) if same_run else generation
        return cls(generation, run, same_run, desired_hash, job_name(meta["name"], run))


def reconcile_sweep(
    memory: ExperimentMemory,
    namespace: str,
    name: str,
    settings: Settings,
    pods_for: PodsFor,
    log: kopf.Logger,
    *,
    spec_changed: bool = False,
    push_suspend: bool = False,
) -> None:
    """Make the run's Indexed Job exist and write the sweep's status; see the module docstring.

    `spec_changed` says the Experiment's spec is why we run (not a Job or Pod event): only then
    does its pace (`maxConcurrent`) go to the Job; and its `suspend` only with `push_suspend`
    (the user changed it now), so that a queue (Kueue) admitting or preempting the Job by its
    `suspend` is undone neither on the Job's next event nor by a resume after an operator
    restart. Raises InvalidSpecError for a spec that cannot run and k8s.ApiUnavailable for API
    trouble.
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
        run = _SweepRun.of(experiment)
        status = dict(experiment.get("status") or {})
        conditions_before = list(status.get("conditions") or [])
        if not run.same_run:
            _stop_former_runs(namespace, name, run.job_name)
            status = _clear_former_run(namespace, name, status)
        suspend = bool(spec.get("suspend"))
        job = k8s.read_job(namespace, run.job_name)
        recorded = status.get("jobName") == run.job_name
        created: list[str] = []
        if job is None and not recorded:
            job, was_created = _start_run(experiment, settings, run.run, log)
            created = [run.job_name] if was_created else []
        elif job is not None and job_finished(job) is None and spec_changed:
            held = suspend if push_suspend else bool((job.get("spec") or {}).get("suspend"))
            job = _follow_spec(namespace, job, held, sweep_parallelism(spec, points))
        if job is not None and job_finished(job) is None:
            suspend = bool((job.get("spec") or {}).get("suspend"))  # what holds the points
        reports: dict[str, Any] = dict(status.get("sweepPoints") or {})
        pods = pods_for(run.job_name) if job is not None else []
        records = point_records(
            points, run.job_name, job, reports, pods, job_created=recorded or bool(created)
        )
        changed_points = changed_records(records, reports)
        entries = {key: _merged(reports.get(key), records.get(key)) for key in {*reports, *records}}
        outcomes = point_outcomes(points, run.job_name, entries)
        summary = sweep_status(points, outcomes, suspended=suspend)
        summary["sweep"].update(generation=run.run, specHash=run.spec_hash)
        before = dict(status.get("sweep") or {}) if run.same_run else {}
        record = _follow_summary(
            experiment, settings, run, summary["phase"], before.get(SUMMARY_FIELD), pods_for, log
        )
        if record is not None:
            summary["sweep"][SUMMARY_FIELD] = record
        if before.get(PLOT_FIELD):
            summary["sweep"][PLOT_FIELD] = before[PLOT_FIELD]  # the summary Pod's
        now = clock.now()
        kept = conditions_before if run.same_run else _without_run_conditions(conditions_before)
        tracking = _tracking_condition(status, record, run.generation)
        accepted = accepted_condition(spec, settings, run.generation)
        stalled = stalled_condition(pods, kept, run.generation)
        _explain_stall(summary, stalled, find_condition(kept, C.STALLED), status)
        conditions, changed = _conditions(
            kept, summary, created, suspend, run.generation, now, accepted, tracking, stalled
        )
        summary["jobName"] = run.job_name
        patch = _sweep_patch(status, summary, conditions, run.generation, job is not None, now)
        if changed_points:
            patch["sweepPoints"] = changed_points
        if patch:
            k8s.patch_experiment_status(namespace, name, patch)
        PHASES_SEEN.observe(namespace, name, summary["phase"])
    post_condition_events(experiment, changed, before=conditions_before)


def _stop_former_runs(namespace: str, name: str, wanted: str) -> None:
    """Delete the Experiment's unfinished Jobs of former runs (plain or sweep) but `wanted`."""
    for job in k8s.list_jobs(namespace, f"{c.LABEL_EXPERIMENT}={name}"):
        found = (job.get("metadata") or {}).get("name") or ""
        if found != wanted and job_finished(job) is None:
            k8s.delete_job(namespace, found)


def _start_run(
    experiment: dict[str, Any], settings: Settings, run: int, log: kopf.Logger
) -> tuple[dict[str, Any], bool]:
    """Create (or adopt, after a restart) the run's Indexed Job; whether it was created now."""
    desired = build_job(experiment, settings, generation=run)
    kopf.adopt(desired, owner=kopf.Body(cast(kopf.RawBody, experiment)))
    job, created = k8s.create_job(experiment["metadata"]["namespace"], desired)
    if created:
        JOBS_CREATED.inc()
        log.info(
            "Created Job %s for a sweep of %s points",
            desired["metadata"]["name"],
            desired["spec"]["completions"],
        )
    return job, created


def _follow_summary(
    experiment: dict[str, Any],
    settings: Settings,
    run: _SweepRun,
    phase: str,
    recorded: Mapping[str, Any] | None,
    pods_for: PodsFor,
    log: kopf.Logger,
) -> dict[str, Any] | None:
    """The run's `status.sweep.summary`, creating its summary Job when it is due (None: none).

    `sweep_summary.wants_summary_job` decides; a 409 adopts the Job an earlier pass (or an
    operator that restarted since) created. A recorded summary that finished is not read again.
    """
    meta = experiment["metadata"]
    name = summary_job_name(meta["name"], run.run)
    if wants_summary_job(phase, experiment.get("spec") or {}, settings, recorded, name):
        desired = build_summary_job(experiment, settings, run.run)
        kopf.adopt(desired, owner=kopf.Body(cast(kopf.RawBody, experiment)))
        job, created = k8s.create_job(meta["namespace"], desired)
        if created:
            JOBS_CREATED.inc()
            log.info("Created Job %s to summarize the sweep", name)
        return summary_record(name, job, [], None)
    if not recorded or recorded.get("job") != name:
        return None
    if recorded.get("phase") in P.TERMINAL:
        return dict(recorded)
    found = k8s.read_job(meta["namespace"], name)
    return summary_record(name, found, pods_for(name), recorded)


def _tracking_condition(
    status: Mapping[str, Any], record: Mapping[str, Any] | None, generation: int
) -> Condition | None:
    """TrackingFailed: the summary Job's failure, else the runners' MLflow reports (the
    summary's `status.tracking` and the points')."""
    failed = summary_failed_condition(record, generation)
    if failed is not None:
        return failed
    return next(iter(tracking_conditions(status, generation)), None)


def _explain_stall(
    summary: dict[str, Any],
    stalled: Condition | None,
    before: Condition | None,
    status: Mapping[str, Any],
) -> None:
    """The sweep's `message` says why it waits while Stalled, and drops that once it is not."""
    if summary["phase"] in P.TERMINAL or stalled is None:
        return
    if stalled["status"] == "True":
        summary["message"] = stalled["message"]
    elif before is not None and status.get("message") == before.get("message"):
        summary["message"] = None


def _follow_spec(
    namespace: str, job: dict[str, Any], suspend: bool, parallelism: int
) -> dict[str, Any]:
    """The run's Job with the Experiment's `suspend` and pace (`sweep.maxConcurrent`), patched
    in place when they differ: neither changes what the points run, so the run goes on."""
    spec = job.get("spec") or {}
    changes: dict[str, Any] = {}
    if bool(spec.get("suspend")) != suspend:
        changes["suspend"] = suspend
    if spec.get("parallelism") != parallelism:
        changes["parallelism"] = parallelism
    if not changes:
        return job
    k8s.patch_job_spec(namespace, job["metadata"]["name"], changes)
    return {**job, "spec": {**spec, **changes}}


def _merged(report: Mapping[str, Any] | None, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A point's entry as the patch leaves it: the runner's fields and the operator's record."""
    if record is None:
        return dict(report or {})
    kept = {key: value for key, value in (report or {}).items() if key not in RECORD_FIELDS}
    return {**kept, **record}


def _clear_former_run(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Clear what a former run (a plain one, or another sweep) wrote; the status without it."""
    reset = {field: None for field in _RUN_FIELDS if field in status}
    if reset:
        k8s.patch_experiment_status(namespace, name, reset)
    return {key: value for key, value in status.items() if key not in reset}


def _without_run_conditions(conditions: list[Condition]) -> list[Condition]:
    return [cond for cond in conditions if cond.get("type") not in _PER_RUN]


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


def _conditions(
    conditions: list[Condition],
    summary: Mapping[str, Any],
    created: list[str],
    suspend: bool,
    generation: int,
    now: str,
    accepted: Condition,
    tracking: Condition | None = None,
    stalled: Condition | None = None,
) -> tuple[list[Condition], list[Condition]]:
    """The sweep's conditions after this pass, and those that changed (for Events)."""

    def cond(type_: str, ok: bool, reason: str, message: str) -> Condition:
        return make_condition(type_, ok, reason, message, generation)

    phase = summary["phase"]
    wanted = [accepted]
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
    else:
        wanted.append(cond(C.SUSPENDED, False, R.RESUMED, c.MESSAGES[R.RESUMED]))
    wanted.extend(extra for extra in (tracking, stalled) if extra is not None)
    return merge_conditions(conditions, wanted, now)
