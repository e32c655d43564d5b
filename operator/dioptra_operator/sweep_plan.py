"""Decide a sweep's next point Jobs and its status from what exists (pure: no I/O).

In the cluster each point of `spec.sweep` runs in its own Job, at most `maxConcurrent` of them
unfinished at once. The operator is level-triggered: on every Experiment, Job or Pod event it
reads the point Jobs that exist and the per-point reports in `status.sweepPoints`, then asks
this module which points to start next and what the Experiment's status should say. Because
the answer depends only on that state, a restart or a replayed event computes the same plan,
and deterministic Job names turn any repeated create into "already exists".

`status.sweepPoints.<key>` holds two writers' fields side by side: the point's runner writes
`phase`, `tasks`, `results`, `message`...; the operator writes `job` (the Job's name) and
`jobPhase` (what the Job says), which outlive the Job when its TTL removes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dioptra_api as c
from dioptra_api.sweep import SweepPoint, summarize_points

from dioptra_operator.status_mapping import pod_started

P = c.Phase
R = c.Reason

_DONE = frozenset({P.SUCCEEDED, P.FAILED})


def job_finished(job: Mapping[str, Any]) -> str | None:
    """`Succeeded` or `Failed` once the Job has its terminal condition, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return P.SUCCEEDED
        if cond.get("type") == "Failed":
            return P.FAILED
    return None


def job_phase(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> str:
    """The point's phase: Pending until a container of its Pod runs, then Running.

    The same rule as a plain Experiment's: a Job with an active Pod that has not started
    (unscheduled, pulling, waiting for a Secret) is not running yet. The Job's `ready` count
    tells it without the Pod; the Pod tells it earlier (its plugin sync).
    """
    finished = job_finished(job)
    if finished:
        return finished
    ready = int((job.get("status") or {}).get("ready") or 0)
    return P.RUNNING if ready or pod_started(pods) else P.PENDING


def point_outcome(
    job_name: str,
    job: Mapping[str, Any] | None,
    report: Mapping[str, Any] | None,
    failure: str | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """`{"phase", "results", "message"}` of one point, for `summarize_points`.

    The Job decides whether the point is done (the runner cannot report an OOM kill); the
    runner's report adds the results and the most precise message. A report about another
    Job (an older generation's run of the same values) is ignored. `failure` is the
    operator's explanation of a failed Job (from its Pods), used when the runner said nothing.
    """
    report = dict(report or {})
    if report.get("job") not in (None, job_name):
        report = {}
    runner_phase = report.get("phase")
    if job is not None:
        phase = job_phase(job, pods)
    elif report.get("jobPhase") in _DONE:
        phase = str(report["jobPhase"])
    elif report.get("jobPhase"):
        phase = P.FAILED  # created, then gone before it finished
        failure = c.MESSAGES[R.JOB_MISSING].format(job=job_name)
    else:
        phase = P.PENDING
    if phase == P.SUCCEEDED and runner_phase == P.FAILED:
        phase = P.FAILED
    outcome: dict[str, Any] = {"phase": phase}
    if report.get("results"):
        outcome["results"] = report["results"]
    if phase != P.FAILED:
        message = report.get("message")
    elif runner_phase == P.FAILED and report.get("message"):
        message = report["message"]
    else:
        message = failure or report.get("jobMessage")
    if message:
        outcome["message"] = message
    return outcome


@dataclass(frozen=True)
class SweepPlan:
    """What to do now: the points whose Jobs to create, and how the sweep stands."""

    create: list[SweepPoint]
    outcomes: dict[str, dict[str, Any]]  # by point key
    unfinished: int  # point Jobs that exist and have not finished, before `create`


def plan_sweep(
    points: Sequence[SweepPoint],
    names: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
    limit: int,
    failures: Mapping[str, str] | None = None,
    pods: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> SweepPlan:
    """The next points to start, in sweep order, keeping at most `limit` Jobs unfinished.

    `names` maps a point's key to its Job's name, `jobs` holds the point Jobs that exist (by
    name), `reports` is `status.sweepPoints`, `pods` the point Jobs' Pods (by Job name). A
    point has started when its Job exists or the
    operator recorded one for it (`jobPhase`): it never gets a second Job, even after its Job
    was removed.
    """
    outcomes = point_outcomes(points, names, jobs, reports, failures, pods)
    waiting = [point for point in points if not _started(point, names, jobs, reports)]
    unfinished = sum(
        1
        for point in points
        if (job := jobs.get(names[point.key])) is not None and job_finished(job) is None
    )
    room = max(0, limit - unfinished)
    return SweepPlan(create=waiting[:room], outcomes=outcomes, unfinished=unfinished)


def _started(
    point: SweepPoint,
    names: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
) -> bool:
    name = names[point.key]
    report = reports.get(point.key) or {}
    return name in jobs or (report.get("job") == name and bool(report.get("jobPhase")))


def point_outcomes(
    points: Sequence[SweepPoint],
    names: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
    failures: Mapping[str, str] | None = None,
    pods: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Where each point stands (`point_outcome`), Pending for a point not started yet."""
    failures = failures or {}
    pods = pods or {}
    return {
        point.key: point_outcome(
            names[point.key],
            jobs.get(names[point.key]),
            reports.get(point.key) or {},
            failures.get(names[point.key]),
            pods.get(names[point.key], ()),
        )
        if _started(point, names, jobs, reports)
        else {"phase": P.PENDING}
        for point in points
    }


def sweep_phase(counts: Mapping[str, int], total: int, *, suspended: bool = False) -> str:
    """Succeeded when every point did, Failed when all are done and any failed, else running."""
    done = counts.get(P.SUCCEEDED, 0) + counts.get(P.FAILED, 0)
    if total and done >= total:
        return P.FAILED if counts.get(P.FAILED, 0) else P.SUCCEEDED
    if suspended:
        return P.SUSPENDED
    if done or counts.get(P.RUNNING, 0):
        return P.RUNNING
    return P.PENDING


def sweep_status(
    points: Sequence[SweepPoint],
    outcomes: Mapping[str, Mapping[str, Any]],
    *,
    suspended: bool = False,
) -> dict[str, Any]:
    """The Experiment's `phase`, `progress`, `sweep` summary and, once done, its `message`."""
    summary = summarize_points(points, outcomes)
    counts = summary["counts"]
    total = len(points)
    done = counts.get(P.SUCCEEDED, 0) + counts.get(P.FAILED, 0)
    phase = sweep_phase(counts, total, suspended=suspended)
    status: dict[str, Any] = {"phase": phase, "progress": f"{done}/{total}", "sweep": summary}
    if phase == P.SUCCEEDED:
        status["message"] = f"All {total} sweep points succeeded."
    elif phase == P.FAILED:
        failed = counts.get(P.FAILED, 0)
        status["message"] = c.MESSAGES[R.SWEEP_POINTS_FAILED].format(failed=failed, total=total)
        first = next(
            (o.get("message") for o in outcomes.values() if o.get("phase") == P.FAILED), None
        )
        if first:
            status["message"] += f"; first: {str(first).splitlines()[0][:200]}"
    return status
