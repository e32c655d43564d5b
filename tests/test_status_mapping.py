"""Pure mapping of Job and Pod state to the Experiment's phase, conditions and message."""

from __future__ import annotations

from typing import Any

import pytest
from dioptra_api import ConditionType as C
from dioptra_api import Phase as P
from dioptra_api import Reason as R
from dioptra_api.clock import duration_between
from dioptra_api.conditions import find_condition, make_condition
from dioptra_operator.status_mapping import (
    Observation,
    creation_failure,
    merge_phase,
    observe,
    status_patch,
)

NOW = "2026-01-01T00:10:00Z"


def job(
    *,
    suspend: bool = False,
    active: int = 0,
    condition: tuple[str, str] | None = None,
    syncs: bool = True,
) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-01-01T00:00:00Z"}
    if active:
        status["active"] = active
    if condition:
        type_, reason = condition
        status["conditions"] = [
            {
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": f"{reason} happened",
                "lastTransitionTime": "2026-01-01T00:02:00Z",
            }
        ]
        if type_ == "Complete":
            status["completionTime"] = "2026-01-01T00:02:00Z"
    inits = [{"name": "sync"}] if syncs else []
    spec = {"suspend": suspend, "template": {"spec": {"initContainers": inits}}}
    return {"metadata": {"name": "exp-g1"}, "spec": spec, "status": status}


def state(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: fields}


def pod(init: dict[str, Any] | None = None, main: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if init is not None:
        status["initContainerStatuses"] = [{"name": "sync", "state": init}]
    if main is not None:
        status["containerStatuses"] = [{"name": "runner", "state": main}]
    return {"metadata": {"name": "exp-g1-abcde", "creationTimestamp": "t"}, "status": status}


def reason_of(observation: Observation, type_: str) -> str | None:
    cond = find_condition(observation.conditions, type_)
    return cond["reason"] if cond else None


def test_a_job_without_pods_is_pending() -> None:
    assert observe(job(), []).phase == P.PENDING


def test_a_suspended_job_is_suspended() -> None:
    observation = observe(job(suspend=True), [])
    assert observation.phase == P.SUSPENDED
    assert reason_of(observation, C.SUSPENDED) == R.SUSPENDED


def test_a_running_init_container_means_syncing_plugins() -> None:
    observation = observe(
        job(active=1), [pod(init=state("running"), main=state("waiting", reason="PodInitializing"))]
    )
    assert observation.phase == P.SYNCING_PLUGINS


def test_a_running_main_container_means_running_and_plugins_synced() -> None:
    observation = observe(
        job(active=1), [pod(init=state("terminated", exitCode=0), main=state("running"))]
    )
    assert observation.phase == P.RUNNING
    assert reason_of(observation, C.PLUGINS_SYNCED) == R.PLUGINS_SYNCED


def test_a_complete_job_succeeded() -> None:
    observation = observe(job(condition=("Complete", "CompletionsReached")), [])
    assert observation.phase == P.SUCCEEDED
    assert reason_of(observation, C.COMPLETE) == R.SUCCEEDED
    assert observation.completion_time == "2026-01-01T00:02:00Z"


def test_a_failed_init_container_fails_with_plugin_sync_failed() -> None:
    failed_init = state("terminated", exitCode=2, reason="Error", message="S3 access denied")
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [pod(init=failed_init, main=state("waiting", reason="PodInitializing"))],
    )
    assert observation.phase == P.FAILED
    assert reason_of(observation, C.FAILED) == R.PLUGIN_SYNC_FAILED
    assert reason_of(observation, C.PLUGINS_SYNCED) == R.PLUGIN_SYNC_FAILED
    assert observation.message is not None and "S3 access denied" in observation.message


def test_an_oom_killed_runner_fails_with_oom_killed() -> None:
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [
            pod(
                init=state("terminated", exitCode=0),
                main=state("terminated", exitCode=137, reason="OOMKilled"),
            )
        ],
    )
    assert reason_of(observation, C.FAILED) == R.OOM_KILLED


