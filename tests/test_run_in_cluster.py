"""`dioptra run --in-cluster`: the Job's main container reports to the Experiment's status.

The runner runs as the chart's runner ServiceAccount, whose Role allows only `patch` on
`experiments/status`, so any other call would be refused by the real API server. It reaches the
server through the test's recording proxy, which keeps each status patch it sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dioptra_api.sweep import cluster_points
from support.cluster import ChartRbac, Cluster
from support.proxy import ApiProxy, Seen

pytestmark = [pytest.mark.usefixtures("prefect_api_url"), pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent

PLUGIN = """
from dioptra import pyplugs, metrics

@pyplugs.register
def square(x: int) -> int:
    return x * x

@pyplugs.register
def report(values: list) -> dict:
    metrics.log_metric("count", len(values))
    return {"sum": sum(values)}

@pyplugs.register
def explode() -> None:
    raise ValueError("bad calibration")
"""

SCRIPT = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Squares") as flow:
    width = Parameter("width")
    squares = [pyplugs.call_task("clusterpkg", "maths", "square", x=i) for i in range(WIDTH)]
    pyplugs.call_task("clusterpkg", "maths", "report", values=squares)
"""


def experiment_document(script: str, width: int) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "squares"},
        "spec": {
            "entryPoint": {"script": script.replace("WIDTH", str(width))},
            "parameters": {"width": width},
            "plugins": {"sources": ["s3://dioptra-plugins/clusterpkg"]},
        },
    }


