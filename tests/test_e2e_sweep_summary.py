"""End to end: a finished sweep in the cluster gets its summary, one more Job that draws the plot,
keeps it in the artifact store and opens the MLflow parent run of the points' runs.

The real operator, control plane, Job controller, plugin sync and runner (test_e2e_sweep's
last tests), with the artifact store on the moto S3 server and a real `mlflow server`
(tests/support/mlflow.py); what MLflow holds is read back through `mlflow.MlflowClient`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.conditions import find_condition
from support.cluster import ChartRbac, Cluster, operator_running
from support.controlplane import free_port
from support.kubelet import StandInKubelet
from support.mlflow import MlflowServer
from support.s3 import S3Server
from test_e2e_experiment import builtins_bucket, example

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
__all__ = ["builtins_bucket"]  # the fixture, imported for its use below

P = c.Phase
TRACKING_FAILED = c.ConditionType.TRACKING_FAILED
NAME = "random-integer"


def summary_done(experiment: dict[str, Any] | None) -> bool:
    summary = (((experiment or {}).get("status") or {}).get("sweep") or {}).get("summary") or {}
    return summary.get("phase") in P.TERMINAL


def two_point_sweep(builtins_bucket: str, s3_server: S3Server) -> dict[str, Any]:
    """The random-integer example swept over two values of `high`, both run at once."""
    manifest = example(NAME, builtins_bucket, s3_server.endpoint_url)
    manifest["spec"]["sweep"] = {"grid": {"high": [10, 20]}, "maxConcurrent": 2}
    return manifest


def test_a_finished_sweep_gets_one_summary_with_its_plot_and_an_mlflow_parent_run(
    cluster: Cluster,
    chart_rbac: ChartRbac,
    prefect_api_url: str,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
    mlflow_server: MlflowServer,
    tmp_path: Path,
) -> None:
    store = s3_server.new_bucket()
    env = {
        "DIOPTRA_PREFECT_API_URL": prefect_api_url,
        "DIOPTRA_MLFLOW_TRACKING_URI": mlflow_server.url,
    }
    manifest = two_point_sweep(builtins_bucket, s3_server)
    manifest["spec"]["artifacts"] = {"store": f"s3://{store}/runs"}
    with operator_running(chart_rbac, env, tmp_path):
        cluster.create(manifest)
        found = cluster.wait_for(
            "experiments", NAME, summary_done, timeout=200, what="the sweep's summary"
        )
    final = dict(found["status"])
    logs = kubelet.logs_in(cluster.namespace)

    assert final["phase"] == P.SUCCEEDED, (final.get("message"), logs)
    summary_job = f"{NAME}-g1-summary"
    assert final["sweep"]["summary"] == {"job": summary_job, "phase": P.SUCCEEDED}, logs
    jobs = cluster.list("jobs", labelSelector=f"{c.LABEL_EXPERIMENT}={NAME}")
    assert sorted(job["metadata"]["name"] for job in jobs) == [f"{NAME}-g1", summary_job]
    condition = find_condition(final["conditions"], c.ConditionType.TRACKING_FAILED)
    assert condition is None or condition["status"] == "False", condition

    # The plot: in the store under its digest, named in status.sweep.plot.
    plot = final["sweep"]["plot"]
    key = plot["uri"].removeprefix(f"s3://{store}/")
    assert key == f"runs/objects/sha256/{plot['sha256']}.png"
    body = s3_server.client().get_object(Bucket=store, Key=key)["Body"].read()
    assert body.startswith(b"\x89PNG") and len(body) == plot["bytes"]
    assert hashlib.sha256(body).hexdigest() == plot["sha256"]

    # MLflow: one parent run, the two points' runs its children, the plot on the parent.
    client = mlflow_server.client()
    tracking = final["tracking"]
    parent = client.get_run(tracking["mlflowRunId"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == f"{cluster.namespace}/{NAME}"
    points = {key: entry["tracking"]["mlflowRunId"] for key, entry in final["sweepPoints"].items()}
    assert len(points) == 2 and tracking["mlflowChildRunIds"] == points
    for run_id in points.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert [run.info.run_id for run in parents] == [parent.info.run_id]
    assert parent.data.params == {"seed": "42", "sweep.high": "[10,20]"}
    assert parent.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert artifacts == [f"plots/{NAME}.png"]
    assert plot["mlflowArtifactUri"] == f"runs:/{parent.info.run_id}/plots/{NAME}.png"


def test_an_unreachable_mlflow_fails_only_the_summary_and_the_sweep_still_succeeds(
    cluster: Cluster,
    chart_rbac: ChartRbac,
    prefect_api_url: str,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
    tmp_path: Path,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"DIOPTRA_PREFECT_API_URL": prefect_api_url, "DIOPTRA_MLFLOW_TRACKING_URI": nobody}
    manifest = two_point_sweep(builtins_bucket, s3_server)
    with operator_running(chart_rbac, env, tmp_path):
        cluster.create(manifest)
        found = cluster.wait_for(
            "experiments", NAME, summary_done, timeout=200, what="the sweep's summary"
        )
        # The summary's failure reaches the condition in the operator's next pass.
        final = cluster.wait_for(
            "experiments",
            NAME,
            lambda e: (
                (cond := find_condition((e or {})["status"].get("conditions"), TRACKING_FAILED))
                is not None
                and cond["reason"] == c.Reason.SWEEP_SUMMARY_FAILED
            ),
            timeout=30,
            what="TrackingFailed from the summary",
        )["status"]
    logs = kubelet.logs_in(cluster.namespace)

    assert found["status"]["sweep"]["summary"]["phase"] == P.FAILED, logs
    assert final["phase"] == P.SUCCEEDED, (final.get("message"), logs)
    assert final["progress"] == "2/2"
    condition = find_condition(final["conditions"], TRACKING_FAILED)
    assert condition is not None and condition["status"] == "True"
    assert f"{NAME}-g1-summary" in condition["message"]
    assert "MLflow" in condition["message"] and "Traceback" not in condition["message"]
    assert "plot" not in final["sweep"]  # no store and no MLflow: the picture had nowhere to go
