"""Map a Job and its Pods to the Experiment's phase and conditions (pure).

The runner reports progress while it runs; this module tells the truth when it cannot: a pod
that never starts (image, Secret), a failed plugin sync, an OOM kill, a deadline, a Job deleted
under us. `merge_phase` decides how the operator's view combines with what the runner wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dioptra_api as c
from dioptra_api.clock import duration_between
from dioptra_api.conditions import Condition, find_condition, make_condition, set_condition

C = c.ConditionType
R = c.Reason
P = c.Phase

_IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_RANK = {
    P.PENDING: 0,
    P.SUSPENDED: 0,
    P.SYNCING_PLUGINS: 1,
    P.RUNNING: 2,
    P.SUCCEEDED: 3,
    P.FAILED: 3,
}


@dataclass
class Observation:
    """What the Job and Pods say: a phase, conditions to merge, and a message when it failed."""

    phase: str
    conditions: list[Condition] = field(default_factory=list)
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None


def _message(reason: str, detail: str | None = None) -> str:
    base = c.MESSAGES[reason]
    return f"{base}: {detail}" if detail else base


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _newest_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not pods:
        return None
    return max(
        pods,
        key=lambda p: (
            (p.get("metadata") or {}).get("creationTimestamp") or "",
            (p.get("metadata") or {}).get("name") or "",
        ),
    )


def _statuses(pod: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get(key) or [])


def _waiting_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when a container waits on something that will not fix itself soon."""
    for status in _statuses(pod, "initContainerStatuses") + _statuses(pod, "containerStatuses"):
        waiting = (status.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason")
        text = waiting.get("message") or why or ""
        if why in _IMAGE_PULL:
            return R.IMAGE_PULL_FAILED, f"{status.get('name')}: {text}"
        if why == "CreateContainerConfigError":
            if "secret" in text.lower():
                return R.SECRET_NOT_FOUND, f"{status.get('name')}: {text}"
            return R.CONTAINER_CONFIG_ERROR, f"{status.get('name')}: {text}"
    return None


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    return (status.get("state") or {}).get("terminated")


def _failure_cause(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The most specific reason a failed Job failed: pod evidence first, then the Job's own."""
    job_failed = _job_condition(job, "Failed") or {}
    if job_failed.get("reason") == "DeadlineExceeded":
        return R.DEADLINE_EXCEEDED, job_failed.get("message")
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name") or ""):
        for status in _statuses(pod, "initContainerStatuses"):
            term = _terminated(status)
            if term and term.get("exitCode", 0) != 0:
                return R.PLUGIN_SYNC_FAILED, _exit_detail(term)
        for status in _statuses(pod, "containerStatuses"):
            term = _terminated(status)
            if term and term.get("reason") == "OOMKilled":
                return R.OOM_KILLED, None
        problem = _waiting_problem(pod)
        if problem:
            return problem
    for pod in pods:
        for status in _statuses(pod, "containerStatuses"):
            term = _terminated(status)
            if term and term.get("exitCode", 0) != 0:
                return R.RUNNER_FAILED, _exit_detail(term)
    if job_failed.get("reason") == "BackoffLimitExceeded":
        return R.BACKOFF_LIMIT_EXCEEDED, job_failed.get("message")
    return R.RUNNER_FAILED, job_failed.get("message") or job_failed.get("reason")


def _exit_detail(term: dict[str, Any]) -> str:
    detail = f"exit code {term.get('exitCode')}"
    if term.get("reason") and term.get("reason") not in ("Error", "Completed"):
        detail += f" ({term['reason']})"
    if term.get("message"):
        detail += f": {str(term['message']).strip().splitlines()[-1][:300]}"
    return detail


def observe(
    job: dict[str, Any] | None, pods: list[dict[str, Any]], generation: int | None = None
) -> Observation:
    """The phase and conditions implied by the Job (None when it is gone) and its Pods."""

    def cond(type_: str, ok: bool, reason: str, detail: str | None = None) -> Condition:
        return make_condition(type_, ok, reason, _message(reason, detail), generation)

    if job is None:
        message = _message(R.JOB_MISSING).format(job="for this generation")
        return Observation(
            phase=P.FAILED,
            conditions=[
                make_condition(C.JOB_CREATED, False, R.JOB_MISSING, message, generation),
                make_condition(C.FAILED, True, R.JOB_MISSING, message, generation),
            ],
            message=message,
        )
    status = job.get("status") or {}
    times = {"start_time": status.get("startTime"), "completion_time": status.get("completionTime")}

    plugins = cond(C.PLUGINS_SYNCED, True, _plugins_reason(job))
    if _job_condition(job, "Complete"):
        return Observation(
            phase=P.SUCCEEDED,
            conditions=[
                plugins,
                cond(C.STALLED, False, R.CONTAINERS_STARTED),
                cond(C.COMPLETE, True, R.SUCCEEDED),
            ],
            **times,
        )
    if _job_condition(job, "Failed"):
        reason, detail = _failure_cause(job, pods)
        conditions = [cond(C.FAILED, True, reason, detail)]
        if reason == R.PLUGIN_SYNC_FAILED:
            conditions.insert(0, cond(C.PLUGINS_SYNCED, False, reason, detail))
        failed_at = (_job_condition(job, "Failed") or {}).get("lastTransitionTime")
        return Observation(
            phase=P.FAILED,
            conditions=conditions,
            message=_message(reason, detail),
            start_time=times["start_time"],
            completion_time=times["completion_time"] or failed_at,
        )

    pod = _newest_pod(pods)
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if suspended and not status.get("active"):
        return Observation(phase=P.SUSPENDED, conditions=[cond(C.SUSPENDED, True, R.SUSPENDED)])
    resumed = [] if suspended else [cond(C.SUSPENDED, False, R.RESUMED)]
    if pod is None:
        return Observation(phase=P.PENDING, conditions=resumed)

    problem = _waiting_problem(pod)
    if problem:
        reason, detail = problem
        return Observation(
            phase=P.PENDING,
            conditions=[*resumed, cond(C.STALLED, True, reason, detail)],
            message=_message(reason, detail),
        )
    started = [*resumed, cond(C.STALLED, False, R.CONTAINERS_STARTED)]
    for init in _statuses(pod, "initContainerStatuses"):
        state = init.get("state") or {}
        term = state.get("terminated")
        if "running" in state:
            return Observation(phase=P.SYNCING_PLUGINS, conditions=started, **times)
        if term and term.get("exitCode", 0) != 0:
            # The Job may still retry (backoffLimit); only the Job's Failed condition is final.
            detail = _exit_detail(term)
            return Observation(
                phase=P.SYNCING_PLUGINS,
                conditions=[*started, cond(C.PLUGINS_SYNCED, False, R.PLUGIN_SYNC_FAILED, detail)],
                message=_message(R.PLUGIN_SYNC_FAILED, detail),
                **times,
            )
    synced = [plugins] if _statuses(pod, "initContainerStatuses") or not _syncs(job) else []
    for main in _statuses(pod, "containerStatuses"):
        state = main.get("state") or {}
        if "running" in state or "terminated" in state:
            return Observation(phase=P.RUNNING, conditions=[*started, *synced], **times)
    return Observation(phase=P.PENDING, conditions=resumed, **times)


def pod_started(pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a container of one of the Pods runs or ran (the run has begun)."""
    for pod in pods:
        status = pod.get("status") or {}
        for entry in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            state = entry.get("state") or {}
            if "running" in state or "terminated" in state:
                return True
    return False


def _syncs(job: dict[str, Any]) -> bool:
    """Whether the Job's Pod syncs plugins (an init container, present only with sources)."""
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    return bool(template.get("initContainers"))


def _plugins_reason(job: dict[str, Any]) -> str:
    return R.PLUGINS_SYNCED if _syncs(job) else R.NO_PLUGIN_SOURCES


_MISSING_ACCOUNT = re.compile(r'serviceaccount "(?P<account>[^"]+)" not found')


def creation_failure(message: str, namespace: str, generation: int | None = None) -> Observation:
    """The Job controller could not create the Pod (its FailedCreate Event says `message`).

    A missing ServiceAccount is the common case and gets a message saying how to fix it.
    """
    missing = _MISSING_ACCOUNT.search(message)
    if missing:
        reason = R.SERVICE_ACCOUNT_NOT_FOUND
        text = c.MESSAGES[reason].format(
            detail=missing.group(0), account=missing.group("account"), namespace=namespace
        )
    else:
        reason = R.POD_CREATION_FAILED
        text = _message(reason, message.strip()[:1024])
    stalled = make_condition(C.STALLED, True, reason, text, generation)
    return Observation(phase=P.PENDING, conditions=[stalled], message=text)


def merge_phase(current: str | None, observed: str) -> str:
    """Combine the phase in status (maybe written by the runner) with the operator's view.

    A terminal phase stays (the runner's Succeeded/Failed is the most precise word, and a Job
    removed by its TTL after success is not a failure). Otherwise the phase only moves forward,
    since Pod status may lag behind the runner's own report, except that suspension may stop
    a run at any point before it finishes.
    """
    if current in P.TERMINAL:
        return current
    if current is None or observed == P.SUSPENDED:
        return observed
    if current == P.SUSPENDED:
        return observed
    return observed if _RANK[observed] >= _RANK.get(current, 0) else current


# Negative conditions worth adding only once their positive twin has been seen.
_ONLY_AFTER_TRUE = frozenset({C.SUSPENDED, C.STALLED})


def status_patch(
    status: dict[str, Any], observation: Observation, now: str
) -> tuple[dict[str, Any], list[Condition]]:
    """The merge patch for `status` implied by an observation, and the conditions that changed.

    Only the operator's fields are written; the runner's (tasks, results, plugins, progress)
    are never named, so a merge patch keeps them. The message and timings are filled in only
    when the operator's view decides the phase (the runner could not report).
    """
    conditions = list(status.get("conditions") or [])
    changed: list[Condition] = []
    for new in observation.conditions:
        if (
            new["type"] in _ONLY_AFTER_TRUE
            and new["status"] == "False"
            and find_condition(conditions, new["type"]) is None
        ):
            continue
        conditions, did_change = set_condition(conditions, new, now)
        if did_change:
            changed.append(find_condition(conditions, new["type"]) or new)
    patch: dict[str, Any] = {}
    if changed:
        patch["conditions"] = conditions
    current = status.get("phase")
    phase = merge_phase(current, observation.phase)
    if phase != current:
        patch["phase"] = phase
    operator_decides = current not in P.TERMINAL and phase == observation.phase
    # Pod and Job events arrive on separate watches: a failure first explained by the Job
    # alone (BackoffLimitExceeded) may be refined by the Pod's evidence (OOMKilled). Update
    # the message then too, but only if it is still the operator's own (the runner's says more).
    previous = find_condition(status.get("conditions"), C.FAILED) or {}
    refining = (
        current == P.FAILED
        and observation.phase == P.FAILED
        and status.get("message") == previous.get("message")
    )
    message = observation.message
    if (operator_decides or refining) and message and message != status.get("message"):
        patch["message"] = message
    if operator_decides and phase in P.TERMINAL:
        start = status.get("startTime") or observation.start_time
        end = status.get("completionTime") or observation.completion_time or now
        if not status.get("startTime") and start:
            patch["startTime"] = start
        if not status.get("completionTime"):
            patch["completionTime"] = end
        if not status.get("duration") and start:
            patch["duration"] = duration_between(start, end)
    return patch, changed
