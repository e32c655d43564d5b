"""MLflow tracking: each run is an MLflow run on a real `mlflow server` (SQLite, artifacts on
the moto S3 server), read back through MLflow's own client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dioptra_runner.tracking import public_uri
from support.mlflow import MlflowServer
from support.records import dioptra_run, records_experiment, records_workspace

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def tracked(server: MlflowServer) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.url}


def document(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def tracked_run(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer, prefect_api_url: str
) -> tuple[Path, dict[str, Any]]:
    """One tracked run, shared by the tests that read back what it logged."""
    folder = tmp_path_factory.mktemp("tracked")
    path = records_experiment(records_workspace(folder), "tracked-run")
    return path, document(dioptra_run(path, "--output", "json", env=tracked(mlflow_server)))


def test_a_run_is_an_mlflow_run_with_its_parameters_and_tags(
    tracked_run: tuple[Path, dict[str, Any]], mlflow_server: MlflowServer
) -> None:
    tracking = tracked_run[1]["tracking"]

    client = mlflow_server.client()
    run = client.get_run(tracking["mlflowRunId"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"n": "4", "rate": "0.5"}
    assert run.data.tags["dioptra.experiment.name"] == "tracked-run"
    assert run.data.tags["dioptra.phase"] == "Succeeded"
    assert len(run.data.tags["dioptra.plugins.sha256"]) == 64
    assert run.data.tags["dioptra.prefect.flowRunId"]
    experiment = client.get_experiment(tracking["mlflowExperimentId"])
    assert experiment.name == "tracked-run"
    assert run.info.experiment_id == experiment.experiment_id


def test_every_logged_metric_value_is_kept_at_its_step(
    tracked_run: tuple[Path, dict[str, Any]], mlflow_server: MlflowServer
) -> None:
    tracking = tracked_run[1]["tracking"]

    client = mlflow_server.client()
    history = client.get_metric_history(tracking["mlflowRunId"], "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0), (2, 0.6667)]
    run = client.get_run(tracking["mlflowRunId"])
    assert run.data.metrics["accuracy"] == 0.875
    assert run.data.metrics["outputs.recpkg.ops.steps.report.score"] == 2.0


def test_the_experiment_file_and_the_results_are_artifacts_on_s3(
    tracked_run: tuple[Path, dict[str, Any]], mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    path, output = tracked_run

    client = mlflow_server.client()
    run_id = output["tracking"]["mlflowRunId"]
    assert sorted(a.path for a in client.list_artifacts(run_id)) == [
        "experiment.yaml",
        "results.json",
    ]
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path / "downloaded")))
    assert (folder / "experiment.yaml").read_text() == path.read_text()
    results = json.loads((folder / "results.json").read_text())
    assert results["phase"] == "Succeeded"
    assert results["results"]["metrics"] == {"loss": 0.6667, "accuracy": 0.875}
    # The artifacts are on the S3 server, under the server's --artifacts-destination.
    listed = mlflow_server.s3.client().list_objects_v2(Bucket=mlflow_server.bucket)
    assert any(o["Key"].endswith(f"{run_id}/artifacts/results.json") for o in listed["Contents"])


def test_a_sweep_is_a_parent_run_with_a_child_run_per_point_and_the_plot(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    path = records_experiment(
        records_workspace(tmp_path), "tracked-sweep", sweep={"grid": {"n": [2, 3, 4]}}
    )

    output = document(
        dioptra_run(path, "--output", "json", "--parallel", "2", env=tracked(mlflow_server))
    )

    client = mlflow_server.client()
    tracking = output["tracking"]
    parent = client.get_run(tracking["mlflowRunId"])
    assert parent.data.params == {"rate": "0.5", "sweep.n": "[2,3,4]"}
    children = tracking["mlflowChildRunIds"]
    assert len(children) == 3
    params = set()
    for key, run_id in children.items():
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["dioptra.sweep.point"] == key
        params.add(child.data.params["n"])
    assert params == {"2", "3", "4"}
    plot = Path(output["sweep"]["plot"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        f"plots/{plot.name}"
    ]


def test_the_run_id_is_printed_and_the_uri_never_shows_its_credentials(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    path = records_experiment(records_workspace(tmp_path), "tracked-printed")
    with_password = mlflow_server.url.replace("http://", "http://alice:s3cr3t@")

    done = dioptra_run(path, env={"MLFLOW_TRACKING_URI": with_password})

    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("mlflow: run "))
    assert line.endswith(f"at {mlflow_server.url}")
    assert "s3cr3t" not in done.stdout + done.stderr
    assert "alice" not in done.stdout + done.stderr


def test_an_unreachable_mlflow_leaves_the_run_succeeded_with_a_warning(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = records_experiment(records_workspace(tmp_path), "tracked-unreachable")

    done = dioptra_run(path, env={"MLFLOW_TRACKING_URI": f"http://bob:hunter2@127.0.0.1:{port}"})

    assert done.returncode == 0, done.stderr
    assert "Succeeded tracked-unreachable" in done.stdout
    warning = next(x for x in done.stdout.splitlines() if x.startswith("warning: MLflow"))
    assert f"tracking URI http://127.0.0.1:{port}" in warning
    assert "hunter2" not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


LOADED = """
import sys
from dioptra_runner.cli import main
try:
    main(["run", {path!r}, "--plugin-cache", {cache!r}, "--output", "json"])