def test_a_deadline_beats_the_pod_evidence() -> None:
    observation = observe(
        job(condition=("Failed", "DeadlineExceeded")),
        [pod(init=state("terminated", exitCode=0), main=state("terminated", exitCode=143))],
    )
    assert reason_of(observation, C.FAILED) == R.DEADLINE_EXCEEDED


def test_a_runner_error_names_the_exit_code() -> None:
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [
            pod(
                init=state("terminated", exitCode=0),
                main=state("terminated", exitCode=3, reason="Error"),
            )
        ],
    )
    assert reason_of(observation, C.FAILED) == R.RUNNER_FAILED
    assert observation.message is not None and "exit code 3" in observation.message


def test_backoff_limit_is_the_reason_when_no_pod_is_left() -> None:
    observation = observe(job(condition=("Failed", "BackoffLimitExceeded")), [])
    assert reason_of(observation, C.FAILED) == R.BACKOFF_LIMIT_EXCEEDED


@pytest.mark.parametrize("waiting", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_errors_stall_the_pending_pod(waiting: str) -> None:
    observation = observe(
        job(active=1), [pod(init=state("waiting", reason=waiting, message="not found"))]
    )
    assert observation.phase == P.PENDING
    assert reason_of(observation, C.STALLED) == R.IMAGE_PULL_FAILED


def test_a_missing_secret_stalls_the_pod_with_secret_not_found() -> None:
    waiting = state(
        "waiting", reason="CreateContainerConfigError", message='secret "s3-creds" not found'
    )
    observation = observe(job(active=1), [pod(init=waiting)])
    assert observation.phase == P.PENDING
    assert reason_of(observation, C.STALLED) == R.SECRET_NOT_FOUND
    assert observation.message is not None and "s3-creds" in observation.message


def test_a_deleted_job_fails_with_job_missing() -> None:
    observation = observe(None, [])
    assert observation.phase == P.FAILED
    assert reason_of(observation, C.FAILED) == R.JOB_MISSING


@pytest.mark.parametrize(
    ("current", "observed", "expected"),
    [
        (None, P.PENDING, P.PENDING),
        (P.RUNNING, P.SYNCING_PLUGINS, P.RUNNING),  # pod status lagging the runner
        (P.SYNCING_PLUGINS, P.RUNNING, P.RUNNING),
        (P.SUCCEEDED, P.FAILED, P.SUCCEEDED),  # the runner's final word stays
        (P.FAILED, P.SUCCEEDED, P.FAILED),
        (P.RUNNING, P.FAILED, P.FAILED),  # killed mid-run
        (P.RUNNING, P.SUSPENDED, P.SUSPENDED),
        (P.SUSPENDED, P.PENDING, P.PENDING),
    ],
)
def test_merge_phase(current: str | None, observed: str, expected: str) -> None:
    assert merge_phase(current, observed) == expected


def test_status_patch_never_names_the_runners_fields() -> None:
    status = {"phase": P.RUNNING, "tasks": [{"name": "a"}], "results": {"x": 1}, "progress": "1/2"}
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [
            pod(
                init=state("terminated", exitCode=0),
                main=state("terminated", exitCode=137, reason="OOMKilled"),
            )
        ],
    )
    patch, changed = status_patch(status, observation, NOW)
    assert patch["phase"] == P.FAILED
    assert not {"tasks", "results", "progress", "plugins"} & set(patch)
    assert [c["reason"] for c in changed] == [R.OOM_KILLED]


def test_status_patch_fills_timings_the_runner_could_not_write() -> None:
    observation = observe(job(condition=("Complete", "CompletionsReached")), [])
    patch, _ = status_patch({"phase": P.PENDING}, observation, NOW)
    assert patch["startTime"] == "2026-01-01T00:00:00Z"
    assert patch["completionTime"] == "2026-01-01T00:02:00Z"
    assert patch["duration"] == "2m0s"


def runner_said(phase: str, **fields: str) -> dict[str, Any]:
    """A status holding the runner's own account (what RunStatusReporter writes)."""
    return {"phase": P.RUNNING, "run": {"phase": phase, **fields}}