@pytest.fixture
def synced_plugins(tmp_path: Path) -> Path:
    """What the init container leaves behind: a plugin folder with its manifest."""
    source = tmp_path / "source" / "clusterpkg"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "maths.py").write_text(PLUGIN)
    dest = tmp_path / "plugins"
    subprocess.run(
        [str(BIN / "dioptra"), "plugins", "sync", "--dest", str(dest), f"{tmp_path / 'source'}/"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dest


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[ApiProxy]:
    started = ApiProxy(cluster.plane).start()
    yield started
    started.stop()


@pytest.fixture
def run_in_pod(cluster: Cluster, chart_rbac: ChartRbac, proxy: ApiProxy, tmp_path: Path) -> Any:
    """Create the Experiment, then run the runner as its Pod would, as the runner account."""
    token = cluster.plane.token(cluster.namespace, chart_rbac.runner_sa)
    kubeconfig = proxy.kubeconfig(token, tmp_path / "runner.kubeconfig", cluster.namespace)

    def run(
        document: dict[str, Any], plugin_dir: Path, **pod_env: str
    ) -> subprocess.CompletedProcess[str]:
        created = cluster.create(document)
        snapshot = {**document, "metadata": {**document["metadata"], **created["metadata"]}}
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "DIOPTRA_EXPERIMENT": json.dumps(snapshot),
            "DIOPTRA_EXPERIMENT_NAME": document["metadata"]["name"],
            "DIOPTRA_EXPERIMENT_NAMESPACE": cluster.namespace,
            "DIOPTRA_PLUGIN_DIR": str(plugin_dir),
            **pod_env,
        }
        return subprocess.run(
            [str(BIN / "dioptra"), "run", "--in-cluster"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )

    return run


def status_patches(proxy: ApiProxy) -> list[dict[str, Any]]:
    return [
        r.body["status"]
        for r in proxy.seen
        if r.method == "PATCH" and r.path.endswith("/experiments/squares/status")
    ]


def writes(proxy: ApiProxy) -> list[Seen]:
    return [r for r in proxy.seen if r.method in ("PATCH", "PUT", "POST", "DELETE")]


def test_the_runner_reports_phases_progress_results_and_plugin_versions(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    done = run_in_pod(experiment_document(SCRIPT, 3), synced_plugins)

    assert done.returncode == 0, done.stderr
    phases = [p["run"]["phase"] for p in status_patches(proxy) if "phase" in p.get("run", {})]
    assert phases == ["Running", "Succeeded"]
    status = cluster.get("experiments", "squares")["status"]
    assert status["run"]["phase"] == "Succeeded"
    assert status["progress"] == "4/4"
    assert {t["state"] for t in status["tasks"]} == {"Completed"}
    assert all("startTime" in t and "endTime" in t for t in status["tasks"])
    assert status["results"]["metrics"] == {"count": 3}
    assert status["results"]["outputs"]["clusterpkg.maths.report"] == {"sum": 5}
    assert sorted(f["path"] for f in status["plugins"]) == [
        "clusterpkg/__init__.py",
        "clusterpkg/maths.py",
    ]
    assert all(len(f["sha256"]) == 64 for f in status["plugins"])
    assert status["run"]["completionTime"] >= status["run"]["startTime"]


def test_the_runner_leaves_the_top_level_phase_message_and_timings_to_the_operator(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    run_in_pod(experiment_document(SCRIPT, 2), synced_plugins)

    patches = status_patches(proxy)
    assert patches, "the runner reported nothing"
    operators = {"phase", "message", "startTime", "completionTime", "duration", "conditions"}
    assert [sorted(operators & set(patch)) for patch in patches] == [[] for _ in patches]
    assert "phase" not in cluster.get("experiments", "squares").get("status", {})


def test_patches_touch_only_the_status_subresource(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    run_in_pod(experiment_document(SCRIPT, 2), synced_plugins)

    sent = writes(proxy)
    assert sent, "the runner reported nothing"
    assert all(r.path.endswith("/experiments/squares/status") for r in sent), sent
    assert all(r.status == 200 for r in proxy.seen), "the runner's Role refused a call"


def test_a_200_task_flow_is_reported_in_a_few_coalesced_patches(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    done = run_in_pod(experiment_document(SCRIPT, 200), synced_plugins)

    assert done.returncode == 0, done.stderr
    status = cluster.get("experiments", "squares")["status"]
    assert status["progress"] == "201/201"
    patches = status_patches(proxy)
    # 201 tasks change state 402 times; the reporter sends at most ~4 patches a second.
    assert len(patches) < 60, len(patches)
    assert len(patches) < 402 // 5


def test_a_failing_task_ends_failed_with_the_task_named(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    script = SCRIPT.replace(
        'pyplugs.call_task("clusterpkg", "maths", "report", values=squares)',
        'pyplugs.call_task("clusterpkg", "maths", "explode", upstream_tasks=squares)',
    )
    document = experiment_document(script, 1)
    document["spec"]["parameters"] = {"width": 1}

    done = run_in_pod(document, synced_plugins)

    assert done.returncode == 1
    status = cluster.get("experiments", "squares")["status"]
    assert status["run"]["phase"] == "Failed"
    assert (
        status["run"]["message"]
        == "task clusterpkg.maths.explode failed: ValueError: bad calibration"
    )
    assert "Traceback" in done.stderr  # the pod's log keeps the full traceback


def test_an_invalid_snapshot_fails_the_experiment_with_the_reason(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    document = experiment_document(SCRIPT, 1)
    document["spec"]["parameters"] = {}

    done = run_in_pod(document, synced_plugins)

    assert done.returncode == 2
    status = cluster.get("experiments", "squares")["status"]
    assert status["run"]["phase"] == "Failed"
    assert status["run"]["message"].startswith("the flow cannot start")
    assert status["run"]["message"].endswith("missing parameter(s): width")


def test_a_sweep_pod_runs_the_point_of_its_completion_index_and_reports_under_its_key(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    document = experiment_document(SCRIPT, 2)
    document["spec"]["sweep"] = {"points": [{"width": 1}, {"width": 2}], "maxConcurrent": 2}

    done = run_in_pod(document, synced_plugins, JOB_COMPLETION_INDEX="1")

    assert done.returncode == 0, done.stderr
    status = cluster.get("experiments", "squares")["status"]
    point = cluster_points(document["spec"]["sweep"], {})[1]
    assert point.values == {"width": 2}
    assert list(status["sweepPoints"]) == [point.key]
    assert status["sweepPoints"][point.key]["phase"] == "Succeeded"
    assert "run" not in status and "tasks" not in status  # the top level is the operator's


def test_a_sweep_pod_whose_index_is_out_of_range_fails_in_one_line_and_reports_nothing(
    run_in_pod: Any, cluster: Cluster, proxy: ApiProxy, synced_plugins: Path
) -> None:
    document = experiment_document(SCRIPT, 1)
    document["spec"]["sweep"] = {"points": [{"width": 1}]}

    done = run_in_pod(document, synced_plugins, JOB_COMPLETION_INDEX="5")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # the Pod's termination message
    assert "completion index 5 is out of range: the sweep has 1 point (indexes 0-0)" in last
    assert writes(proxy) == []
