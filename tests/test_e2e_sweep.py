"""End to end: a sweep in the cluster, one Job per point, at most `maxConcurrent` at once.

The real operator (console script, kopf) on the real control plane, with the stand-in kubelet.
The tests about scheduling run the stand-in runner (a process that sleeps, then exits); the
last ones run the real runner with a real plugin sync from a moto S3, to see each point's
headline results reach `status.sweep.points`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.sweep import expand_sweep
from dioptra_operator.job_builder import point_job_name
from support.cluster import ChartRbac, Cluster, OperatorProcess, wait_until
from support.kubelet import StandInKubelet, stand_in_settings
from support.s3 import FAKE_KEY, S3Server
from test_e2e_experiment import credentials_secret, example, push_builtins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GRID = {"epsilon": [0.05, 0.1, 0.2]}


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


def expected_names(name: str, sweep: dict[str, Any], generation: int = 1) -> set[str]:
    return {point_job_name(name, generation, p.key) for p in expand_sweep(sweep, {})}


def status(api: Cluster, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def point_jobs(api: Cluster, name: str) -> list[dict[str, Any]]:
    return api.list("jobs", labelSelector=f"{c.LABEL_EXPERIMENT}={name}")


def finished(job: dict[str, Any]) -> bool:
    return any(
        cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
        for cond in (job.get("status") or {}).get("conditions") or []
    )


def wait_terminal(api: Cluster, name: str, timeout: float = 60) -> dict[str, Any]:
    found = api.wait_for(
        "experiments",
        name,
        lambda e: ((e or {}).get("status") or {}).get("phase") in c.Phase.TERMINAL,
        timeout=timeout,
        what=f"{name} to finish",
    )
    return dict(found["status"])


class JobWatcher:
    """Watches the point Jobs in the background: the most ever unfinished, every uid ever seen.

    A watch sees every change the API server makes, so no state between two looks is missed.
    """

    def __init__(self, api: Cluster, name: str) -> None:
        self.api = api
        self.name = name
        self.most_unfinished = 0
        self.uids: dict[str, set[str]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._version = api.request("GET", api.path("jobs"))["metadata"]["resourceVersion"]

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(70)

    def _watch(self) -> None:
        selector = f"{c.LABEL_EXPERIMENT}={self.name}"
        while not self._stop.is_set():
            for event in self.api.plane.watch(
                self.api.path("jobs"),
                resource_version=self._version,
                timeout_seconds=2,
                stop=self._stop.is_set,
                labelSelector=selector,
            ):
                job = event["object"]
                self._version = job["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = job["metadata"]["name"]
                if event["type"] == "DELETED":
                    self._jobs.pop(name, None)
                else:
                    self._jobs[name] = job
                    self.uids.setdefault(name, set()).add(job["metadata"]["uid"])
                unfinished = sum(1 for j in self._jobs.values() if not finished(j))
                self.most_unfinished = max(self.most_unfinished, unfinished)


@pytest.fixture()
def stand_in(cluster: Cluster, kubelet: StandInKubelet) -> Iterator[StandInKubelet]:
    """Main containers of this namespace succeed after a second and a half."""
    kubelet.configure(cluster.namespace, stand_in_settings(1.5))
    yield kubelet
    kubelet.forget(cluster.namespace)


def test_a_sweep_never_has_more_point_jobs_unfinished_than_max_concurrent(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 2}
    with JobWatcher(cluster, "capped") as watcher:
        cluster.create(sweep_experiment("capped", sweep))
        wait_terminal(cluster, "capped")
    assert watcher.most_unfinished == 2


def test_every_point_gets_one_job_with_a_deterministic_name(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 2}
    cluster.create(sweep_experiment("named", sweep))
    wait_terminal(cluster, "named")
    jobs = point_jobs(cluster, "named")
    assert {job["metadata"]["name"] for job in jobs} == expected_names("named", sweep)


def test_each_point_job_runs_its_own_parameters_without_the_sweep(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    import json

    sweep = {"grid": GRID, "maxConcurrent": 3}
    cluster.create(sweep_experiment("snapshots", sweep))
    wait_until(lambda: len(point_jobs(cluster, "snapshots")) == 3, what="three point Jobs")
    seen = []
    for job in point_jobs(cluster, "snapshots"):
        (main,) = job["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in main["env"]}
        snapshot = json.loads(env["DIOPTRA_EXPERIMENT"])
        assert "sweep" not in snapshot["spec"]
        assert env[c.SWEEP_POINT_ENV] == job["metadata"]["labels"][c.LABEL_SWEEP_POINT]
        seen.append(snapshot["spec"]["parameters"])
    assert sorted(seen, key=lambda p: p["epsilon"]) == [
        {"epsilon": epsilon, "seed": 7} for epsilon in GRID["epsilon"]
    ]


def test_a_sweep_whose_points_all_succeed_succeeds_with_counts_and_progress(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("counted", {"grid": GRID, "maxConcurrent": 2}))
    final = wait_terminal(cluster, "counted")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert final["sweep"]["counts"] == {"Pending": 0, "Running": 0, "Succeeded": 3, "Failed": 0}
    assert final["progress"] == "3/3"
    assert [row["values"] for row in final["sweep"]["points"]] == [
        {"epsilon": epsilon} for epsilon in GRID["epsilon"]
    ]


def test_a_sweep_with_a_failed_point_fails_once_every_point_finished(
    cluster: Cluster, operator_process: OperatorProcess, kubelet: StandInKubelet
) -> None:
    kubelet.configure(cluster.namespace, stand_in_settings(0.5, STAND_IN_EXIT="3"))
    cluster.create(sweep_experiment("failing", {"grid": GRID, "maxConcurrent": 2}))
    final = wait_terminal(cluster, "failing")
    assert final["phase"] == c.Phase.FAILED
    assert final["sweep"]["counts"]["Failed"] == 3
    assert final["progress"] == "3/3"
    assert final["message"].startswith("3 of 3 sweep points failed")


def test_restarting_the_operator_mid_sweep_creates_no_second_job(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 1}
    with JobWatcher(cluster, "restarted") as watcher:
        cluster.create(sweep_experiment("restarted", sweep))
        wait_until(lambda: point_jobs(cluster, "restarted"), what="the first point Job")
        operator_process.restart()
        final = wait_terminal(cluster, "restarted")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert set(watcher.uids) == expected_names("restarted", sweep)
    assert all(len(uids) == 1 for uids in watcher.uids.values()), watcher.uids
    assert watcher.most_unfinished == 1


def test_a_sweep_too_large_to_run_fails_with_invalid_spec(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    # The schema allows 1,024 values per parameter; the product of 40 x 30 passes the schema
    # but not the operator's limit on points.
    grid = {"epsilon": list(range(40)), "seed": list(range(30))}
    cluster.create(sweep_experiment("bad-sweep", {"grid": grid}))
    final = wait_terminal(cluster, "bad-sweep", timeout=15)
    assert final["phase"] == c.Phase.FAILED
    accepted = next(cond for cond in final["conditions"] if cond["type"] == "Accepted")
    assert accepted["reason"] == c.Reason.INVALID_SPEC
    assert "1200 points" in accepted["message"]
    assert point_jobs(cluster, "bad-sweep") == []


def test_a_suspended_sweep_holds_its_point_jobs_until_resumed(
    cluster: Cluster, operator_process: OperatorProcess, stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("held", {"grid": GRID, "maxConcurrent": 2}, suspend=True))
    cluster.wait_for(
        "experiments",
        "held",
        lambda e: ((e or {}).get("status") or {}).get("phase") == c.Phase.SUSPENDED,
        what="the sweep to be suspended",
    )
    jobs = point_jobs(cluster, "held")
    assert len(jobs) == 2 and all(job["spec"]["suspend"] for job in jobs)
    cluster.patch("experiments", "held", {"spec": {"suspend": False}})
    final = wait_terminal(cluster, "held")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert {job["metadata"]["name"] for job in point_jobs(cluster, "held")} == expected_names(
        "held", {"grid": GRID}
    )


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


def job_names(api: Cluster, name: str) -> set[str]:
    return {job["metadata"]["name"] for job in point_jobs(api, name)}


def test_changing_a_running_sweeps_spec_replaces_its_unfinished_point_jobs(
    cluster: Cluster, operator_process: OperatorProcess, slow_stand_in: StandInKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 1}
    cluster.create(sweep_experiment("changed", sweep))
    first = sorted(expected_names("changed", sweep))
    wait_until(lambda: job_names(cluster, "changed") & set(first), what="a generation-1 Job")
    cluster.patch("experiments", "changed", {"spec": {"parameters": {"seed": 8}}})
    wanted = expected_names("changed", sweep, generation=2)
    wait_until(
        lambda: (names := job_names(cluster, "changed")) and names <= wanted,
        what=f"only generation-2 point Jobs (now: {job_names(cluster, 'changed')})",
    )
    assert len(job_names(cluster, "changed")) == 1


def test_dropping_the_sweep_replaces_the_point_jobs_with_one_plain_job(
    cluster: Cluster, operator_process: OperatorProcess, slow_stand_in: StandInKubelet
) -> None:
    cluster.create(sweep_experiment("unswept", {"grid": GRID, "maxConcurrent": 2}))
    wait_until(lambda: len(point_jobs(cluster, "unswept")) == 2, what="two point Jobs")
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