def test_status_patch_takes_the_runners_final_message_and_times() -> None:
    status = runner_said(
        P.FAILED, message="task b failed: ValueError", completionTime="2026-01-01T00:01:00Z"
    )
    observation = observe(job(condition=("Failed", "BackoffLimitExceeded")), [])
    patch, _ = status_patch(status, observation, NOW)
    assert patch["phase"] == P.FAILED
    assert patch["message"] == "task b failed: ValueError"
    assert patch["completionTime"] == "2026-01-01T00:01:00Z"
    assert patch["duration"] == "1m0s"


def test_status_patch_keeps_the_runners_final_message_and_times() -> None:
    status = runner_said(
        P.FAILED, message="task b failed: ValueError", completionTime="2026-01-01T00:01:00Z"
    )
    observation = observe(job(condition=("Failed", "BackoffLimitExceeded")), [])
    first, _ = status_patch(status, observation, NOW)
    again, _ = status_patch({**status, **first}, observation, NOW)
    assert again == {}


def test_the_failed_condition_takes_the_runners_reason_over_an_exit_code() -> None:
    status = runner_said(P.FAILED, message="task b failed: ValueError", reason="TaskFailed")
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [pod(init=state("terminated"), main=state("terminated", exitCode=1, reason="Error"))],
    )
    patch, _ = status_patch(status, observation, NOW)
    failed = find_condition(patch["conditions"], C.FAILED)
    assert failed is not None
    assert (failed["reason"], failed["message"]) == ("TaskFailed", "task b failed: ValueError")


def test_the_failed_condition_keeps_what_the_pod_shows_beyond_an_exit_code() -> None:
    status = runner_said(P.FAILED, message="task b failed: MemoryError", reason="TaskFailed")
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [pod(init=state("terminated"), main=state("terminated", exitCode=137, reason="OOMKilled"))],
    )
    patch, _ = status_patch(status, observation, NOW)
    failed = find_condition(patch["conditions"], C.FAILED)
    assert failed is not None and failed["reason"] == R.OOM_KILLED


def test_the_runners_success_is_the_phase_before_the_job_completes() -> None:
    status = runner_said(P.SUCCEEDED, message="3 tasks completed", duration="42s")
    observation = observe(job(active=1), [pod(init=state("terminated"), main=state("running"))])
    patch, _ = status_patch(status, observation, NOW)
    assert (patch["phase"], patch["message"], patch["duration"]) == (
        P.SUCCEEDED,
        "3 tasks completed",
        "42s",
    )


def test_the_runners_running_is_ahead_of_a_lagging_pod_status() -> None:
    status = {"phase": P.SYNCING_PLUGINS, "run": {"phase": P.RUNNING}}
    observation = observe(job(active=1), [pod(init=state("running"))])
    patch, _ = status_patch(status, observation, NOW)
    assert patch["phase"] == P.RUNNING


def test_a_suspension_stops_a_run_the_runner_still_calls_running() -> None:
    status = runner_said(P.RUNNING)
    observation = observe(job(suspend=True), [])
    patch, _ = status_patch(status, observation, NOW)
    assert patch["phase"] == P.SUSPENDED


def test_a_kill_mid_run_fails_a_run_the_runner_still_calls_running() -> None:
    status = runner_said(P.RUNNING, message="running the entry point")
    observation = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [pod(init=state("terminated"), main=state("terminated", exitCode=137, reason="OOMKilled"))],
    )
    patch, _ = status_patch(status, observation, NOW)
    assert patch["phase"] == P.FAILED
    assert "OOMKilled" in patch["message"]


def test_the_top_level_never_holds_the_runners_account() -> None:
    status = runner_said(P.SUCCEEDED, message="done")
    patch, _ = status_patch(status, observe(job(condition=("Complete", "x")), []), NOW)
    assert "run" not in patch


def test_status_patch_is_empty_when_nothing_changed() -> None:
    observation = observe(job(active=1), [pod(init=state("running"))])
    patch, _ = status_patch({}, observation, NOW)
    again, changed = status_patch({**patch}, observation, NOW)
    assert again == {}
    assert changed == []


