"""A sweep's per-point state and its status, from its one Indexed Job and its Pods (pure: no I/O).

In the cluster a sweep of N points runs as one Indexed Job: `completions: N`, `parallelism:
maxConcurrent`, one completion index per point (`dioptra_api.sweep.cluster_points` gives the
order), each index retried on its own (`backoffLimitPerIndex`). The Job controller paces the
points; the operator only reads where each stands:

- the Job's `status.completedIndexes` / `status.failedIndexes` (the compressed "0-3,7" form,
  `parse_index_set`) say which points are done;
- the Pods, labelled with their completion index, say which points run (a container started)
  and explain a failed point (OOMKilled, a failed plugin sync: `status_mapping`'s evidence)
  or a sweep that cannot start (`stalled_condition`: an image pull, a missing Secret);
- a Job that failed as a whole (its deadline passed) fails the points it had not finished.

`status.sweepPoints.<key>` holds two writers' fields side by side: the point's runner writes
`phase`, `results`, `message`...; the operator writes `job` (the run's Job), `jobPhase` and,
for a failed point, `jobMessage`, which outlive the Job when its TTL removes it. Because the
answer depends only on that state, a restart or a replayed event computes the same status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dioptra_api as c
from dioptra_api.conditions import Condition, find_condition, make_condition
from dioptra_api.sweep import SweepPoint, summarize_points

from dioptra_operator.status_mapping import failure_message, pod_started, waiting_problem

P = c.Phase
R = c.Reason
C = c.ConditionType

_DONE = frozenset({P.SUCCEEDED, P.FAILED})
_POD_ENDED = frozenset({"Succeeded", "Failed"})
# The operator's fields of a `status.sweepPoints` entry.
RECORD_FIELDS = ("job", "jobPhase", "jobMessage")


def parse_index_set(text: str | None) -> frozenset[int]:
    """The indexes of a Job's `completedIndexes`/`failedIndexes`: "1,3-5,7" -> {1, 3, 4, 5, 7}.

    Empty or absent means none. ValueError for anything else than comma-separated numbers and
    ascending `a-b` ranges (the API server writes nothing else).
    """
    indexes: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"not an index set: {text!r}")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise ValueError(f"not an index set: {text!r} (range {part} descends)")
        indexes.update(range(low, high + 1))
    return frozenset(indexes)


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


def pod_index(pod: Mapping[str, Any]) -> int | None:
    """The completion index of an Indexed Job's Pod (its label, else its annotation)."""
    meta = pod.get("metadata") or {}
    for where in ("labels", "annotations"):
        value = str((meta.get(where) or {}).get(c.LABEL_COMPLETION_INDEX) or "")
        if value.isdigit():
            return int(value)
    return None


def pods_by_index(pods: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """The Job's Pods grouped by completion index (Pods without one are left out)."""
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for pod in pods:
        index = pod_index(pod)
        if index is not None:
            grouped.setdefault(index, []).append(pod)
    return grouped


def _alive(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [pod for pod in pods if (pod.get("status") or {}).get("phase") not in _POD_ENDED]


def point_records(
    points: Sequence[SweepPoint],
    job_name: str,
    job: Mapping[str, Any] | None,
    reports: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]] = (),
    *,
    job_created: bool = False,
) -> dict[str, dict[str, Any]]:
    """The operator's fields (`job`, `jobPhase`, `jobMessage`) of each point that has any.

    `job` is the run's Indexed Job (None: not created yet, or gone), `reports` is
    `status.sweepPoints`, `pods` the Job's Pods, `job_created` whether the run's Job was
    recorded (`status.jobName`), so that a missing Job means it was deleted. A point that has
    not started has no record (it is Pending); a finished point's record outlives the Job.
    """
    indexes = pods_by_index(pods)
    if job is not None:
        status = job.get("status") or {}
        completed = parse_index_set(status.get("completedIndexes"))
        failed = parse_index_set(status.get("failedIndexes"))
        finished = job_finished(job)
    records: dict[str, dict[str, Any]] = {}
    for point in points:
        before = dict(reports.get(point.key) or {})
        ours = before if before.get("job") == job_name else {}
        own = indexes.get(point.index, [])
        record: dict[str, Any] = {"job": job_name}
        if job is None:
            if ours.get("jobPhase") in _DONE:
                record.update(jobPhase=ours["jobPhase"], jobMessage=ours.get("jobMessage"))
            elif job_created:
                record.update(
                    jobPhase=P.FAILED, jobMessage=c.MESSAGES[R.JOB_MISSING].format(job=job_name)
                )
            else:
                continue
        elif point.index in completed or finished == P.SUCCEEDED:
            record["jobPhase"] = P.SUCCEEDED
        elif point.index in failed:
            record.update(jobPhase=P.FAILED, jobMessage=failure_message({}, own))
        elif finished == P.FAILED:
            # The Job failed as a whole before this point finished (its deadline passed).
            record.update(jobPhase=P.FAILED, jobMessage=failure_message(job, own))
        elif pod_started(_alive(own)):
            record["jobPhase"] = P.RUNNING
        elif ours.get("jobPhase"):
            record["jobPhase"] = P.PENDING  # it ran, and was stopped (suspended) or is retried
        else:
            continue
        records[point.key] = {key: value for key, value in record.items() if value is not None}
    return records


