"""End to end: a run in the cluster keeps its task outputs in the S3 artifact store.

The real control plane, operator, Job controller, plugin sync and runner (see
test_e2e_experiment); the store is a bucket on the moto S3 server, reached with the plugins'
endpoint and Secret, which the operator passes to the runner container by secretKeyRef.
"""

from __future__ import annotations

import hashlib

import pytest
from support.cluster import Cluster, OperatorProcess
from support.kubelet import StandInKubelet
from support.s3 import S3Server
from test_e2e_experiment import builtins_bucket, example, succeeded

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
