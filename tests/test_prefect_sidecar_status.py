"""How the Prefect API sidecar's container states become the Experiment's status (pure)."""

from __future__ import annotations

from typing import Any

import dioptra_api as c
from dioptra_operator.status_mapping import observe

R = c.Reason
P = c.Phase


def job(*, failed: bool = False, complete: bool = False) -> dict[str, Any]:
    inits = [{"name": c.PREFECT_SIDECAR}, {"name": c.INIT_CONTAINER}]
    conditions = []
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"})
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    return {
        "metadata": {"name": "exp-g1"},
        "spec": {"template": {"spec": {"initContainers": inits}}},
        "status": {"conditions": conditions},
    }


def pod(sidecar: dict[str, Any], sync: dict[str, Any], runner: dict[str, Any] | None) -> Any:
    status: dict[str, Any] = {
        "initContainerStatuses": [
            {"name": c.PREFECT_SIDECAR, **sidecar},
            {"name": c.INIT_CONTAINER, "state": sync},
        ]
    }
    if runner is not None:
        status["containerStatuses"] = [{"name": c.MAIN_CONTAINER, "state": runner}]
    return {"metadata": {"name": "exp-g1-abcde", "creationTimestamp": "t"}, "status": status}


RUNNING: dict[str, Any] = {"state": {"running": {}}}
SYNCED = {"terminated": {"exitCode": 0, "reason": "Completed"}}


def failed_condition(observation: Any) -> dict[str, Any]:
    return next(cond for cond in observation.conditions if cond["type"] == c.ConditionType.FAILED)


def test_a_running_sidecar_is_not_a_plugin_sync() -> None:
    seen = observe(job(), [pod(RUNNING, SYNCED, {"running": {}})])
    assert seen.phase == P.RUNNING


def test_the_sync_beside_a_running_sidecar_is_syncing_plugins() -> None:
    seen = observe(job(), [pod(RUNNING, {"running": {}}, None)])
    assert seen.phase == P.SYNCING_PLUGINS


def test_a_sidecar_killed_for_memory_fails_the_run_with_a_prefect_api_reason() -> None:
    oom = {"exitCode": 137, "reason": "OOMKilled"}
    sidecar = {"state": {"running": {}}, "restartCount": 1, "lastState": {"terminated": oom}}
    runner = {"terminated": {"exitCode": 2, "reason": "Error"}}
    seen = observe(job(failed=True), [pod(sidecar, SYNCED, runner)])
    assert seen.phase == P.FAILED
    assert failed_condition(seen)["reason"] == R.PREFECT_API_FAILED
    assert (
        seen.message
        == "The Prefect API sidecar (container prefect-api) stopped: exit code 137 (OOMKilled)"
    )


def test_a_sidecar_stopped_by_sigterm_after_a_failed_run_is_not_blamed() -> None:
    sidecar = {"state": {"terminated": {"exitCode": 143, "reason": "Error"}}}
    runner = {"terminated": {"exitCode": 1, "reason": "Error"}}
    seen = observe(job(failed=True), [pod(sidecar, SYNCED, runner)])
    assert failed_condition(seen)["reason"] == R.RUNNER_FAILED


def test_a_failed_sync_beside_a_sidecar_is_still_a_plugin_sync_failure() -> None:
    failed_sync = {"terminated": {"exitCode": 3, "reason": "Error"}}
    seen = observe(job(failed=True), [pod(RUNNING, failed_sync, None)])
    assert failed_condition(seen)["reason"] == R.PLUGIN_SYNC_FAILED


def test_a_sidecar_stopped_while_still_starting_after_a_quick_failure_is_not_blamed() -> None:
    # SIGTERM during the server's start-up makes uvicorn exit 3; it came after the runner ended.
    sidecar = {"state": {"terminated": {"exitCode": 3, "finishedAt": "2026-01-01T00:00:09Z"}}}
    runner = {"terminated": {"exitCode": 2, "finishedAt": "2026-01-01T00:00:08Z"}}
    seen = observe(job(failed=True), [pod(sidecar, SYNCED, runner)])
    assert failed_condition(seen)["reason"] == R.RUNNER_FAILED


def test_a_sidecar_that_crashed_before_the_runner_ended_is_blamed() -> None:
    sidecar = {"state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:05Z"}}}
    runner = {"terminated": {"exitCode": 2, "finishedAt": "2026-01-01T00:00:08Z"}}
    seen = observe(job(failed=True), [pod(sidecar, SYNCED, runner)])
    assert failed_condition(seen)["reason"] == R.PREFECT_API_FAILED


def test_a_crash_looping_sidecar_stalls_the_run_with_its_last_exit() -> None:
    crashed = {"exitCode": 1, "reason": "Error", "message": "Traceback...\nOSError: disk full"}
    sidecar = {
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
        "restartCount": 3,
        "lastState": {"terminated": crashed},
    }
    seen = observe(job(), [pod(sidecar, {"waiting": {"reason": "PodInitializing"}}, None)])
    stalled = next(cond for cond in seen.conditions if cond["type"] == c.ConditionType.STALLED)
    assert (stalled["status"], stalled["reason"]) == ("True", R.PREFECT_API_FAILED)
    assert seen.message == (
        "The Prefect API sidecar (container prefect-api) stopped: exit code 1: OSError: disk full;"
        " the kubelet restarts it (CrashLoopBackOff)"
    )
