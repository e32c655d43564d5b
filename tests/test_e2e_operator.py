"""End to end: the real operator (console script, kopf) on the real control plane.

The operator runs as the chart's ServiceAccount with the chart's RBAC; the real Job controller
creates the Pods and owns Job status, the scheduler binds them to the stand-in kubelet. These
tests are about the operator's own behaviour, so where the runner itself is not the subject the
kubelet runs `STAND_IN_RUNNER` (a process that sleeps, then exits) as the main container. The
init container, when a test has one, is the real `dioptra plugins sync`.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
from support.cluster import ChartRbac, Cluster, OperatorProcess, wait_until
from support.controlplane import free_port
from support.kubelet import StandInKubelet, stand_in_settings
from support.proxy import ApiProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, **spec},
    }


def status(api: Cluster, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def maybe_condition(api: Cluster, name: str, type_: str) -> dict[str, Any] | None:
    for cond in status(api, name).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def condition(api: Cluster, name: str, type_: str) -> dict[str, Any]:
    found = maybe_condition(api, name, type_)
    assert found is not None, f"{name} has no {type_} condition: {status(api, name)}"
    return found


def wait_phase(api: Cluster, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    found = api.wait_for(
        "experiments",
        name,
        lambda e: ((e or {}).get("status") or {}).get("phase") == phase,
        timeout=timeout,
        what=f"{name} to reach {phase}",
    )
    return dict(found["status"])


def jobs_of(api: Cluster, name: str) -> list[dict[str, Any]]:
    return api.list("jobs", labelSelector=f"{c.LABEL_EXPERIMENT}={name}")


def events_for(api: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.events_for(name, kind=c.KIND) if e["reason"] == reason]


@pytest.fixture()
def stand_in(cluster: Cluster, kubelet: StandInKubelet) -> Iterator[StandInKubelet]:
    """Main containers of this namespace are a 30 s stand-in runner (tests kill or stop it)."""
    kubelet.configure(cluster.namespace, stand_in_settings(30))
    yield kubelet
    kubelet.forget(cluster.namespace)


@pytest.fixture()
def quick_stand_in(cluster: Cluster, kubelet: StandInKubelet) -> Iterator[StandInKubelet]:
    """Main containers of this namespace succeed after one second."""
    kubelet.configure(cluster.namespace, stand_in_settings(1))
    yield kubelet
    kubelet.forget(cluster.namespace)


def test_an_experiment_gets_one_job_owned_by_it(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    created = cluster.create(experiment("owned"))
    current = cluster.wait_for(
        "experiments",
        "owned",
        lambda e: (e or {}).get("status", {}).get("jobName"),
        what="the Job in status",
    )["status"]
    (job,) = jobs_of(cluster, "owned")
    assert job["metadata"]["name"] == "owned-g1"
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Experiment",
        "owned",
        created["metadata"]["uid"],
    )
    assert owner["controller"] is True
    assert owner["blockOwnerDeletion"] is True  # allowed by the chart's experiments/finalizers
    assert current["jobName"] == "owned-g1"
    assert current["observedGeneration"] == 1
    assert current["phase"] == c.Phase.PENDING
    assert (
        condition(cluster, "owned", c.ConditionType.JOB_CREATED)["reason"] == c.Reason.JOB_CREATED
    )


def test_a_job_creation_is_announced_with_an_event(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    cluster.create(experiment("announced"))
    (event, *_) = wait_until(
        lambda: events_for(cluster, "announced", c.Reason.JOB_CREATED), what="a JobCreated event"
    )
    assert event["type"] == "Normal"
    assert "announced-g1" in event["message"]


def test_a_finished_stand_in_run_succeeds_with_timings(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("quick"))
    final = wait_phase(cluster, "quick", c.Phase.SUCCEEDED)
    assert final["completionTime"] >= final["startTime"]
    assert final["duration"].endswith("s")
    assert condition(cluster, "quick", c.ConditionType.COMPLETE)["status"] == "True"


def test_an_experiment_without_plugin_sources_says_so_instead_of_claiming_a_sync(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("builtin-only"))
    wait_phase(cluster, "builtin-only", c.Phase.SUCCEEDED)
    synced = condition(cluster, "builtin-only", c.ConditionType.PLUGINS_SYNCED)
    assert synced["reason"] == c.Reason.NO_PLUGIN_SOURCES
    assert "S3" not in synced["message"]


def test_restarting_the_operator_mid_run_creates_no_second_job(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("restarted"))
    wait_phase(cluster, "restarted", c.Phase.RUNNING)
    job_uid = jobs_of(cluster, "restarted")[0]["metadata"]["uid"]
    operator_process.restart()
    # The new process resumes the Experiment (kopf's resume handler) and mirrors the pod again.
    wait_until(
        lambda: "Handler 'experiment_changed' succeeded" in operator_process.log_since_start,
        what="the resume handler",
    )
    stand_in.kill("restarted-g1", cluster.namespace, reason="Error")
    wait_phase(cluster, "restarted", c.Phase.FAILED)
    assert [j["metadata"]["uid"] for j in jobs_of(cluster, "restarted")] == [job_uid]


def test_a_runner_killed_for_memory_fails_with_oom_killed(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("oom"))
    wait_phase(cluster, "oom", c.Phase.RUNNING)
    stand_in.kill("oom-g1", cluster.namespace, reason="OOMKilled")
    final = wait_phase(cluster, "oom", c.Phase.FAILED)
    failed = condition(cluster, "oom", c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.OOM_KILLED
    assert "OOMKilled" in final["message"]
    (warning, *_) = wait_until(lambda: events_for(cluster, "oom", c.Reason.OOM_KILLED))
    assert warning["type"] == "Warning"


def test_a_suspended_experiment_runs_only_once_resumed(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("held", suspend=True, queueName="team-a"))
    wait_phase(cluster, "held", c.Phase.SUSPENDED)
    (job,) = jobs_of(cluster, "held")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][c.LABEL_KUEUE_QUEUE] == "team-a"
    assert cluster.list("pods") == []  # the Job controller starts nothing while suspended
    cluster.patch("experiments", "held", {"spec": {"suspend": False}})
    wait_phase(cluster, "held", c.Phase.SUCCEEDED)
    assert [j["metadata"]["name"] for j in jobs_of(cluster, "held")] == ["held-g1"]
    resumed = condition(cluster, "held", c.ConditionType.SUSPENDED)
    assert resumed["reason"] == c.Reason.RESUMED


def test_suspending_a_running_experiment_stops_its_pod(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("paused"))
    wait_phase(cluster, "paused", c.Phase.RUNNING)
    cluster.patch("experiments", "paused", {"spec": {"suspend": True}})
    wait_phase(cluster, "paused", c.Phase.SUSPENDED)
    assert jobs_of(cluster, "paused")[0]["spec"]["suspend"] is True
    # The Job controller deletes the Pod; the kubelet stops its process.
    cluster.wait_for(
        "jobs",
        "paused-g1",
        lambda job: (
            not (job or {}).get("status", {}).get("active")
            and not stand_in.main_running("paused-g1", cluster.namespace)
        ),
        what="the pod to stop",
    )


def test_a_job_deleted_under_a_running_experiment_fails_it_with_job_missing(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("orphan"))
    wait_phase(cluster, "orphan", c.Phase.RUNNING)
    cluster.delete("jobs", "orphan-g1")
    final = wait_phase(cluster, "orphan", c.Phase.FAILED)
    assert "orphan-g1" in final["message"]
    failed = condition(cluster, "orphan", c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.JOB_MISSING


def test_deleting_an_experiment_is_not_blocked_and_the_garbage_collector_removes_its_job(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("doomed"))
    wait_phase(cluster, "doomed", c.Phase.RUNNING)
    assert not cluster.get("experiments", "doomed")["metadata"].get("finalizers")
    cluster.delete("experiments", "doomed")
    cluster.wait_for("experiments", "doomed", lambda e: e is None, what="the deletion")
    # The real garbage collector follows the owner references: Job, then its Pod.
    cluster.wait_for("jobs", "doomed-g1", lambda j: j is None, what="the Job to be collected")
    wait_until(
        lambda: not cluster.list("pods", labelSelector="job-name=doomed-g1"),
        what="the Pod to be collected",
    )
    assert not stand_in.main_running("doomed-g1", cluster.namespace)
    assert "Traceback" not in operator_process.log


def test_a_missing_secret_stalls_the_experiment_with_secret_not_found(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(
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
        lambda: maybe_condition(cluster, "nosecret", c.ConditionType.STALLED),
        what="a Stalled condition",
    )
    assert stalled["reason"] == c.Reason.SECRET_NOT_FOUND
    current = status(cluster, "nosecret")
    assert current["phase"] == c.Phase.PENDING
    assert "absent-creds" in current["message"]


def test_an_unrunnable_spec_is_rejected_with_invalid_spec_and_no_job(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    cluster.create(experiment("local", plugins={"sources": ["./plugins"]}))
    final = wait_phase(cluster, "local", c.Phase.FAILED)
    accepted = condition(cluster, "local", c.ConditionType.ACCEPTED)
    assert accepted["reason"] == c.Reason.INVALID_SPEC
    assert "./plugins" in final["message"]
    (warning, *_) = wait_until(lambda: events_for(cluster, "local", c.Reason.INVALID_SPEC))
    assert warning["type"] == "Warning"
    assert jobs_of(cluster, "local") == []


def test_an_integer_quantity_reaches_the_job_as_the_api_server_accepts_it(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    cluster.create(
        experiment("sized", runner={"resources": {"limits": {"cpu": 2, "memory": "1Gi"}}})
    )
    cluster.wait_for("jobs", "sized-g1", bool, what="the Job")
    (container,) = cluster.get("jobs", "sized-g1")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}


def test_a_missing_runner_service_account_is_named_with_how_to_create_it(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    cluster.create(experiment("nobody", serviceAccountName="absent-runner"))
    stalled = wait_until(
        lambda: maybe_condition(cluster, "nobody", c.ConditionType.STALLED),
        timeout=60,
        what="a Stalled condition",
    )
    assert stalled["reason"] == c.Reason.SERVICE_ACCOUNT_NOT_FOUND
    assert 'serviceaccount "absent-runner" not found' in stalled["message"]
    assert "kubectl create serviceaccount absent-runner" in stalled["message"]
    current = status(cluster, "nobody")
    assert current["phase"] == c.Phase.PENDING
    assert current["message"] == stalled["message"]
    (warning, *_) = wait_until(
        lambda: events_for(cluster, "nobody", c.Reason.SERVICE_ACCOUNT_NOT_FOUND)
    )
    assert warning["type"] == "Warning"


def test_the_runners_status_fields_survive_the_operators_writes(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("shared"))
    wait_phase(cluster, "shared", c.Phase.RUNNING)
    runner_fields = {
        "tasks": [{"name": "a", "task": "p.m.f", "state": "Completed"}],
        "tasksDone": 1,
        "tasksTotal": 2,
        "results": {"accuracy": 0.9},
        "progress": "1/2",
    }
    cluster.patch("experiments", "shared", {"status": runner_fields}, subresource="status")
    stand_in.kill("shared-g1", cluster.namespace, reason="OOMKilled")
    final = wait_phase(cluster, "shared", c.Phase.FAILED)
    assert {key: final[key] for key in runner_fields} == runner_fields


def test_the_phase_gauge_counts_experiments(
    cluster: Cluster, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    port = free_port()
    process = OperatorProcess(
        chart_rbac, {"DIOPTRA_METRICS_PORT": str(port)}, tmp_path / "operator.log"
    ).start()
    try:
        cluster.create(experiment("counted", suspend=True))
        wait_phase(cluster, "counted", c.Phase.SUSPENDED)

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        wait_until(lambda: 'dioptra_experiments{phase="Suspended"} 1.0' in scrape(), what="gauge")
    finally:
        process.stop()


def test_s3_credentials_reach_the_sync_only_through_the_secret(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIDEXAMPLE").decode()},
        }
    )
    cluster.create(
        experiment(
            "secretive",
            plugins={"sources": ["s3://plugins/x"], "credentialsSecretRef": {"name": "creds"}},
        )
    )
    job = cluster.wait_for("jobs", "secretive-g1", bool, what="the Job")
    assert "AKIDEXAMPLE" not in str(job)
    assert "AKIDEXAMPLE" not in str(cluster.get("experiments", "secretive"))


def test_changing_parameters_replaces_the_running_job_with_one_for_the_new_generation(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("tuned", parameters={"epsilon": 0.1}))
    wait_phase(cluster, "tuned", c.Phase.RUNNING)
    cluster.patch("experiments", "tuned", {"spec": {"parameters": {"epsilon": 0.2}}})
    current = cluster.wait_for(
        "experiments",
        "tuned",
        lambda e: (e or {}).get("status", {}).get("jobName") == "tuned-g2",
        what="the new generation's Job",
    )["status"]
    assert current["observedGeneration"] == 2
    cluster.wait_for("jobs", "tuned-g1", lambda j: j is None, what="the old Job deleted")
    assert [j["metadata"]["name"] for j in jobs_of(cluster, "tuned")] == ["tuned-g2"]
    wait_phase(cluster, "tuned", c.Phase.RUNNING)


def test_an_api_error_while_creating_the_job_is_retried(
    cluster: Cluster, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    proxy = ApiProxy(cluster.plane).start()
    proxy.fail("POST", rf"/namespaces/{cluster.namespace}/jobs$", status=503, times=1)
    process = OperatorProcess(chart_rbac, {}, tmp_path / "operator.log", proxy=proxy).start()
    try:
        cluster.create(experiment("flaky"))
        cluster.wait_for(
            "experiments",
            "flaky",
            lambda e: (e or {}).get("status", {}).get("jobName"),
            what="the retry",
        )
        assert [j["metadata"]["name"] for j in jobs_of(cluster, "flaky")] == ["flaky-g1"]
        posts = [s.status for s in proxy.seen if s.method == "POST" and s.path.endswith("/jobs")]
        assert posts == [503, 201]
        assert "Handler 'experiment_changed' failed temporarily" in process.log
        assert "Traceback" not in process.log
    finally:
        process.stop()
        proxy.stop()


def test_a_finished_run_whose_job_expired_is_not_run_again_after_a_restart(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("expired", ttlSecondsAfterFinished=0))
    wait_phase(cluster, "expired", c.Phase.SUCCEEDED)
    # The real TTL-after-finished controller deletes the finished Job.
    cluster.wait_for("jobs", "expired-g1", lambda j: j is None, what="the TTL controller")
    operator_process.restart()
    wait_until(
        lambda: "Handler 'experiment_changed' succeeded" in operator_process.log_since_start,
        what="the resume handler",
    )
    assert jobs_of(cluster, "expired") == []
    final = status(cluster, "expired")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert condition(cluster, "expired", c.ConditionType.COMPLETE)["status"] == "True"


def test_a_run_past_its_deadline_fails_with_deadline_exceeded(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("late", activeDeadlineSeconds=1))
    wait_phase(cluster, "late", c.Phase.FAILED)
    assert (
        condition(cluster, "late", c.ConditionType.FAILED)["reason"] == c.Reason.DEADLINE_EXCEEDED
    )


def test_the_liveness_endpoint_answers_as_the_chart_probes_it(
    cluster: Cluster, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    port = free_port()
    args = [
        "--standalone",
        f"--namespace={cluster.namespace}",
        f"--liveness=http://127.0.0.1:{port}/healthz",
    ]
    process = OperatorProcess(chart_rbac, {}, tmp_path / "operator.log", args=args).start()

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


def test_a_refused_job_shows_on_the_experiment_with_the_servers_reason(
    cluster: Cluster, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    # Without `update` on experiments/finalizers, OwnerReferencesPermissionEnforcement refuses
    # a Job that blocks its owner's deletion: what the chart's rule is for.
    role = cluster.get("roles", chart_rbac.release)
    role["rules"] = [r for r in role["rules"] if "experiments/finalizers" not in r["resources"]]
    cluster.request("PUT", cluster.path("roles", name=chart_rbac.release), role)
    process = OperatorProcess(chart_rbac, {}, tmp_path / "operator.log").start()
    try:
        cluster.create(experiment("refused"))
        refused = wait_until(
            lambda: (
                (cond := maybe_condition(cluster, "refused", c.ConditionType.JOB_CREATED))
                and cond["reason"] == c.Reason.API_REFUSED
                and cond
            ),
            what="the refusal on the Experiment",
        )
        assert "blockOwnerDeletion" in refused["message"]
        assert status(cluster, "refused")["message"] == refused["message"]
        (warning, *_) = wait_until(lambda: events_for(cluster, "refused", c.Reason.API_REFUSED))
        assert warning["type"] == "Warning"
        # kopf's own report of the failed handler reaches the Experiment as an Event too.
        (failure, *_) = wait_until(
            lambda: [
                e
                for e in cluster.events_for("refused", kind=c.KIND)
                if "failed temporarily" in e["message"]
            ],
            what="kopf's handler failure as an Event",
        )
        assert failure["type"] == "Error"  # kopf names the type after the log line's level
        assert jobs_of(cluster, "refused") == []
    finally:
        process.stop()


@pytest.mark.parametrize(
    "name, sweep",
    [("cached", None), ("cached-sweep", {"grid": {"epsilon": [0.1, 0.2]}, "maxConcurrent": 2})],
)
def test_caching_without_an_artifact_store_runs_with_a_warning_that_names_the_fix(
    cluster: Cluster,
    operator_process: OperatorProcess,
    quick_stand_in: StandInKubelet,
    name: str,
    sweep: dict[str, Any] | None,
) -> None:
    spec: dict[str, Any] = {"cache": True, **({"sweep": sweep} if sweep else {})}
    cluster.create(experiment(name, **spec))
    accepted = wait_until(
        lambda: (
            (cond := maybe_condition(cluster, name, c.ConditionType.ACCEPTED))
            and cond["reason"] == c.Reason.CACHE_NOT_KEPT
            and cond
        ),
        what="the cache warning on the Experiment",
    )
    assert accepted["status"] == "True"
    assert "spec.artifacts.store" in accepted["message"]
    (warning, *_) = wait_until(lambda: events_for(cluster, name, c.Reason.CACHE_NOT_KEPT))
    assert (warning["type"], warning["message"]) == ("Warning", accepted["message"])
    wait_phase(cluster, name, c.Phase.SUCCEEDED)  # the run itself goes on
    assert len(events_for(cluster, name, c.Reason.CACHE_NOT_KEPT)) == 1


SWEEP = {"grid": {"epsilon": [0.1, 0.2]}, "maxConcurrent": 2}


def assert_unstalled_and_succeeded(api: Cluster, name: str) -> None:
    """Once what it waited for exists, the stalled sweep runs: Stalled clears, both succeed."""
    final = wait_phase(api, name, c.Phase.SUCCEEDED, timeout=60)
    cleared = condition(api, name, c.ConditionType.STALLED)
    assert (cleared["status"], cleared["reason"]) == ("False", c.Reason.CONTAINERS_STARTED)
    assert final["message"] == "All 2 sweep points succeeded."


def test_a_sweep_without_its_service_account_is_stalled_until_the_account_exists(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    cluster.create(experiment("sweep-nobody", serviceAccountName="late-runner", sweep=SWEEP))
    stalled = wait_until(
        lambda: maybe_condition(cluster, "sweep-nobody", c.ConditionType.STALLED),
        timeout=60,
        what="a Stalled condition on the sweep",
    )
    assert (stalled["status"], stalled["reason"]) == ("True", c.Reason.SERVICE_ACCOUNT_NOT_FOUND)
    assert "kubectl create serviceaccount late-runner" in stalled["message"]
    current = status(cluster, "sweep-nobody")
    assert (current["phase"], current["message"]) == (c.Phase.PENDING, stalled["message"])
    (warning, *_) = wait_until(
        lambda: events_for(cluster, "sweep-nobody", c.Reason.SERVICE_ACCOUNT_NOT_FOUND)
    )
    assert warning["type"] == "Warning"

    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "late-runner"}}
    cluster.create(account)
    assert_unstalled_and_succeeded(cluster, "sweep-nobody")


def test_a_sweep_whose_points_need_a_missing_secret_is_stalled_naming_the_point(
    cluster: Cluster, operator_process: OperatorProcess, quick_stand_in: StandInKubelet
) -> None:
    needs_secret = {
        "env": [
            {
                "name": "TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "lab-token", "key": "token"}},
            }
        ]
    }
    cluster.create(experiment("sweep-secret", runner=needs_secret, sweep=SWEEP))
    stalled = wait_until(
        lambda: (
            (cond := maybe_condition(cluster, "sweep-secret", c.ConditionType.STALLED))
            and cond["status"] == "True"
            and cond
        ),
        timeout=60,
        what="the sweep Stalled on its Secret",
    )
    assert stalled["reason"] == c.Reason.SECRET_NOT_FOUND
    assert "point 0: " in stalled["message"] and "lab-token" in stalled["message"]
    assert status(cluster, "sweep-secret")["phase"] == c.Phase.PENDING
    (warning, *_) = wait_until(
        lambda: events_for(cluster, "sweep-secret", c.Reason.SECRET_NOT_FOUND)
    )
    assert warning["type"] == "Warning"

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "lab-token"},
        "stringData": {"token": "not-a-real-token"},
    }
    cluster.create(secret)
    assert_unstalled_and_succeeded(cluster, "sweep-secret")


def test_a_script_too_large_for_the_runners_environment_fails_with_invalid_spec(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    # The API server takes it (the CRD allows a 256 KiB script); no container could start.
    script = {"script": "from dioptra.flow import Flow\n" + "#" * (200 * 1024), "flow": "flow"}
    cluster.create(experiment("huge-script", entryPoint=script))
    final = wait_phase(cluster, "huge-script", c.Phase.FAILED)
    accepted = condition(cluster, "huge-script", c.ConditionType.ACCEPTED)
    assert (accepted["status"], accepted["reason"]) == ("False", c.Reason.INVALID_SPEC)
    assert "largest: spec.entryPoint 200 KiB" in final["message"]
    assert "spec.entryPoint.configMapRef" in final["message"]
    assert jobs_of(cluster, "huge-script") == []


@pytest.mark.parametrize("sweep", [None, SWEEP], ids=["plain", "sweep"])
def test_restarting_the_operator_leaves_a_job_a_queue_admitted_running(
    cluster: Cluster,
    operator_process: OperatorProcess,
    stand_in: StandInKubelet,
    sweep: dict[str, Any] | None,
) -> None:
    # Kueue admits a Job created suspended by setting its `suspend` to false. The spec still
    # says `suspend: true` (the user's "queue it"): the operator's resume after a restart must
    # not suspend the admitted Job again, which would stop its Pods.
    spec: dict[str, Any] = {"suspend": True, "queueName": "team-a"}
    if sweep:
        spec["sweep"] = sweep
    cluster.create(experiment("admitted", **spec))
    wait_phase(cluster, "admitted", c.Phase.SUSPENDED)
    cluster.patch("jobs", "admitted-g1", {"spec": {"suspend": False}})  # what Kueue does
    wait_phase(cluster, "admitted", c.Phase.RUNNING)
    operator_process.restart()
    wait_until(
        lambda: "Handler 'experiment_changed' succeeded" in operator_process.log_since_start,
        what="the resume handler",
    )
    assert cluster.get("jobs", "admitted-g1")["spec"]["suspend"] is False
    assert status(cluster, "admitted")["phase"] == c.Phase.RUNNING