def changed_records(
    records: Mapping[str, Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The merge patch of `status.sweepPoints` for the records that differ from the status.

    A field the record no longer has (a `jobMessage` of a point now Pending) is removed.
    """
    patch: dict[str, dict[str, Any]] = {}
    for key, record in records.items():
        before = reports.get(key) or {}
        change: dict[str, Any] = {
            field: value for field, value in record.items() if before.get(field) != value
        }
        change.update(
            {field: None for field in RECORD_FIELDS if field in before and field not in record}
        )
        if change:
            patch[key] = change
    return patch


def point_outcome(job_name: str, entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{"phase", "results", "message"}` of one point, for `summarize_points`.

    `entry` is the point's `status.sweepPoints` entry, the operator's record merged in. The
    Job decides whether the point is done (the runner cannot report an OOM kill); the runner's
    report adds the results and the most precise message. An entry about another Job (an
    older run of the same values) is ignored.
    """
    entry = dict(entry or {})
    if entry.get("job") not in (None, job_name):
        entry = {}
    runner_phase = entry.get("phase")
    phase = str(entry.get("jobPhase") or P.PENDING)
    if phase == P.SUCCEEDED and runner_phase == P.FAILED:
        phase = P.FAILED
    outcome: dict[str, Any] = {"phase": phase}
    if entry.get("results"):
        outcome["results"] = entry["results"]
    if phase != P.FAILED:
        message = entry.get("message")
    elif runner_phase == P.FAILED and entry.get("message"):
        message = entry["message"]
    else:
        message = entry.get("jobMessage") or entry.get("message")
    if message:
        outcome["message"] = message
    return outcome


def point_outcomes(
    points: Sequence[SweepPoint], job_name: str, entries: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Where each point stands (`point_outcome`), by key."""
    return {point.key: point_outcome(job_name, entries.get(point.key)) for point in points}


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


def _index(pod: Mapping[str, Any]) -> int:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(c.LABEL_COMPLETION_INDEX, -1))
    except ValueError:
        return -1


def stalled_condition(
    pods: Sequence[Mapping[str, Any]],
    conditions: Sequence[Condition],
    generation: int | None,
) -> Condition | None:
    """The sweep's Stalled condition from its Pods: never a silent Pending for a sweep either.

    True while a point's Pod waits on something that will not fix itself (an image that cannot
    be pulled, a missing Secret, a bad container config: `status_mapping.waiting_problem`),
    naming the first such point; points share their Pod template, so one usually stands for
    all. False (ContainersStarted) once Pods exist and none waits on a problem, only after a
    True one (which may also come from the Job controller's FailedCreate Events, recorded by
    `reconcile.explain_missing_pod`). None: nothing to say.
    """
    stuck = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in _POD_ENDED:
            continue
        problem = waiting_problem(dict(pod))
        if problem is not None:
            stuck.append((_index(pod), problem))
    if stuck:
        stuck.sort(key=lambda item: item[0])
        index, (reason, detail) = stuck[0]
        more = f" (and {len(stuck) - 1} more points)" if len(stuck) > 1 else ""
        message = f"{c.MESSAGES[reason]}: point {index}: {detail}{more}"
        return make_condition(C.STALLED, True, reason, message, generation)
    before = find_condition(list(conditions), C.STALLED)
    if pods and before is not None and before.get("status") == "True":
        return make_condition(
            C.STALLED, False, R.CONTAINERS_STARTED, c.MESSAGES[R.CONTAINERS_STARTED], generation
        )
    return None
