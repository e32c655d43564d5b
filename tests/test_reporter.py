"""The runner's status reporter on the real API server, as the chart's runner ServiceAccount.

Its requests go through the test's recording proxy, which also injects server errors.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from dioptra_runner.reporter import (
    KubernetesStatusReporter,
    NullStatusReporter,
    PointStatusReporter,
    RunStatusReporter,
    StatusReporterError,
    changed_fields,
    to_json_value,
)
from support.cluster import ChartRbac, Cluster, wait_until
from support.proxy import ApiProxy, Seen

NAME = "exp-1"
EXPERIMENT = {
    "apiVersion": "dioptra.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": NAME},
    "spec": {"entryPoint": {"module": "demo.flows:flow"}},
}


class Api:
    """The test's namespace, and the runner account's way to it through the proxy."""

    def __init__(self, cluster: Cluster, proxy: ApiProxy, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.kubeconfig_path = kubeconfig
        self.namespace = cluster.namespace

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.cluster.get("experiments", name))

    def client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(str(self.kubeconfig_path))


@pytest.fixture()
def api(cluster: Cluster, chart_rbac: ChartRbac, tmp_path: Path) -> Iterator[Api]:
    proxy = ApiProxy(cluster.plane).start()
    token = cluster.plane.token(cluster.namespace, chart_rbac.runner_sa)
    kubeconfig = proxy.kubeconfig(token, tmp_path / "runner.kubeconfig", cluster.namespace)
    yield Api(cluster, proxy, kubeconfig)
    proxy.stop()


def _status_patches(api: Api) -> list[Seen]:
    return [r for r in api.proxy.seen if r.method == "PATCH"]


def _reporter(api: Api, **kwargs: Any) -> KubernetesStatusReporter:
    return KubernetesStatusReporter(NAME, api.namespace, api_client=api.client(), **kwargs)


def _wait_for_patches(api: Api, count: int) -> None:
    """Until `count` status patches have been answered by the API server."""
    wait_until(
        lambda: len([p for p in _status_patches(api) if p.status == 200]) >= count,
        what=f"{count} status patch(es) to arrive",
    )


def _task(index: int, state: str) -> dict[str, Any]:
    return {"name": f"t{index}", "task": "noop", "state": state}


@pytest.fixture()
def experiment(api: Api) -> dict[str, Any]:
    created: dict[str, Any] = api.cluster.create(EXPERIMENT)  # as admin, not through the proxy
    return created


@pytest.mark.parametrize(
    ("sent", "wanted", "expected"),
    [
        ({}, {"phase": "Running"}, {"phase": "Running"}),
        ({"phase": "Running"}, {"phase": "Running"}, {}),
        (
            {"phase": "Running", "tasksDone": 1},
            {"phase": "Running", "tasksDone": 2},
            {"tasksDone": 2},
        ),
        (
            {"tasks": [{"state": "Pending"}]},
            {"tasks": [{"state": "Done"}]},
            {"tasks": [{"state": "Done"}]},
        ),
        ({}, {"message": None}, {"message": None}),
    ],
)
def test_changed_fields_keeps_only_keys_whose_values_changed(
    sent: dict[str, Any], wanted: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert changed_fields(sent, wanted) == expected


def test_datetimes_become_rfc3339_utc_strings() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert to_json_value({"startTime": moment}) == {"startTime": "2026-01-02T03:04:05Z"}


def test_patches_go_to_the_status_subresource_and_never_touch_spec(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _reporter(api)
    reporter.update(phase="Running", message="started")
    reporter.close()

    patches = _status_patches(api)
    stored = api.get(NAME)
    assert patches and all(p.path.endswith(f"/experiments/{NAME}/status") for p in patches)
    assert all(set(p.body) == {"status"} for p in patches)
    assert stored["spec"] == experiment["spec"]  # as created (with the server's defaults)
    assert stored["metadata"]["generation"] == experiment["metadata"]["generation"]


def test_phases_arrive_in_order_and_the_final_status_has_every_field(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _reporter(api, min_interval=0.05)
    reporter.update(phase="Running", startTime="2026-01-01T00:00:00Z", tasksTotal=2, tasksDone=0)
    wait_until(lambda: _status_patches(api), what="the first patch")
    reporter.update(
        phase="Succeeded",
        tasks=[_task(0, "Completed"), _task(1, "Completed")],
        tasksDone=2,
        progress="2/2",
        results={"accuracy": 0.9},
        plugins=[{"path": "acme/__init__.py", "sha256": "0" * 64}],
        message="done",
        completionTime="2026-01-01T00:01:00Z",
        duration="1m0s",
    )
    reporter.close()

    phases = [
        p.body["status"]["phase"] for p in _status_patches(api) if "phase" in p.body["status"]
    ]
    status = api.get(NAME)["status"]
    assert phases == ["Running", "Succeeded"]
    assert status == {
        "phase": "Succeeded",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z",
        "duration": "1m0s",
        "tasksTotal": 2,
        "tasksDone": 2,
        "progress": "2/2",
        "tasks": [_task(0, "Completed"), _task(1, "Completed")],
        "results": {"accuracy": 0.9},
        "plugins": [{"path": "acme/__init__.py", "sha256": "0" * 64}],
        "message": "done",
    }


def test_a_later_patch_carries_only_the_fields_that_changed(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _reporter(api, min_interval=0.05)
    reporter.update(phase="Running", tasksTotal=3, tasksDone=0)
    wait_until(lambda: _status_patches(api), what="the first patch")
    reporter.update(phase="Running", tasksTotal=3, tasksDone=1)
    reporter.close()

    bodies = [p.body["status"] for p in _status_patches(api)]
    assert bodies == [{"phase": "Running", "tasksTotal": 3, "tasksDone": 0}, {"tasksDone": 1}]


def test_hundreds_of_rapid_updates_within_the_interval_are_coalesced_into_one_patch(
    api: Api, experiment: dict[str, Any]
) -> None:
    # The first patch goes at once; with a minute between patches, everything after it waits
    # for close(), which sends what is left as one patch.
    reporter = _reporter(api, min_interval=60)
    tasks = [_task(i, "Pending") for i in range(200)]
    reporter.update(phase="Running", tasksTotal=200, tasksDone=0, tasks=tasks)
    _wait_for_patches(api, 1)
    for i in range(200):
        tasks[i] = _task(i, "Completed")
        reporter.update(tasks=tasks, tasksDone=i + 1, progress=f"{i + 1}/200")
    reporter.update(phase="Succeeded")
    reporter.close()

    first, last = (p.body["status"] for p in _status_patches(api))
    assert first["tasksDone"] == 0
    assert (last["tasksDone"], last["progress"], last["phase"]) == (200, "200/200", "Succeeded")
    status = api.get(NAME)["status"]
    assert status["tasksDone"] == 200 and status["phase"] == "Succeeded"
    assert [t["state"] for t in status["tasks"]] == ["Completed"] * 200


def test_server_errors_are_retried_until_the_status_arrives(
    api: Api, experiment: dict[str, Any]
) -> None:
    api.proxy.fail("PATCH", r"/status$", status=500, times=2)
    reporter = _reporter(api, min_interval=0.01)
    reporter.update(phase="Running")
    reporter.update(phase="Succeeded", tasksDone=1)
    reporter.close(timeout=10)

    assert len(_status_patches(api)) == 3
    assert api.get(NAME)["status"] == {"phase": "Succeeded", "tasksDone": 1}


def test_an_unreachable_api_never_raises_close_gives_up_and_the_token_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{dead_port}"
    configuration.api_key = {"authorization": "Bearer secret-token-123"}
    reporter = KubernetesStatusReporter(
        NAME, "default", api_client=kubernetes.client.ApiClient(configuration), min_interval=0.01
    )
    closed = threading.Event()

    def close() -> None:
        reporter.close(timeout=1.0)
        closed.set()

    with caplog.at_level(logging.DEBUG, logger="dioptra_runner.reporter"):
        reporter.update(phase="Running")
        threading.Thread(target=close, daemon=True).start()
        # A safety limit only: close() keeps retrying until its own 1 s deadline, then returns.
        assert closed.wait(30), "close() did not return while the API was unreachable"

    attempts = [r for r in caplog.records if "Status patch of Experiment" in r.getMessage()]
    assert attempts, "the reporter never tried to send"
    assert "secret-token-123" not in caplog.text


def test_a_status_update_is_dropped_with_a_warning_after_max_attempts(
    api: Api, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    api.proxy.fail("PATCH", r"/status$", status=503, times=2)
    reporter = _reporter(api, min_interval=0.01, max_attempts=2)
    with caplog.at_level(logging.WARNING, logger="dioptra_runner.reporter"):
        reporter.update(phase="Running")
        reporter.close(timeout=5)

    assert "after 2 failed attempts" in caplog.text
    assert "status" not in api.get(NAME)


def test_a_deleted_experiment_stops_reporting_with_one_log_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = _reporter(api, min_interval=0.01)
    with caplog.at_level(logging.INFO, logger="dioptra_runner.reporter"):
        reporter.update(phase="Running")
        wait_until(lambda: _status_patches(api), what="the first patch")
        reporter.update(phase="Succeeded")
        reporter.close(timeout=2)

    assert len(_status_patches(api)) == 1
    reporter_lines = [r.getMessage() for r in caplog.records if r.name == "dioptra_runner.reporter"]
    assert reporter_lines == [
        f"Experiment {api.namespace}/exp-1 no longer exists: status reporting stopped"
    ]


def test_from_environment_reports_through_the_kubeconfig(
    api: Api, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig_path))
    monkeypatch.setenv("DIOPTRA_EXPERIMENT_NAME", NAME)
    monkeypatch.setenv("DIOPTRA_EXPERIMENT_NAMESPACE", api.namespace)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    reporter = KubernetesStatusReporter.from_environment()
    reporter.update(phase="Running")
    reporter.close()

    assert api.get(NAME)["status"] == {"phase": "Running"}


def test_from_environment_without_the_experiment_name_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIOPTRA_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DIOPTRA_EXPERIMENT_NAMESPACE", "default")
    with pytest.raises(StatusReporterError, match="DIOPTRA_EXPERIMENT_NAME is not set"):
        KubernetesStatusReporter.from_environment()


def test_the_null_reporter_accepts_updates_and_closes_without_a_thread_or_a_request() -> None:
    before = {thread.name for thread in threading.enumerate()}
    reporter = NullStatusReporter()
    reporter.update(phase="Running", tasks=[])
    reporter.close(timeout=0)
    started = {thread.name for thread in threading.enumerate()} - before
    assert not [name for name in started if name.startswith("dioptra-status-")]


def test_a_status_the_server_refuses_is_dropped_at_once_with_its_reason(
    api: Api, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    reporter = _reporter(api, min_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="dioptra_runner.reporter"):
        reporter.update(phase="Exploded")  # not a phase the CRD allows
        reporter.close(timeout=5)
    refused = [p for p in _status_patches(api) if p.status == 422]
    assert len(refused) == 1, "a refusal is not retried"
    assert "refused a status update" in caplog.text
    assert "status.phase" in caplog.text  # the server's own reason
    assert "status" not in api.get(NAME)


# -- what the run's and a sweep point's reporters write, as the API server stores it ------------
#
# `held(api)` is the real reporter after its first patch has arrived: with a minute between
# patches, the updates after it are coalesced and sent together by close(), which is where a
# wrapper that handed over only its latest fields would lose the earlier ones.


def _held(api: Api, wrap: Any, **first: Any) -> Any:
    reporter = wrap(_reporter(api, min_interval=60))
    reporter.update(**first)
    _wait_for_patches(api, 1)
    return reporter


def test_the_run_reporter_writes_the_runs_account_under_run_and_the_rest_at_the_top(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = RunStatusReporter(_reporter(api))
    reporter.update(
        phase="Running",
        message="running task t0",
        startTime="2026-01-01T00:00:00Z",
        tasksTotal=1,
        tasks=[_task(0, "Running")],
    )
    reporter.close()

    assert api.get(NAME)["status"] == {
        "run": {
            "phase": "Running",
            "message": "running task t0",
            "startTime": "2026-01-01T00:00:00Z",
        },
        "tasksTotal": 1,
        "tasks": [_task(0, "Running")],
    }


def test_the_run_reporter_loses_no_field_of_the_run_when_updates_are_coalesced(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _held(api, RunStatusReporter, tasksTotal=1)
    reporter.update(phase="Running", startTime="2026-01-01T00:00:00Z")
    reporter.update(phase="Succeeded", completionTime="2026-01-01T00:01:00Z", duration="1m0s")
    reporter.close()

    assert len(_status_patches(api)) == 2  # the two updates did travel as one patch
    assert api.get(NAME)["status"]["run"] == {
        "phase": "Succeeded",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z",
        "duration": "1m0s",
    }


def test_a_point_reporter_writes_under_its_key_and_never_the_top_level_phase(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = PointStatusReporter(_reporter(api), "abc")
    reporter.update(phase="Running", message="go")
    reporter.close()

    assert api.get(NAME)["status"] == {
        "sweepPoints": {"abc": {"phase": "Running", "message": "go"}}
    }


def test_two_points_reporting_to_one_experiment_keep_each_others_entries(
    api: Api, experiment: dict[str, Any]
) -> None:
    first = PointStatusReporter(_reporter(api), "abc")
    second = PointStatusReporter(_reporter(api), "def")
    first.update(phase="Running")
    second.update(phase="Running")
    first.update(phase="Succeeded")
    first.close()
    second.close()

    assert api.get(NAME)["status"]["sweepPoints"] == {
        "abc": {"phase": "Succeeded"},
        "def": {"phase": "Running"},
    }


def test_a_point_reporter_loses_no_field_of_its_entry_when_updates_are_coalesced(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _held(api, lambda inner: PointStatusReporter(inner, "abc"), tasksTotal=2)
    reporter.update(phase="Running")
    reporter.update(results={"metrics": {"a": 1}})
    reporter.close()

    assert len(_status_patches(api)) == 2  # the two updates did travel as one patch
    assert api.get(NAME)["status"]["sweepPoints"]["abc"] == {
        "tasksTotal": 2,
        "phase": "Running",
        "results": {"metrics": {"a": 1}},
    }


def test_a_point_reporter_leaves_the_task_list_out(api: Api, experiment: dict[str, Any]) -> None:
    reporter = PointStatusReporter(_reporter(api), "abc")
    reporter.update(tasks=[_task(0, "Completed")], tasksDone=1)
    reporter.close()

    assert api.get(NAME)["status"] == {"sweepPoints": {"abc": {"tasksDone": 1}}}


def test_a_point_reporter_writes_the_plugins_once_at_the_top_with_a_digest_per_point(
    api: Api, experiment: dict[str, Any]
) -> None:
    manifest = [{"path": "p/__init__.py", "sha256": "0" * 64}]
    for key in ("abc", "def"):
        reporter = PointStatusReporter(_reporter(api), key)
        reporter.update(plugins=manifest)
        reporter.close()

    status = api.get(NAME)["status"]
    assert status["plugins"] == manifest
    digests = {entry["pluginsSha256"] for entry in status["sweepPoints"].values()}
    assert len(digests) == 1 and len(digests.pop()) == 64
    assert all(set(entry) == {"pluginsSha256"} for entry in status["sweepPoints"].values())


def test_closing_a_point_reporter_sends_its_last_update(
    api: Api, experiment: dict[str, Any]
) -> None:
    reporter = _held(api, lambda inner: PointStatusReporter(inner, "abc"), phase="Running")
    reporter.update(phase="Succeeded")
    reporter.close()

    assert api.get(NAME)["status"]["sweepPoints"]["abc"] == {"phase": "Succeeded"}