except SystemExit:
    pass
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"mlflow", "matplotlib"}})
print("LOADED=" + ",".join(loaded), file=sys.stderr)
"""


def test_without_a_tracking_uri_mlflow_is_never_imported(tmp_path: Path) -> None:
    path = records_experiment(records_workspace(tmp_path), "untracked")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = LOADED.format(path=str(path), cache=str(tmp_path / "cache"))

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )

    assert json.loads(done.stdout)["phase"] == "Succeeded", done.stderr
    assert "tracking" not in json.loads(done.stdout)
    assert "LOADED=\n" in done.stderr  # neither MLflow nor matplotlib (no sweep)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:token@mlflow.example:5000/x", "https://mlflow.example:5000/x"),
        ("http://token@host", "http://host"),
        ("http://host:5000", "http://host:5000"),
        ("databricks://profile", "databricks://profile"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ],
)
def test_the_public_uri_has_no_userinfo(uri: str, shown: str) -> None:
    assert public_uri(uri) == shown


@pytest.fixture
def run_in_pod_tracked(cluster: Any, chart_rbac: Any, tmp_path: Path) -> Any:
    """The runner as its Pod runs it (the runner account, the snapshot), tracked to MLflow."""
    from support.proxy import ApiProxy
    from test_run_in_cluster import PLUGIN, SCRIPT, experiment_document

    source = tmp_path / "source" / "clusterpkg"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "maths.py").write_text(PLUGIN)
    plugins = tmp_path / "plugins"
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "dioptra"), "plugins", "sync", "--dest", str(plugins), f"{source.parent}/"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proxy = ApiProxy(cluster.plane).start()
    token = cluster.plane.token(cluster.namespace, chart_rbac.runner_sa)
    kubeconfig = proxy.kubeconfig(token, tmp_path / "runner.kubeconfig", cluster.namespace)

    def run(uri: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        document = experiment_document(SCRIPT, 2)
        created = cluster.create(document)
        snapshot = {**document, "metadata": {**document["metadata"], **created["metadata"]}}
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "DIOPTRA_EXPERIMENT": json.dumps(snapshot),
            "DIOPTRA_EXPERIMENT_NAME": document["metadata"]["name"],
            "DIOPTRA_EXPERIMENT_NAMESPACE": cluster.namespace,
            "DIOPTRA_PLUGIN_DIR": str(plugins),
            "DIOPTRA_RUNNER_IMAGE": "localhost/dioptra-runner:test",
            "MLFLOW_TRACKING_URI": uri,
        }
        done = subprocess.run(
            [str(bin_dir / "dioptra"), "run", "--in-cluster"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        return done, created

    yield run
    proxy.stop()


@pytest.mark.timeout(240)
def test_in_the_cluster_status_tracking_names_the_mlflow_run_of_the_experiment(
    run_in_pod_tracked: Any, cluster: Any, mlflow_server: MlflowServer
) -> None:
    done, created = run_in_pod_tracked(mlflow_server.url)

    assert done.returncode == 0, done.stderr
    tracking = cluster.get("experiments", "squares")["status"]["tracking"]
    assert tracking["mlflowTrackingUri"] == mlflow_server.url
    client = mlflow_server.client()
    run = client.get_run(tracking["mlflowRunId"])
    assert client.get_experiment(run.info.experiment_id).name == f"{cluster.namespace}/squares"
    tags = run.data.tags
    assert tags["dioptra.experiment.namespace"] == cluster.namespace
    assert tags["dioptra.experiment.uid"] == created["metadata"]["uid"]
    assert tags["dioptra.experiment.generation"] == "1"
    assert tags["dioptra.runner.image"] == "localhost/dioptra-runner:test"


@pytest.mark.timeout(240)
def test_in_the_cluster_a_tracking_failure_is_reported_and_the_run_succeeds(
    run_in_pod_tracked: Any, cluster: Any
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    done, _ = run_in_pod_tracked(f"http://svc:token@127.0.0.1:{port}")

    assert done.returncode == 0, done.stderr
    status = cluster.get("experiments", "squares")["status"]
    assert status["run"]["phase"] == "Succeeded"
    assert status["tracking"]["error"]
    assert "token@" not in json.dumps(status) + done.stderr
    assert "Traceback" not in done.stderr
