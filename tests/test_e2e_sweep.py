"""End to end: a sweep in the cluster is one Indexed Job, one completion index per point.

The real operator (console script, kopf) on the real control plane, with the stand-in kubelet:
the real Job controller paces the points (`parallelism: maxConcurrent`) and reports which
indexes completed or failed, which the operator turns into per-point status. The tests about
scheduling run the stand-in runner (a process that sleeps, then exits; with
STAND_IN_EXIT_INDEXES only the named points fail); the last ones run the real runner with a
real plugin sync from a moto S3, to see each point's headline results reach
`status.sweep.points`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.sweep import cluster_points
from support.cluster import ChartRbac, Cluster, OperatorProcess, wait_until
from support.kubelet import NamespaceSettings, StandInKubelet, stand_in_settings
from support.s3 import FAKE_KEY, S3Server
from test_e2e_experiment import credentials_secret, example, push_builtins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GRID = {"epsilon": [0.05, 0.1, 0.2]}
P = c.Phase
PYTHON = sys.executable


def sweep_experiment(name: str, sweep: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name},
        "spec": {
            "entryPoint": {"module": "acme.flows:flow"},
            "parameters": {"epsilon": 0.0, "seed": 7},
            "sweep": sweep,
            **spec,
        },
    }


def status(api: Cluster, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def jobs_of(api: Cluster, name: str) -> list[dict[str, Any]]:
    return api.list("jobs", labelSelector=f"{c.LABEL_EXPERIMENT}={name}")


def job_names(api: Cluster, name: str) -> set[str]:
    return {job["metadata"]["name"] for job in jobs_of(api, name)}


def wait_terminal(api: Cluster, name: str, timeout: float = 60) -> dict[str, Any]:
    found = api.wait_for(
        "experiments",
        name,
        lambda e: ((e or {}).get("status") or {}).get("phase") in P.TERMINAL,
        timeout=timeout,
        what=f"{name} to finish",
    )
    return dict(found["status"])


def wait_phase(api: Cluster, name: str, phase: str) -> dict[str, Any]:
    return dict(
        api.wait_for(
            "experiments",
            name,
            lambda e: ((e or {}).get("status") or {}).get("phase") == phase,
            what=f"{name} to be {phase}",
        )["status"]
    )


class Watcher:
    """Watches a kind (jobs or pods) of one Experiment in the background: every object ever
    seen (name -> uids) and the most that were ever unfinished at once.

    A watch sees every change the API server makes, so no state between two looks is missed.
    """

    def __init__(self, api: Cluster, ref: str, name: str) -> None:
        self.api = api
        self.ref = ref
        self.name = name
        self.most_unfinished = 0
        self.uids: dict[str, set[str]] = {}
        self._objects: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._version = api.request("GET", api.path(ref))["metadata"]["resourceVersion"]

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(70)

    def _unfinished(self, obj: dict[str, Any]) -> bool:
        if self.ref == "pods":
            return (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        return not any(
            cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
            for cond in (obj.get("status") or {}).get("conditions") or []
        )

    def _watch(self) -> None:
        selector = f"{c.LABEL_EXPERIMENT}={self.name}"
        while not self._stop.is_set():
            for event in self.api.plane.watch(
                self.api.path(self.ref),
                resource_version=self._version,
                timeout_seconds=2,
                stop=self._stop.is_set,
                labelSelector=selector,
            ):
                obj = event["object"]
                self._version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if event["type"] == "DELETED":
                    self._objects.pop(name, None)
                else:
                    self._objects[name] = obj
                    self.uids.setdefault(name, set()).add(obj["metadata"]["uid"])
                unfinished = sum(1 for o in self._objects.values() if self._unfinished(o))
                self.most_unfinished = max(self.most_unfinished, unfinished)


@pytest.fixture()
def stand_in(cluster: Cluster, kubelet: StandInKubelet) -> Iterator[StandInKubelet]:
    """Main containers of this namespace succeed after a second and a half."""
    kubelet.configure(cluster.namespace, stand_in_settings(1.5))
    yield kubelet
    kubelet.forget(cluster.namespace)


def test_a_sweep_runs_as_one_indexed_job_with_a_completion_per_point(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("indexed", {"grid": GRID, "maxConcurrent": 2}))
    final = wait_terminal(cluster, "indexed")
    (job,) = jobs_of(cluster, "indexed")
    assert job["metadata"]["name"] == final["jobName"] == "indexed-g1"
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 3)
    assert job["status"]["completedIndexes"] == "0-2"
    assert final["phase"] == P.SUCCEEDED and final["progress"] == "3/3"
    assert final["sweep"]["counts"] == {"Pending": 0, "Running": 0, "Succeeded": 3, "Failed": 0}
    assert [row["values"] for row in final["sweep"]["points"]] == [
        {"epsilon": epsilon} for epsilon in GRID["epsilon"]
    ]
    assert {key: entry["jobPhase"] for key, entry in final["sweepPoints"].items()} == {
        point.key: P.SUCCEEDED for point in cluster_points({"grid": GRID}, {})
    }


def test_max_concurrent_bounds_the_points_pods_running_at_once(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    with Watcher(cluster, "pods", "capped") as pods:
        cluster.create(sweep_experiment("capped", {"grid": GRID, "maxConcurrent": 2}))
        wait_terminal(cluster, "capped")
    assert len(pods.uids) == 3  # one Pod per point, none retried
    assert pods.most_unfinished == 2


# The runner's first step in a sweep's Pod, alone: the point its completion index names.
PRINT_POINT = (
    "import json, os; from dioptra_api.sweep import point_for_index; "
    "spec = json.loads(os.environ['DIOPTRA_EXPERIMENT'])['spec']; "
    "print(point_for_index(spec['sweep'], spec['parameters'], "
    "os.environ.get('JOB_COMPLETION_INDEX')).key)"
)


def test_each_pod_gets_its_completion_index_and_finds_its_point_from_it(
    cluster: Cluster, operator_process: OperatorProcess, kubelet: StandInKubelet
) -> None:
    kubelet.configure(
        cluster.namespace, NamespaceSettings(main_command=[PYTHON, "-c", PRINT_POINT])
    )
    cluster.create(sweep_experiment("by-index", {"grid": GRID, "maxConcurrent": 3}))
    wait_terminal(cluster, "by-index")
    pods = cluster.list("pods", labelSelector=f"{c.LABEL_EXPERIMENT}=by-index")
    logs = kubelet.logs_in(cluster.namespace)
    points = cluster_points({"grid": GRID}, {})
    found = {
        int(pod["metadata"]["labels"][c.LABEL_COMPLETION_INDEX]): logs[
            f"{pod['metadata']['name']}/{c.MAIN_CONTAINER}"
        ].strip()
        for pod in pods
    }
    assert found == {point.index: point.key for point in points}


def test_a_failing_point_fails_only_its_index_and_the_others_keep_their_results(
    cluster: Cluster, operator_process: OperatorProcess, kubelet: StandInKubelet
) -> None:
    kubelet.configure(
        cluster.namespace, stand_in_settings(0.5, STAND_IN_EXIT="3", STAND_IN_EXIT_INDEXES="1")
    )
    cluster.create(sweep_experiment("one-fails", {"grid": GRID, "maxConcurrent": 3}))
    final = wait_terminal(cluster, "one-fails")
    (job,) = jobs_of(cluster, "one-fails")
    assert (job["status"]["completedIndexes"], job["status"]["failedIndexes"]) == ("0,2", "1")
    assert final["phase"] == P.FAILED and final["progress"] == "3/3"
    assert final["sweep"]["counts"]["Succeeded"] == 2 and final["sweep"]["counts"]["Failed"] == 1
    failed = cluster_points({"grid": GRID}, {})[1]
    # The stand-in runner never reports: the failure is the operator's, from the point's Pod.
    assert final["sweepPoints"][failed.key]["jobMessage"] == (
        "The runner exited with an error: exit code 3"
    )
    assert final["message"] == (
        "1 of 3 sweep points failed; first: The runner exited with an error: exit code 3"
    )


def test_a_point_killed_before_its_runner_reported_fails_with_the_kill(
    cluster: Cluster, operator_process: OperatorProcess, kubelet: StandInKubelet
) -> None:
    kubelet.configure(cluster.namespace, stand_in_settings(30))
    cluster.create(sweep_experiment("killed", {"points": [{"epsilon": 0.3}], "maxConcurrent": 1}))
    wait_phase(cluster, "killed", P.RUNNING)
    kubelet.kill("killed-g1", cluster.namespace, reason="OOMKilled")
    final = wait_terminal(cluster, "killed")
    assert final["phase"] == P.FAILED
    (row,) = final["sweep"]["points"]
    assert row["phase"] == P.FAILED and row["message"] == c.MESSAGES[c.Reason.OOM_KILLED]


def test_restarting_the_operator_mid_sweep_creates_no_second_job(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    with Watcher(cluster, "jobs", "restarted") as jobs:
        cluster.create(sweep_experiment("restarted", {"grid": GRID, "maxConcurrent": 1}))
        wait_until(lambda: jobs_of(cluster, "restarted"), what="the sweep's Job")
        operator_process.restart()
        final = wait_terminal(cluster, "restarted")
    assert final["phase"] == P.SUCCEEDED
    assert {name: len(uids) for name, uids in jobs.uids.items()} == {"restarted-g1": 1}


def test_a_sweep_too_large_to_run_fails_with_invalid_spec(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    # The schema allows 1,024 values per parameter; the product of 40 x 30 passes the schema
    # but not the operator's limit on points.
    grid = {"epsilon": list(range(40)), "seed": list(range(30))}
    cluster.create(sweep_experiment("bad-sweep", {"grid": grid}))
    final = wait_terminal(cluster, "bad-sweep", timeout=15)
    assert final["phase"] == P.FAILED
    accepted = next(cond for cond in final["conditions"] if cond["type"] == "Accepted")
    assert accepted["reason"] == c.Reason.INVALID_SPEC
    assert "1200 points" in accepted["message"]
    assert jobs_of(cluster, "bad-sweep") == []


def test_a_suspended_sweep_holds_its_job_until_resumed(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    with Watcher(cluster, "jobs", "held") as jobs:
        cluster.create(sweep_experiment("held", {"grid": GRID, "maxConcurrent": 2}, suspend=True))
        wait_phase(cluster, "held", P.SUSPENDED)
        (job,) = jobs_of(cluster, "held")
        assert job["spec"]["suspend"] is True
        assert cluster.list("pods", labelSelector=f"{c.LABEL_EXPERIMENT}=held") == []
        cluster.patch("experiments", "held", {"spec": {"suspend": False}})
        final = wait_terminal(cluster, "held")
    assert final["phase"] == P.SUCCEEDED
    # Toggling suspend keeps the run: the same Job, resumed in place.
    assert {name: len(uids) for name, uids in jobs.uids.items()} == {"held-g1": 1}


def test_a_sweep_admitted_by_a_queue_runs_although_its_spec_says_suspend(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    # Kueue admits a suspended Job by setting its `suspend` to false; the operator must not
    # suspend it again on the Job's next event.
    cluster.create(sweep_experiment("queued", {"grid": GRID, "maxConcurrent": 3}, suspend=True))
    wait_phase(cluster, "queued", P.SUSPENDED)
    cluster.patch("jobs", "queued-g1", {"spec": {"suspend": False}})
    final = wait_terminal(cluster, "queued")
    assert final["phase"] == P.SUCCEEDED and final["progress"] == "3/3"


@pytest.mark.timeout(240)
def test_each_points_headline_results_appear_in_the_sweep_summary(
    cluster: Cluster,
    chart_rbac: ChartRbac,
    prefect_api_url: str,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    operator = OperatorProcess(
        chart_rbac, {"DIOPTRA_PREFECT_API_URL": prefect_api_url}, tmp_path / "operator.log"
    ).start()
    try:
        bucket = s3_server.new_bucket()
        push_builtins(s3_server, bucket)
        credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
        manifest = example("random-integer", bucket, s3_server.endpoint_url)
        manifest["spec"]["sweep"] = {"grid": {"seed": [1, 2]}, "maxConcurrent": 2}
        cluster.create(manifest)
        final = wait_terminal(cluster, "random-integer", timeout=200)
    finally:
        operator.stop()
    assert final["phase"] == c.Phase.SUCCEEDED, (final, kubelet.logs_in(cluster.namespace))
    rows = final["sweep"]["points"]
    assert [row["values"] for row in rows] == [{"seed": 1}, {"seed": 2}]
    assert all(row.get("results") for row in rows), rows
    assert [row["message"] for row in rows] == ["3 tasks completed"] * 2


@pytest.mark.timeout(240)
def test_point_runners_report_under_their_own_keys_and_not_the_top_level(
    cluster: Cluster,
    chart_rbac: ChartRbac,
    prefect_api_url: str,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    operator = OperatorProcess(
        chart_rbac, {"DIOPTRA_PREFECT_API_URL": prefect_api_url}, tmp_path / "operator.log"
    ).start()
    try:
        bucket = s3_server.new_bucket()
        push_builtins(s3_server, bucket)
        credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
        manifest = example("random-integer", bucket, s3_server.endpoint_url)
        manifest["spec"]["sweep"] = {"points": [{"high": 10}, {"high": 20}], "maxConcurrent": 2}
        cluster.create(manifest)
        final = wait_terminal(cluster, "random-integer", timeout=200)
    finally:
        operator.stop()
    keys = {row["key"] for row in final["sweep"]["points"]}
    assert set(final["sweepPoints"]) == keys
    for entry in final["sweepPoints"].values():
        assert entry["phase"] == c.Phase.SUCCEEDED
        assert entry["results"] and entry["pluginsSha256"]
        assert "tasks" not in entry
    assert "tasks" not in final and "results" not in final
    assert final["plugins"], "the synced plugin versions are recorded once, at the top"


@pytest.fixture()
def slow_stand_in(cluster: Cluster, kubelet: StandInKubelet) -> Iterator[StandInKubelet]:
    """Main containers run for 30 s (the tests change the spec meanwhile)."""
    kubelet.configure(cluster.namespace, stand_in_settings(30))
    yield kubelet
    kubelet.forget(cluster.namespace)


def test_changing_a_running_sweeps_spec_replaces_its_job(
    cluster: Cluster, operator_process: OperatorProcess, slow_stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("changed", {"grid": GRID, "maxConcurrent": 1}))
    wait_phase(cluster, "changed", P.RUNNING)
    cluster.patch("experiments", "changed", {"spec": {"parameters": {"seed": 8}}})
    wait_until(
        lambda: job_names(cluster, "changed") == {"changed-g2"},
        what=f"the generation-2 Job alone (now: {job_names(cluster, 'changed')})",
    )
    found = cluster.wait_for(
        "experiments",
        "changed",
        lambda e: ((e or {}).get("status") or {}).get("jobName") == "changed-g2",
        what="the new run in status",
    )["status"]
    assert found["sweep"]["generation"] == 2
    assert all(entry.get("job") == "changed-g2" for entry in found.get("sweepPoints", {}).values())


def test_raising_a_running_sweeps_max_concurrent_paces_the_same_job_faster(
    cluster: Cluster, operator_process: OperatorProcess, slow_stand_in: StandInKubelet
) -> None:
    # maxConcurrent is the Job's `parallelism`, which Kubernetes lets change in place: the run
    # goes on, the points already running keep running.
    with Watcher(cluster, "pods", "paced") as pods:
        cluster.create(sweep_experiment("paced", {"grid": GRID, "maxConcurrent": 1}))
        wait_phase(cluster, "paced", P.RUNNING)
        (before,) = jobs_of(cluster, "paced")
        cluster.patch("experiments", "paced", {"spec": {"sweep": {"maxConcurrent": 3}}})
        wait_until(
            lambda: pods.most_unfinished == 3, timeout=30, what="three points running at once"
        )
    (after,) = jobs_of(cluster, "paced")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert (before["spec"]["parallelism"], after["spec"]["parallelism"]) == (1, 3)
    assert len(pods.uids) == 3  # one Pod per point: the first one was never replaced
    found = cluster.wait_for(
        "experiments",
        "paced",
        lambda e: ((e or {}).get("status") or {}).get("observedGeneration") == 2,
        what="generation 2 observed",
    )["status"]
    assert (found["jobName"], found["sweep"]["generation"]) == ("paced-g1", 1)


def test_dropping_the_sweep_replaces_its_job_with_one_plain_job(
    cluster: Cluster, operator_process: OperatorProcess, slow_stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("unswept", {"grid": GRID, "maxConcurrent": 2}))
    wait_phase(cluster, "unswept", P.RUNNING)
    cluster.patch("experiments", "unswept", {"spec": {"sweep": None}})
    wait_until(
        lambda: job_names(cluster, "unswept") == {"unswept-g2"},
        what=f"the plain Job alone (now: {job_names(cluster, 'unswept')})",
    )
    final = cluster.wait_for(
        "experiments",
        "unswept",
        lambda e: ((e or {}).get("status") or {}).get("jobName") == "unswept-g2",
        what="the plain Job in status",
    )["status"]
    assert "sweep" not in final and "sweepPoints" not in final
    assert final["observedGeneration"] == 2
