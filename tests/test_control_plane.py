"""The test cluster itself: upstream control plane, the stand-in kubelet, real Job controller.

These tests pin down what every other Kubernetes test relies on, so that a failure here
points at the test cluster rather than at the product.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from support.cluster import Cluster
from support.controlplane import ApiError, ControlPlane
from support.kubelet import NODE_NAME, StandInKubelet

pytestmark = [pytest.mark.timeout(120)]

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def python_job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11",
                            "command": [sys.executable, "-c", code],
                            "securityContext": RESTRICTED_CONTAINER,
                        }
                    ],
                }
            },
            **spec,
        },
    }


def finished(job: dict[str, Any] | None) -> str | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_the_control_plane_serves_the_pinned_kubernetes_version(
    control_plane: ControlPlane, cluster: Cluster
) -> None:
    version = control_plane.request("GET", "/version")
    assert version["gitVersion"] == "v1.36.3"
    client = cluster.kubectl("version", "-o", "json")
    assert json.loads(client.stdout)["clientVersion"]["gitVersion"] == "v1.36.3"
    assert "WARNING" not in client.stderr  # no version skew between kubectl and the server


def test_rbac_is_enforced_for_service_accounts(cluster: Cluster) -> None:
    token = cluster.plane.token(cluster.namespace, "default")
    with pytest.raises(ApiError) as refused:
        cluster.plane.request("GET", f"/api/v1/namespaces/{cluster.namespace}/secrets", token=token)
    assert refused.value.status == 403


def test_the_stand_in_node_is_ready(control_plane: ControlPlane, kubelet: StandInKubelet) -> None:
    node = control_plane.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert not node["spec"].get("taints")


def test_a_job_runs_to_complete_through_the_real_job_controller(
    cluster: Cluster, kubelet: StandInKubelet
) -> None:
    cluster.create(python_job("hello", "print('hello from a pod')"))
    job = cluster.wait_for("jobs", "hello", finished, what="the Job to finish")
    assert finished(job) == "Complete"
    assert job["status"]["succeeded"] == 1
    (pod,) = cluster.list("pods", labelSelector="job-name=hello")
    assert pod["spec"]["nodeName"] == NODE_NAME  # bound by the real scheduler
    assert pod["status"]["phase"] == "Succeeded"
    logs = cluster.kubectl("logs", "job/hello")
    assert logs.stdout.strip() == "hello from a pod"


def test_a_failing_pod_fails_its_job_with_backoff_limit_exceeded(
    cluster: Cluster, kubelet: StandInKubelet
) -> None:
    cluster.create(python_job("broken", "import sys; sys.exit(3)"))
    job = cluster.wait_for("jobs", "broken", finished, what="the Job to fail")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    (pod,) = cluster.list("pods", labelSelector="job-name=broken")
    (state,) = pod["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 3


def test_a_job_past_its_deadline_has_its_pod_stopped(
    cluster: Cluster, kubelet: StandInKubelet
) -> None:
    cluster.create(python_job("slow", "import time; time.sleep(600)", activeDeadlineSeconds=1))
    job = cluster.wait_for("jobs", "slow", finished, what="the deadline")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    cluster.wait_for(
        "jobs",
        "slow",
        lambda j: not kubelet.main_running("slow", cluster.namespace),
        what="the process to be stopped",
    )


def test_a_pod_authenticates_as_its_service_account(
    cluster: Cluster, kubelet: StandInKubelet
) -> None:
    code = (
        "import json, os, yaml; "
        "config = yaml.safe_load(open(os.environ['KUBECONFIG'])); "
        "print(config['contexts'][0]['context']['namespace'])"
    )
    cluster.create(python_job("whoami", code))
    assert finished(cluster.wait_for("jobs", "whoami", finished)) == "Complete"
    assert cluster.kubectl("logs", "job/whoami").stdout.strip() == cluster.namespace
    (pod,) = cluster.list("pods", labelSelector="job-name=whoami")
    review = cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=kubelet.token_of(cluster.namespace, pod["metadata"]["name"]),
    )
    assert review["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{cluster.namespace}:default"
    )


def test_a_pod_that_breaks_the_restricted_profile_is_refused(cluster: Cluster) -> None:
    job = python_job("rooted", "print(1)")
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"runAsUser": 0}
    with pytest.raises(ApiError) as refused:
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "rooted"},
                "spec": job["spec"]["template"]["spec"],
            }
        )
    assert refused.value.status == 403
    assert "restricted" in str(refused.value.body)
