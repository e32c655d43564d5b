"""End to end: a run in the cluster keeps its task outputs in the S3 artifact store.

The real control plane, operator, Job controller, plugin sync and runner (see
test_e2e_experiment); the store is a bucket on the moto S3 server, reached with the plugins'
endpoint and Secret, which the operator passes to the runner container by secretKeyRef.
"""

from __future__ import annotations

import hashlib

import dioptra_api as c
import pytest
from support.cluster import Cluster, OperatorProcess, wait_until
from support.kubelet import StandInKubelet
from support.s3 import FAKE_KEY, S3Server
from test_e2e_experiment import builtins_bucket, condition, example, status, succeeded

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
__all__ = ["builtins_bucket"]  # the fixture, imported for its use below


def test_a_cluster_run_writes_its_outputs_to_the_store_and_lists_them_in_status(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    store_bucket = s3_server.new_bucket()
    manifest = example("random-integer", builtins_bucket, s3_server.endpoint_url)
    manifest["spec"]["artifacts"] = {"store": f"s3://{store_bucket}/runs"}
    cluster.create(manifest)

    final = succeeded(cluster, kubelet, "random-integer")

    artifacts = final["artifacts"]
    assert final["artifactsKept"] == len(artifacts) == final["tasksTotal"]
    client = s3_server.client()
    for entry in artifacts:
        uri = f"s3://{store_bucket}/runs/objects/sha256/{entry['sha256']}."
        assert entry["uri"].startswith(uri)
        key = entry["uri"].removeprefix(f"s3://{store_bucket}/")
        body = client.get_object(Bucket=store_bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_an_unreachable_store_fails_the_experiment_with_the_runners_reason(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    manifest = example("random-integer", builtins_bucket, s3_server.endpoint_url)
    # Nothing listens on port 9: the first task's output cannot be written.
    manifest["spec"]["artifacts"] = {
        "store": "s3://nowhere/runs",
        "endpointURL": "http://127.0.0.1:9",
    }
    cluster.create(manifest)

    final = wait_until(
        lambda: (
            (s := status(cluster, "random-integer")).get("phase") == c.Phase.FAILED
            and any(cond["type"] == c.ConditionType.FAILED for cond in s.get("conditions") or [])
            and s
        ),
        timeout=150,
        what="the experiment to fail",
    )
    failed = condition(final, c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.ARTIFACT_STORE_FAILED
    assert "s3://nowhere/runs" in failed["message"]
    assert "Traceback" not in final["message"]
    assert FAKE_KEY not in str(final)
