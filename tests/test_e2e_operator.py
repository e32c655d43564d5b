"""End to end: the real operator (console script, kopf) against the API emulator and test kubelet.

These tests are about the operator's own behaviour, so where the runner itself is not the
subject the kubelet runs `STAND_IN_RUNNER` (a process that sleeps, then exits) as the main
container. The init container, when a test has one, is the real `dioptra plugins sync`.
"""

from __future__ import annotations

import base64
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dioptra_operator import constants as c
from support.k8s_emulator import K8sApi, wait_until
from support.kubelet import OperatorProcess, TestKubelet, stand_in_kubelet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, **spec},
    }


def status(api: K8sApi, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def maybe_condition(api: K8sApi, name: str, type_: str) -> dict[str, Any] | None:
    for cond in status(api, name).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def condition(api: K8sApi, name: str, type_: str) -> dict[str, Any]:
    found = maybe_condition(api, name, type_)
    assert found is not None, f"{name} has no {type_} condition: {status(api, name)}"
    return found


def wait_phase(api: K8sApi, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
    return dict(
        wait_until(
            lambda: (s := status(api, name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} to reach {phase} (status now: {status(api, name)})",
        )
    )


def jobs_of(api: K8sApi, name: str) -> list[dict[str, Any]]:
    return [
        job
        for job in api.list("jobs", "default")
        if (job["metadata"].get("labels") or {}).get(c.LABEL_EXPERIMENT) == name
    ]


def events_for(api: K8sApi, name: str) -> list[dict[str, Any]]:
    return [
        event
        for event in api.list("events", "default")
        if (event.get("involvedObject") or {}).get("name") == name
    ]


@pytest.fixture()
def stand_in(k8s_api: K8sApi, tmp_path: Path) -> Iterator[TestKubelet]:
    """A kubelet whose main containers are a 30 s stand-in runner (tests kill or stop it)."""
    with stand_in_kubelet(k8s_api, tmp_path / "kubelet", 30) as node:
        yield node


@pytest.fixture()
def quick_stand_in(k8s_api: K8sApi, tmp_path: Path) -> Iterator[TestKubelet]:
    """A kubelet whose main containers succeed after one second."""
    with stand_in_kubelet(k8s_api, tmp_path / "kubelet", 1) as node:
        yield node


def test_an_experiment_gets_one_job_owned_by_it(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    created = k8s_api.create(experiment("owned"))
    wait_until(lambda: jobs_of(k8s_api, "owned"), what="the Job")
    job = jobs_of(k8s_api, "owned")[0]
    assert job["metadata"]["name"] == "owned-g1"
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Experiment",
        "owned",
        created["metadata"]["uid"],
    )
    assert owner["controller"] is True
    current = wait_until(
        lambda: status(k8s_api, "owned").get("jobName") and status(k8s_api, "owned")
    )
    assert current["jobName"] == "owned-g1"
    assert current["observedGeneration"] == 1
    assert current["phase"] == c.Phase.PENDING
    assert (
        condition(k8s_api, "owned", c.ConditionType.JOB_CREATED)["reason"] == c.Reason.JOB_CREATED
    )


def test_a_job_creation_is_announced_with_an_event(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    k8s_api.create(experiment("announced"))
    event = wait_until(
        lambda: [
            e for e in events_for(k8s_api, "announced") if e["reason"] == c.Reason.JOB_CREATED
        ],
        what="a JobCreated event",
    )[0]
    assert event["type"] == "Normal"
    assert "announced-g1" in event["message"]


def test_a_finished_stand_in_run_succeeds_with_timings(
    k8s_api: K8sApi, operator_process: OperatorProcess, quick_stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("quick"))
    final = wait_phase(k8s_api, "quick", c.Phase.SUCCEEDED)
    assert final["completionTime"] >= final["startTime"]
    assert final["duration"].endswith("s")
    assert condition(k8s_api, "quick", c.ConditionType.COMPLETE)["status"] == "True"


def test_restarting_the_operator_mid_run_creates_no_second_job(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("restarted"))
    wait_phase(k8s_api, "restarted", c.Phase.RUNNING)
    job_uid = jobs_of(k8s_api, "restarted")[0]["metadata"]["uid"]
    operator_process.restart()
    # The new process resumes the Experiment (kopf's resume handler) and mirrors the pod again.
    wait_until(
        lambda: (
            "Handler 'experiment_changed' succeeded"
            in operator_process.log.split("dioptra-operator started")[-1]
        ),
        what="the resume handler",
    )
    stand_in.kill("restarted-g1", reason="Error")
    wait_phase(k8s_api, "restarted", c.Phase.FAILED)
    assert [j["metadata"]["uid"] for j in jobs_of(k8s_api, "restarted")] == [job_uid]


def test_a_runner_killed_for_memory_fails_with_oom_killed(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("oom"))
    wait_phase(k8s_api, "oom", c.Phase.RUNNING)
    stand_in.kill("oom-g1", reason="OOMKilled")
    final = wait_phase(k8s_api, "oom", c.Phase.FAILED)
    failed = condition(k8s_api, "oom", c.ConditionType.FAILED)
    assert failed and failed["reason"] == c.Reason.OOM_KILLED
    assert "OOMKilled" in final["message"]
    warning = wait_until(
        lambda: [e for e in events_for(k8s_api, "oom") if e["reason"] == c.Reason.OOM_KILLED]
    )[0]
    assert warning["type"] == "Warning"


def test_a_suspended_experiment_runs_only_once_resumed(
    k8s_api: K8sApi, operator_process: OperatorProcess, quick_stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("held", suspend=True, queueName="team-a"))
    wait_phase(k8s_api, "held", c.Phase.SUSPENDED)
    (job,) = jobs_of(k8s_api, "held")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][c.LABEL_KUEUE_QUEUE] == "team-a"
    assert k8s_api.list("pods", "default") == []
    k8s_api.patch("experiments", "held", {"spec": {"suspend": False}})
    wait_phase(k8s_api, "held", c.Phase.SUCCEEDED)
    assert [j["metadata"]["name"] for j in jobs_of(k8s_api, "held")] == ["held-g1"]
    resumed = condition(k8s_api, "held", c.ConditionType.SUSPENDED)
    assert resumed and resumed["reason"] == c.Reason.RESUMED


def test_suspending_a_running_experiment_stops_its_pod(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("paused"))
    wait_phase(k8s_api, "paused", c.Phase.RUNNING)
    k8s_api.patch("experiments", "paused", {"spec": {"suspend": True}})
    wait_phase(k8s_api, "paused", c.Phase.SUSPENDED)
    assert jobs_of(k8s_api, "paused")[0]["spec"]["suspend"] is True
    wait_until(lambda: not stand_in.main_running("paused-g1"), what="the pod to stop")


def test_a_job_deleted_under_a_running_experiment_fails_it_with_job_missing(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("orphan"))
    wait_phase(k8s_api, "orphan", c.Phase.RUNNING)
    k8s_api.delete("jobs", "orphan-g1")
    final = wait_phase(k8s_api, "orphan", c.Phase.FAILED)
    assert "orphan-g1" in final["message"]
    failed = condition(k8s_api, "orphan", c.ConditionType.FAILED)
    assert failed and failed["reason"] == c.Reason.JOB_MISSING


def test_deleting_an_experiment_is_not_blocked_and_leaves_the_job_to_the_gc(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    created = k8s_api.create(experiment("doomed"))
    wait_until(lambda: status(k8s_api, "doomed").get("jobName"), what="the Job")
    assert not k8s_api.get("experiments", "doomed")["metadata"].get("finalizers")
    k8s_api.delete("experiments", "doomed")
    wait_until(lambda: not k8s_api.exists("experiments", "doomed"), what="the deletion")
    # The emulator has no garbage collector: the owner reference is what a cluster acts on.
    (job,) = jobs_of(k8s_api, "doomed")
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    k8s_api.delete("jobs", "doomed-g1")  # what the GC would do; the operator must not mind
    wait_until(
        lambda: (
            "Handler 'job_changed' succeeded"
            in operator_process.log.split("[default/doomed-g1]")[-1]
        )
    )
    assert "Traceback" not in operator_process.log


def test_a_missing_secret_stalls_the_experiment_with_secret_not_found(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(
        experiment(
            "nosecret",
            plugins={
                "sources": ["s3://plugins/custom"],
                "endpointURL": "http://127.0.0.1:9",
                "credentialsSecretRef": {"name": "absent-creds"},
            },
        )
    )
    stalled = wait_until(
        lambda: maybe_condition(k8s_api, "nosecret", c.ConditionType.STALLED),
        what="a Stalled condition",
    )
    assert stalled["reason"] == c.Reason.SECRET_NOT_FOUND
    current = status(k8s_api, "nosecret")
    assert current["phase"] == c.Phase.PENDING
    assert "absent-creds" in current["message"]


def test_an_unrunnable_spec_is_rejected_with_invalid_spec_and_no_job(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    k8s_api.create(experiment("local", plugins={"sources": ["./plugins"]}))
    final = wait_phase(k8s_api, "local", c.Phase.FAILED)
    accepted = condition(k8s_api, "local", c.ConditionType.ACCEPTED)
    assert accepted and accepted["reason"] == c.Reason.INVALID_SPEC
    assert "./plugins" in final["message"]
    warning = wait_until(
        lambda: [e for e in events_for(k8s_api, "local") if e["reason"] == c.Reason.INVALID_SPEC]
    )[0]
    assert warning["type"] == "Warning"
    assert jobs_of(k8s_api, "local") == []


def test_the_runners_status_fields_survive_the_operators_writes(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("shared"))
    wait_phase(k8s_api, "shared", c.Phase.RUNNING)
    runner_fields = {
        "tasks": [{"name": "a", "task": "p.m.f", "state": "Completed"}],
        "tasksDone": 1,
        "tasksTotal": 2,
        "results": {"accuracy": 0.9},
        "progress": "1/2",
    }
    k8s_api.patch("experiments", "shared", {"status": runner_fields}, subresource="status")
    stand_in.kill("shared-g1", reason="OOMKilled")
    final = wait_phase(k8s_api, "shared", c.Phase.FAILED)
    assert {key: final[key] for key in runner_fields} == runner_fields


def test_the_phase_gauge_counts_experiments(k8s_api: K8sApi, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = OperatorProcess(
        k8s_api, {"DIOPTRA_METRICS_PORT": str(port)}, tmp_path / "operator.log"
    ).start()
    try:
        k8s_api.create(experiment("counted", suspend=True))
        wait_phase(k8s_api, "counted", c.Phase.SUSPENDED)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return str(r.read().decode())

        wait_until(lambda: 'dioptra_experiments{phase="Suspended"} 1.0' in scrape(), what="gauge")
    finally:
        process.stop()


def test_s3_credentials_reach_the_sync_only_through_the_secret(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    k8s_api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIDEXAMPLE").decode()},
        }
    )
    k8s_api.create(
        experiment(
            "secretive",
            plugins={"sources": ["s3://plugins/x"], "credentialsSecretRef": {"name": "creds"}},
        )
    )
    wait_until(lambda: jobs_of(k8s_api, "secretive"), what="the Job")
    job = jobs_of(k8s_api, "secretive")[0]
    assert "AKIDEXAMPLE" not in str(job)
    assert "AKIDEXAMPLE" not in str(k8s_api.get("experiments", "secretive"))


def test_changing_parameters_replaces_the_running_job_with_one_for_the_new_generation(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("tuned", parameters={"epsilon": 0.1}))
    wait_phase(k8s_api, "tuned", c.Phase.RUNNING)
    k8s_api.patch("experiments", "tuned", {"spec": {"parameters": {"epsilon": 0.2}}})
    current = wait_until(
        lambda: (s := status(k8s_api, "tuned")).get("jobName") == "tuned-g2" and s,
        what="the new generation's Job",
    )
    assert current["observedGeneration"] == 2
    wait_until(lambda: [j["metadata"]["name"] for j in jobs_of(k8s_api, "tuned")] == ["tuned-g2"])
    wait_phase(k8s_api, "tuned", c.Phase.RUNNING)


def test_an_api_error_while_creating_the_job_is_retried(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    k8s_api.fail("POST", r"/namespaces/default/jobs$", status=503, times=1)
    k8s_api.create(experiment("flaky"))
    wait_until(lambda: status(k8s_api, "flaky").get("jobName"), timeout=15, what="the retry")
    assert [j["metadata"]["name"] for j in jobs_of(k8s_api, "flaky")] == ["flaky-g1"]
    assert "Handler 'experiment_changed' failed temporarily" in operator_process.log
    assert "Traceback" not in operator_process.log


def test_a_finished_run_whose_job_expired_is_not_run_again_after_a_restart(
    k8s_api: K8sApi, operator_process: OperatorProcess, quick_stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("expired", ttlSecondsAfterFinished=0))
    wait_phase(k8s_api, "expired", c.Phase.SUCCEEDED)
    wait_until(lambda: maybe_condition(k8s_api, "expired", c.ConditionType.COMPLETE))
    k8s_api.delete("jobs", "expired-g1")  # what the TTL controller does
    operator_process.restart()
    wait_until(
        lambda: (
            "Handler 'experiment_changed' succeeded"
            in operator_process.log.split("dioptra-operator started")[-1]
        ),
        what="the resume handler",
    )
    assert jobs_of(k8s_api, "expired") == []
    assert status(k8s_api, "expired")["phase"] == c.Phase.SUCCEEDED


def test_a_run_past_its_deadline_fails_with_deadline_exceeded(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(experiment("late", activeDeadlineSeconds=1))
    wait_phase(k8s_api, "late", c.Phase.FAILED)
    assert (
        condition(k8s_api, "late", c.ConditionType.FAILED)["reason"] == c.Reason.DEADLINE_EXCEEDED
    )


def test_the_liveness_endpoint_answers_as_the_chart_probes_it(
    k8s_api: K8sApi, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--all-namespaces", "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz"]
    process = OperatorProcess(k8s_api, {}, tmp_path / "operator.log", args=args).start()

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_until(healthy, what="/healthz to answer 200")
    finally:
        process.stop()
