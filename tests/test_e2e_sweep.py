"""End to end: a sweep in the cluster, one Job per point, at most `maxConcurrent` at once.

The real operator (console script, kopf) against the API emulator and the test kubelet. The
tests about scheduling run the stand-in runner (a process that sleeps, then exits); the last
one runs the real runner with a real plugin sync from a moto S3, to see each point's headline
results reach `status.sweep.points`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dioptra_operator import constants as c
from dioptra_operator.job_builder import point_job_name
from dioptra_runner.sweep import expand_sweep
from support.k8s_emulator import K8sApi, wait_until
from support.kubelet import OperatorProcess, TestKubelet, stand_in_kubelet
from support.s3 import FAKE_KEY, S3Server
from test_e2e_experiment import credentials_secret, example, push_builtins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GRID = {"epsilon": [0.05, 0.1, 0.2]}


def sweep_experiment(name: str, sweep: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "entryPoint": {"module": "acme.flows:flow"},
            "parameters": {"epsilon": 0.0, "seed": 7},
            "sweep": sweep,
            **spec,
        },
    }


def expected_names(name: str, sweep: dict[str, Any], generation: int = 1) -> set[str]:
    return {point_job_name(name, generation, p.key) for p in expand_sweep(sweep, {})}


def status(api: K8sApi, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def point_jobs(api: K8sApi, name: str) -> list[dict[str, Any]]:
    return [
        job
        for job in api.list("jobs", "default")
        if (job["metadata"].get("labels") or {}).get(c.LABEL_EXPERIMENT) == name
    ]


def finished(job: dict[str, Any]) -> bool:
    return any(
        cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
        for cond in (job.get("status") or {}).get("conditions") or []
    )


def wait_terminal(api: K8sApi, name: str, timeout: float = 60) -> dict[str, Any]:
    return dict(
        wait_until(
            lambda: (s := status(api, name)).get("phase") in c.Phase.TERMINAL and s,
            timeout=timeout,
            what=f"{name} to finish (status now: {status(api, name)})",
        )
    )


class JobWatcher:
    """Polls the point Jobs in the background: the most ever unfinished, every uid ever seen."""

    def __init__(self, api: K8sApi, name: str) -> None:
        self.api = api
        self.name = name
        self.most_unfinished = 0
        self.uids: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            jobs = point_jobs(self.api, self.name)
            unfinished = sum(1 for job in jobs if not finished(job))
            self.most_unfinished = max(self.most_unfinished, unfinished)
            for job in jobs:
                self.uids.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
            time.sleep(0.05)


@pytest.fixture()
def stand_in(k8s_api: K8sApi, tmp_path: Path) -> Iterator[TestKubelet]:
    """A kubelet whose main containers succeed after a second and a half."""
    with stand_in_kubelet(k8s_api, tmp_path / "kubelet", 1.5) as node:
        yield node


def test_a_sweep_never_has_more_point_jobs_unfinished_than_max_concurrent(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 2}
    with JobWatcher(k8s_api, "capped") as watcher:
        k8s_api.create(sweep_experiment("capped", sweep))
        wait_terminal(k8s_api, "capped")
    assert watcher.most_unfinished == 2


def test_every_point_gets_one_job_with_a_deterministic_name(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 2}
    k8s_api.create(sweep_experiment("named", sweep))
    wait_terminal(k8s_api, "named")
    jobs = point_jobs(k8s_api, "named")
    assert {job["metadata"]["name"] for job in jobs} == expected_names("named", sweep)


def test_each_point_job_runs_its_own_parameters_without_the_sweep(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    import json

    sweep = {"grid": GRID, "maxConcurrent": 3}
    k8s_api.create(sweep_experiment("snapshots", sweep))
    wait_until(lambda: len(point_jobs(k8s_api, "snapshots")) == 3, what="three point Jobs")
    seen = []
    for job in point_jobs(k8s_api, "snapshots"):
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
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(sweep_experiment("counted", {"grid": GRID, "maxConcurrent": 2}))
    final = wait_terminal(k8s_api, "counted")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert final["sweep"]["counts"] == {"Pending": 0, "Running": 0, "Succeeded": 3, "Failed": 0}
    assert final["progress"] == "3/3"
    assert [row["values"] for row in final["sweep"]["points"]] == [
        {"epsilon": epsilon} for epsilon in GRID["epsilon"]
    ]


def test_a_sweep_with_a_failed_point_fails_once_every_point_finished(
    k8s_api: K8sApi, operator_process: OperatorProcess, tmp_path: Path
) -> None:
    with stand_in_kubelet(k8s_api, tmp_path / "kubelet", 0.5, STAND_IN_EXIT="3"):
        k8s_api.create(sweep_experiment("failing", {"grid": GRID, "maxConcurrent": 2}))
        final = wait_terminal(k8s_api, "failing")
    assert final["phase"] == c.Phase.FAILED
    assert final["sweep"]["counts"]["Failed"] == 3
    assert final["progress"] == "3/3"
    assert final["message"].startswith("3 of 3 sweep points failed")


def test_restarting_the_operator_mid_sweep_creates_no_second_job(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 1}
    with JobWatcher(k8s_api, "restarted") as watcher:
        k8s_api.create(sweep_experiment("restarted", sweep))
        wait_until(lambda: point_jobs(k8s_api, "restarted"), what="the first point Job")
        operator_process.restart()
        final = wait_terminal(k8s_api, "restarted")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert set(watcher.uids) == expected_names("restarted", sweep)
    assert all(len(uids) == 1 for uids in watcher.uids.values()), watcher.uids
    assert watcher.most_unfinished == 1


def test_an_invalid_sweep_fails_with_invalid_spec(
    k8s_api: K8sApi, operator_process: OperatorProcess
) -> None:
    k8s_api.create(sweep_experiment("bad-sweep", {"grid": {"epsilon": []}}))
    final = wait_terminal(k8s_api, "bad-sweep", timeout=15)
    assert final["phase"] == c.Phase.FAILED
    accepted = next(cond for cond in final["conditions"] if cond["type"] == "Accepted")
    assert accepted["reason"] == c.Reason.INVALID_SPEC
    assert "spec.sweep.grid.epsilon" in accepted["message"]
    assert point_jobs(k8s_api, "bad-sweep") == []


def test_a_suspended_sweep_holds_its_point_jobs_until_resumed(
    k8s_api: K8sApi, operator_process: OperatorProcess, stand_in: TestKubelet
) -> None:
    k8s_api.create(sweep_experiment("held", {"grid": GRID, "maxConcurrent": 2}, suspend=True))
    wait_until(lambda: status(k8s_api, "held").get("phase") == c.Phase.SUSPENDED)
    jobs = point_jobs(k8s_api, "held")
    assert len(jobs) == 2 and all(job["spec"]["suspend"] for job in jobs)
    k8s_api.patch("experiments", "held", {"spec": {"suspend": False}})
    final = wait_terminal(k8s_api, "held")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert {job["metadata"]["name"] for job in point_jobs(k8s_api, "held")} == expected_names(
        "held", {"grid": GRID}
    )


@pytest.mark.timeout(240)
def test_each_points_headline_results_appear_in_the_sweep_summary(
    k8s_api: K8sApi,
    prefect_api_url: str,
    kubelet: TestKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    operator = OperatorProcess(
        k8s_api, {"DIOPTRA_PREFECT_API_URL": prefect_api_url}, tmp_path / "operator.log"
    ).start()
    try:
        bucket = s3_server.new_bucket()
        push_builtins(s3_server, bucket)
        credentials_secret(k8s_api, "s3-credentials", FAKE_KEY, FAKE_KEY)
        manifest = example("random-integer", bucket, s3_server.endpoint_url)
        manifest["spec"]["sweep"] = {"grid": {"seed": [1, 2]}, "maxConcurrent": 2}
        k8s_api.create(manifest)
        final = wait_terminal(k8s_api, "random-integer", timeout=200)
    finally:
        operator.stop()
    assert final["phase"] == c.Phase.SUCCEEDED, (final, kubelet.logs)
    rows = final["sweep"]["points"]
    assert [row["values"] for row in rows] == [{"seed": 1}, {"seed": 2}]
    assert all(row.get("results") for row in rows), rows
    assert [row["message"] for row in rows] == ["3 tasks completed"] * 2


@pytest.mark.timeout(240)
def test_point_runners_report_under_their_own_keys_and_not_the_top_level(
    k8s_api: K8sApi,
    prefect_api_url: str,
    kubelet: TestKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    operator = OperatorProcess(
        k8s_api, {"DIOPTRA_PREFECT_API_URL": prefect_api_url}, tmp_path / "operator.log"
    ).start()
    try:
        bucket = s3_server.new_bucket()
        push_builtins(s3_server, bucket)
        credentials_secret(k8s_api, "s3-credentials", FAKE_KEY, FAKE_KEY)
        manifest = example("random-integer", bucket, s3_server.endpoint_url)
        manifest["spec"]["sweep"] = {"points": [{"high": 10}, {"high": 20}], "maxConcurrent": 2}
        k8s_api.create(manifest)
        final = wait_terminal(k8s_api, "random-integer", timeout=200)
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
def slow_stand_in(k8s_api: K8sApi, tmp_path: Path) -> Iterator[TestKubelet]:
    """A kubelet whose main containers run for 30 s (the tests change the spec meanwhile)."""
    with stand_in_kubelet(k8s_api, tmp_path / "kubelet", 30) as node:
        yield node


def job_names(api: K8sApi, name: str) -> set[str]:
    return {job["metadata"]["name"] for job in point_jobs(api, name)}


def test_changing_a_running_sweeps_spec_replaces_its_unfinished_point_jobs(
    k8s_api: K8sApi, operator_process: OperatorProcess, slow_stand_in: TestKubelet
) -> None:
    sweep = {"grid": GRID, "maxConcurrent": 1}
    k8s_api.create(sweep_experiment("changed", sweep))
    first = sorted(expected_names("changed", sweep))
    wait_until(lambda: job_names(k8s_api, "changed") & set(first), what="a generation-1 Job")
    k8s_api.patch("experiments", "changed", {"spec": {"parameters": {"seed": 8}}})
    wanted = expected_names("changed", sweep, generation=2)
    wait_until(
        lambda: (names := job_names(k8s_api, "changed")) and names <= wanted,
        what=f"only generation-2 point Jobs (now: {job_names(k8s_api, 'changed')})",
    )
    assert len(job_names(k8s_api, "changed")) == 1


def test_dropping_the_sweep_replaces_the_point_jobs_with_one_plain_job(
    k8s_api: K8sApi, operator_process: OperatorProcess, slow_stand_in: TestKubelet
) -> None:
    k8s_api.create(sweep_experiment("unswept", {"grid": GRID, "maxConcurrent": 2}))
    wait_until(lambda: len(point_jobs(k8s_api, "unswept")) == 2, what="two point Jobs")
    k8s_api.patch("experiments", "unswept", {"spec": {"sweep": None}})
    wait_until(
        lambda: job_names(k8s_api, "unswept") == {"unswept-g2"},
        what=f"the plain Job alone (now: {job_names(k8s_api, 'unswept')})",
    )
    final = status(k8s_api, "unswept")
    assert "sweep" not in final and "sweepPoints" not in final
    assert final["jobName"] == "unswept-g2"
