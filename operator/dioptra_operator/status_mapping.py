"""Map a Job, its Pods and the runner's account to the Experiment's phase and conditions (pure).

The operator alone writes the top-level `phase`, `message` and timings. The runner gives its
own account of its process under `status.run`; this module folds it in with what the Job and
Pods show, which tells the truth when the runner cannot: a pod that never starts (image,
Secret), a failed plugin sync, an OOM kill, a deadline, a Job deleted under us.
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

_STARTED = frozenset({P.RUNNING, P.SUCCEEDED, P.FAILED})

# What describes one run (the operator's timings and message, the runner's account and
# report): a new run, plain or sweep, starts without them.
RUN_REPORT_FIELDS = (
    "message",
    "startTime",
    "completionTime",
    "duration",
    c.RUN_STATUS,
    "tasks",
    "tasksTotal",
    "tasksDone",
    "tasksCached",
    "results",
    "artifacts",
    "artifactsKept",
    "artifactsOmitted",
    c.TRACKING_STATUS,
)


@dataclass
class Observation:
    """What the Job and Pods say: a phase, conditions to merge, and a message when it failed."""

    phase: str
    conditions: list[Condition] = field(default_factory=list)
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    duration: str | None = None
    reason: str | None = None  # the runner's own word for a failure (its account only)


# What the Job alone can tell about a failed runner: its exit code. The runner's own reason
# (TaskFailed, ArtifactStoreFailed, InvalidArtifact, ...) says more and replaces these.
_GENERIC_FAILURES = frozenset({R.RUNNER_FAILED, R.BACKOFF_LIMIT_EXCEEDED})


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


def waiting_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when a container waits on something that will not fix itself soon."""
    for status in _statuses(pod, "initContainerStatuses") + _statuses(pod, "containerStatuses"):
        waiting = (status.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason")
        text = waiting.get("message") or why or ""
        if why in _IMAGE_PULL:
            return R.IMAGE_PULL_FAILED, f"{status.get('name')}: {text}"
        if why == "CrashLoopBackOff" and status.get("name") == c.PREFECT_SIDECAR:
            # The runner waits for the API until its own timeout; say why meanwhile.
            last = (status.get("lastState") or {}).get("terminated") or {}
            detail = _exit_detail(last) if last else "it keeps exiting"
            return R.PREFECT_API_FAILED, f"{detail}; the kubelet restarts it (CrashLoopBackOff)"
        if why == "CreateContainerConfigError":
            if "secret" in text.lower():
                return R.SECRET_NOT_FOUND, f"{status.get('name')}: {text}"
            return R.CONTAINER_CONFIG_ERROR, f"{status.get('name')}: {text}"
    return None


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    return (status.get("state") or {}).get("terminated")


def _sync_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugin sync's init container statuses: every init container but the sidecar."""
    return [
        s for s in _statuses(pod, "initContainerStatuses") if s.get("name") != c.PREFECT_SIDECAR
    ]


_CLEAN_STOP = frozenset({0, 128 + 15})  # exited, or ended by the kubelet's SIGTERM


def _sidecar_stop(pod: dict[str, Any]) -> dict[str, Any] | None:
    """How the Prefect API sidecar died under the runner, if it did.

    Its previous termination (it was restarted while the Pod ran), or its current one unless
    the kubelet stopped it once the runner had ended: SIGTERM then, which the server answers
    with 143 (or 0), or with 3 while it is still starting, so anything ending no earlier than
    the runner counts as that stop. An OOM kill always counts.
    """
    runner_end = max(
        (
            str(term.get("finishedAt") or "")
            for status in _statuses(pod, "containerStatuses")
            if (term := _terminated(status))
        ),
        default=None,
    )
    for status in _statuses(pod, "initContainerStatuses"):
        if status.get("name") != c.PREFECT_SIDECAR:
            continue
        last = (status.get("lastState") or {}).get("terminated")
        if last and (last.get("exitCode", 0) not in _CLEAN_STOP or _oom(last)):
            return dict(last)
        term = _terminated(status)
        if not term or (term.get("exitCode", 0) in _CLEAN_STOP and not _oom(term)):
            return None
        ended_first = runner_end is None or str(term.get("finishedAt") or "") < runner_end
        if _oom(term) or ended_first:
            return dict(term)
    return None


def _oom(term: Mapping[str, Any]) -> bool:
    return term.get("reason") == "OOMKilled"


def _failure_cause(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The most specific reason a failed Job failed: pod evidence first, then the Job's own."""
    job_failed = _job_condition(job, "Failed") or {}
    if job_failed.get("reason") == "DeadlineExceeded":
        return R.DEADLINE_EXCEEDED, job_failed.get("message")
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name") or ""):
        for status in _sync_statuses(pod):
            term = _terminated(status)
            if term and term.get("exitCode", 0) != 0:
                return R.PLUGIN_SYNC_FAILED, _exit_detail(term)
        for status in _statuses(pod, "containerStatuses"):
            term = _terminated(status)
            if term and term.get("reason") == "OOMKilled":
                return R.OOM_KILLED, None
        stopped = _sidecar_stop(pod)
        if stopped:
            return R.PREFECT_API_FAILED, _exit_detail(stopped)
        problem = waiting_problem(pod)
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


def failure_message(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """Why a failed run failed, in one message (a sweep point: its index's Pods).

    `job` adds what only the Job knows (its deadline passed); an empty mapping lets the Pods'
    evidence alone speak, as for one index that failed while the Job goes on.
    """
    return _message(*_failure_cause(dict(job), [dict(pod) for pod in pods]))


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
    if job is None:
        return _job_missing(generation)
    cond = _ConditionMaker(generation)
    if _job_condition(job, "Complete"):
        return _succeeded(job, cond)
    if _job_condition(job, "Failed"):
        return _failed(job, pods, cond)
    return _in_progress(job, _newest_pod(pods), cond)


@dataclass(frozen=True)
class _ConditionMaker:
    """Conditions of one generation, with the reason's standard message."""

    generation: int | None

    def __call__(self, type_: str, ok: bool, reason: str, detail: str | None = None) -> Condition:
        return make_condition(type_, ok, reason, _message(reason, detail), self.generation)


def _times(job: dict[str, Any]) -> dict[str, Any]:
    status = job.get("status") or {}
    return {"start_time": status.get("startTime"), "completion_time": status.get("completionTime")}


def _job_missing(generation: int | None) -> Observation:
    message = _message(R.JOB_MISSING).format(job="for this generation")
    return Observation(
        phase=P.FAILED,
        conditions=[
            make_condition(C.JOB_CREATED, False, R.JOB_MISSING, message, generation),
            make_condition(C.FAILED, True, R.JOB_MISSING, message, generation),
        ],
        message=message,
    )


def _succeeded(job: dict[str, Any], cond: _ConditionMaker) -> Observation:
    return Observation(
        phase=P.SUCCEEDED,
        conditions=[
            cond(C.PLUGINS_SYNCED, True, _plugins_reason(job)),
            cond(C.STALLED, False, R.CONTAINERS_STARTED),
            cond(C.COMPLETE, True, R.SUCCEEDED),
        ],
        **_times(job),
    )


def _failed(job: dict[str, Any], pods: list[dict[str, Any]], cond: _ConditionMaker) -> Observation:
    reason, detail = _failure_cause(job, pods)
    conditions = [cond(C.FAILED, True, reason, detail)]
    if reason == R.PLUGIN_SYNC_FAILED:
        conditions.insert(0, cond(C.PLUGINS_SYNCED, False, reason, detail))
    failed_at = (_job_condition(job, "Failed") or {}).get("lastTransitionTime")
    times = _times(job)
    return Observation(
        phase=P.FAILED,
        conditions=conditions,
        message=_message(reason, detail),
        start_time=times["start_time"],
        completion_time=times["completion_time"] or failed_at,
    )


def _in_progress(
    job: dict[str, Any], pod: dict[str, Any] | None, cond: _ConditionMaker
) -> Observation:
    """A Job not finished: suspended, waiting for its pod, syncing or running."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if suspended and not (job.get("status") or {}).get("active"):
        return Observation(phase=P.SUSPENDED, conditions=[cond(C.SUSPENDED, True, R.SUSPENDED)])
    resumed = [] if suspended else [cond(C.SUSPENDED, False, R.RESUMED)]
    if pod is None:
        return Observation(phase=P.PENDING, conditions=resumed)
    problem = waiting_problem(pod)
    if problem:
        reason, detail = problem
        return Observation(
            phase=P.PENDING,
            conditions=[*resumed, cond(C.STALLED, True, reason, detail)],
            message=_message(reason, detail),
        )
    started = [*resumed, cond(C.STALLED, False, R.CONTAINERS_STARTED)]
    times = _times(job)
    for init in _sync_statuses(pod):
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
    plugins = cond(C.PLUGINS_SYNCED, True, _plugins_reason(job))
    synced = [plugins] if _sync_statuses(pod) or not _syncs(job) else []
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
    inits = template.get("initContainers") or []
    return any(init.get("name") != c.PREFECT_SIDECAR for init in inits)


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
    """Combine the phase in status with the newly decided one.

    A terminal phase stays (a Job removed by its TTL after success is not a failure).
    Otherwise the phase only moves forward, since Pod status may lag behind the runner's own
    account, except that suspension may stop a run at any point before it finishes.
    """
    if current in P.TERMINAL:
        return current
    if current is None or observed == P.SUSPENDED:
        return observed
    if current == P.SUSPENDED:
        return observed
    return observed if _RANK[observed] >= _RANK.get(current, 0) else current


def runner_account(status: Mapping[str, Any]) -> Observation | None:
    """The runner's own account of its run (`status.run`), when it has given one."""
    run = status.get(c.RUN_STATUS) or {}
    phase = run.get("phase")
    if phase not in _RANK:
        return None
    return Observation(
        phase=phase,
        message=run.get("message"),
        start_time=run.get("startTime"),
        completion_time=run.get("completionTime"),
        duration=run.get("duration"),
        reason=run.get("reason"),
    )


def decide(observation: Observation, account: Observation | None) -> Observation:
    """Whose word sets the phase, message and timings: the runner's or the Job's.

    The runner's Succeeded/Failed is the most precise word ("task b failed: ..."), and its
    Running is ahead of a Pod status that lags; the Job's view decides everything else (a
    suspension, a kill mid-run, a pod that never started). Conditions are always the Job's.
    """
    if account is None:
        return observation
    runner_leads = account.phase in P.TERMINAL or (
        account.phase == P.RUNNING
        and observation.phase != P.SUSPENDED
        and _RANK[observation.phase] < _RANK[P.RUNNING]
    )
    if runner_leads:
        return Observation(
            phase=account.phase,
            conditions=_with_runner_reason(observation.conditions, account),
            message=account.message,
            start_time=account.start_time or observation.start_time,
            completion_time=account.completion_time,
            duration=account.duration,
        )
    same_phase = account.phase == observation.phase
    return Observation(
        phase=observation.phase,
        conditions=observation.conditions,
        message=observation.message or (account.message if same_phase else None),
        start_time=account.start_time or observation.start_time,
        completion_time=observation.completion_time,
    )


def _with_runner_reason(conditions: list[Condition], account: Observation) -> list[Condition]:
    """The Failed condition in the runner's words when the Job only knows an exit code."""
    reason = account.reason
    if account.phase != P.FAILED or not reason or not reason[:1].isupper() or not reason.isalnum():
        return conditions
    return [
        {**cond, "reason": reason, "message": account.message or cond.get("message", "")}
        if cond.get("type") == C.FAILED and cond.get("reason") in _GENERIC_FAILURES
        else cond
        for cond in conditions
    ]


# Negative conditions worth adding only once their positive twin has been seen.
_ONLY_AFTER_TRUE = frozenset({C.SUSPENDED, C.STALLED, C.TRACKING_FAILED})


def tracking_conditions(
    status: Mapping[str, Any], generation: int | None = None
) -> list[Condition]:
    """TrackingFailed from the runners' MLflow reports (`tracking`, also a sweep point's).

    True with the first error when any report has one; False (once it has been True) when
    every report names its run. No report, no condition: tracking is off.
    """
    points = status.get("sweepPoints")
    reports = [status.get(c.TRACKING_STATUS)] + [
        point.get(c.TRACKING_STATUS)
        for point in (points.values() if isinstance(points, Mapping) else [])
        if isinstance(point, Mapping)
    ]
    found = [report for report in reports if isinstance(report, Mapping)]
    if not found:
        return []
    errors = [str(report["error"]) for report in found if report.get("error")]
    if errors:
        reason = R.MLFLOW_UNAVAILABLE
        return [
            make_condition(C.TRACKING_FAILED, True, reason, _message(reason, errors[0]), generation)
        ]
    return [make_condition(C.TRACKING_FAILED, False, R.TRACKED, _message(R.TRACKED), generation)]


def merge_conditions(
    conditions: list[Condition] | None, wanted: list[Condition], now: str
) -> tuple[list[Condition], list[Condition]]:
    """`conditions` with each wanted one merged in, and those that changed (for Events).

    A False Suspended, Stalled or TrackingFailed is added only once its True twin has been
    seen: a run never held, stuck or untracked says nothing of being resumed, started or
    tracked again. Plain runs (`status_patch`) and sweeps (`sweep_reconcile`) both merge here.
    """
    result = list(conditions or [])
    changed: list[Condition] = []
    for new in wanted:
        if (
            new["type"] in _ONLY_AFTER_TRUE
            and new["status"] == "False"
            and find_condition(result, new["type"]) is None
        ):
            continue
        result, did_change = set_condition(result, new, now)
        if did_change:
            changed.append(find_condition(result, new["type"]) or new)
    return result, changed


def status_patch(
    status: dict[str, Any], observation: Observation, now: str
) -> tuple[dict[str, Any], list[Condition]]:
    """The merge patch for `status` implied by an observation, and the conditions that changed.

    Only the operator's fields are written (the runner's `run`, tasks, results, plugins and
    progress are never named, so a merge patch keeps them); the runner's account in
    `status.run` is folded in by `decide`.
    """
    decided = decide(observation, runner_account(status))
    generation = next((cond.get("observedGeneration") for cond in observation.conditions), None)
    conditions, changed = merge_conditions(
        status.get("conditions"),
        [*decided.conditions, *tracking_conditions(status, generation)],
        now,
    )
    patch: dict[str, Any] = {}
    if changed:
        patch["conditions"] = conditions
    current = status.get("phase")
    phase = merge_phase(current, decided.phase)
    if phase != current:
        patch["phase"] = phase
    if phase != decided.phase:
        return patch, changed  # a finished run stays as it ended
    # Pod and Job events arrive on separate watches: a failure first explained by the Job
    # alone (BackoffLimitExceeded) may be refined by the Pod's evidence (OOMKilled), and the
    # runner's account may arrive after the Job's; the latest decision's message holds.
    if decided.message and decided.message != status.get("message"):
        patch["message"] = decided.message
    for key, value in _timings(status, decided, phase, now).items():
        if value != status.get(key):
            patch[key] = value
    return patch, changed


def _timings(
    status: Mapping[str, Any], decided: Observation, phase: str, now: str
) -> dict[str, str]:
    """`startTime` once the run started; `completionTime` and `duration` once it ended."""
    start = decided.start_time or status.get("startTime")
    if phase not in _STARTED:
        return {}
    timings = {"startTime": start} if start else {}
    if phase in P.TERMINAL:
        end = decided.completion_time or status.get("completionTime") or now
        timings["completionTime"] = end
        duration = decided.duration or (duration_between(start, end) if start else None)
        if duration:
            timings["duration"] = duration
    return timings