def test_resumed_is_not_reported_for_a_job_never_suspended() -> None:
    patch, changed = status_patch({}, observe(job(), []), NOW)
    assert "conditions" not in patch
    assert changed == []


def test_resumed_is_reported_after_a_suspension() -> None:
    suspended = [dict(make_condition(C.SUSPENDED, True, R.SUSPENDED, "m"), lastTransitionTime=NOW)]
    patch, changed = status_patch(
        {"phase": P.SUSPENDED, "conditions": suspended}, observe(job(), []), NOW
    )
    assert patch["phase"] == P.PENDING
    assert [c["reason"] for c in changed] == [R.RESUMED]


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ("2026-01-01T00:00:45Z", "45s"),
        ("2026-01-01T00:03:07Z", "3m7s"),
        ("2026-01-01T02:05:00Z", "2h5m"),
    ],
)
def test_durations_read_like_kubectl(end: str, expected: str) -> None:
    assert duration_between("2026-01-01T00:00:00Z", end) == expected


def test_a_later_pod_report_refines_the_operators_own_failure_message() -> None:
    job_only = observe(job(condition=("Failed", "BackoffLimitExceeded")), [])
    first, _ = status_patch({"phase": P.RUNNING}, job_only, NOW)
    with_pod = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [
            pod(
                init=state("terminated", exitCode=0),
                main=state("terminated", exitCode=137, reason="OOMKilled"),
            )
        ],
    )
    second, changed = status_patch({"phase": P.RUNNING, **first}, with_pod, NOW)
    assert [c["reason"] for c in changed] == [R.OOM_KILLED]
    assert "OOMKilled" in second["message"]


def test_a_later_pod_report_keeps_the_runners_failure_message() -> None:
    message = "task b failed: ValueError: bad input"
    status = {"phase": P.FAILED, "message": message, "run": {"phase": P.FAILED, "message": message}}
    with_pod = observe(
        job(condition=("Failed", "BackoffLimitExceeded")),
        [pod(init=state("terminated", exitCode=0), main=state("terminated", exitCode=1))],
    )
    patch, _ = status_patch(status, with_pod, NOW)
    assert "message" not in patch


def test_a_job_without_plugin_sources_says_no_plugins_were_synced() -> None:
    running = observe(job(active=1, syncs=False), [pod(main=state("running"))])
    assert reason_of(running, C.PLUGINS_SYNCED) == R.NO_PLUGIN_SOURCES
    done = observe(job(condition=("Complete", "CompletionsReached"), syncs=False), [])
    assert reason_of(done, C.PLUGINS_SYNCED) == R.NO_PLUGIN_SOURCES


def test_a_completed_job_with_a_sync_says_plugins_were_synced() -> None:
    done = observe(job(condition=("Complete", "CompletionsReached")), [])
    assert reason_of(done, C.PLUGINS_SYNCED) == R.PLUGINS_SYNCED


def test_a_missing_service_account_stalls_with_how_to_create_it() -> None:
    message = (
        'Error creating: pods "exp-g1-" is forbidden: error looking up service account '
        'lab/runner: serviceaccount "runner" not found'
    )
    observation = creation_failure(message, "lab", generation=2)
    assert observation.phase == P.PENDING
    (stalled,) = observation.conditions
    assert (stalled["type"], stalled["status"]) == (C.STALLED, "True")
    assert stalled["reason"] == R.SERVICE_ACCOUNT_NOT_FOUND
    assert stalled["observedGeneration"] == 2
    assert 'serviceaccount "runner" not found' in stalled["message"]
    assert "kubectl create serviceaccount runner -n lab" in stalled["message"]
    assert observation.message == stalled["message"]


def test_any_other_pod_creation_failure_is_quoted() -> None:
    message = 'Error creating: pods "exp-g1-" is forbidden: exceeded quota: compute'
    observation = creation_failure(message, "lab")
    (stalled,) = observation.conditions
    assert stalled["reason"] == R.POD_CREATION_FAILED
    assert stalled["message"].endswith("exceeded quota: compute")
