"""Proof that the Kubernetes API emulator fixture behaves as kopf, kubectl and clients need."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.request
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from support.k8s_emulator import ApiError, K8sApi, wait_until

EXPERIMENT = {
    "apiVersion": "dioptra.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "exp-1"},
    "spec": {"flow": "demo"},
}


def _kubectl() -> str:
    for candidate in (pathlib.Path(__file__).parents[1] / ".tools/bin/kubectl",):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed")
    return found


def test_created_objects_get_uid_resource_version_timestamp_and_generation(k8s_api: K8sApi) -> None:
    created = k8s_api.create(EXPERIMENT)
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert k8s_api.get("experiments", "exp-1") == created


def test_generate_name_gives_a_unique_name(k8s_api: K8sApi) -> None:
    body = {**EXPERIMENT, "metadata": {"generateName": "exp-"}}
    names = {k8s_api.create(body)["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("exp-") and len(n) == 9 for n in names)


def test_status_patches_never_change_spec_and_spec_patches_never_change_status(
    k8s_api: K8sApi,
) -> None:
    k8s_api.create(EXPERIMENT)
    after_status = k8s_api.patch(
        "experiments",
        "exp-1",
        {"spec": {"flow": "x"}, "status": {"phase": "Running"}},
        subresource="status",
    )
    after_spec = k8s_api.patch(
        "experiments", "exp-1", {"spec": {"flow": "y"}, "status": {"phase": "Hacked"}}
    )
    assert after_status["spec"] == {"flow": "demo"} and after_status["metadata"]["generation"] == 1
    assert (
        after_spec["status"] == {"phase": "Running"} and after_spec["metadata"]["generation"] == 2
    )
    assert int(after_spec["metadata"]["resourceVersion"]) > int(
        after_status["metadata"]["resourceVersion"]
    )


def test_a_failed_json_patch_test_answers_422(k8s_api: K8sApi) -> None:
    k8s_api.create(EXPERIMENT)
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    with pytest.raises(ApiError) as error:
        k8s_api.patch("experiments", "exp-1", stale)
    assert error.value.status == 422


def test_a_watch_from_a_resource_version_sends_only_later_events(k8s_api: K8sApi) -> None:
    first = k8s_api.create(EXPERIMENT)
    k8s_api.patch("experiments", "exp-1", {"status": {"phase": "Running"}}, subresource="status")
    rv = first["metadata"]["resourceVersion"]
    query = f"?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    url = f"{k8s_api.url}{k8s_api.path('experiments')}{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["status"]["phase"]) for e in events] == [
        ("MODIFIED", "Running")
    ]


def test_lists_name_their_kind_and_resource_version(k8s_api: K8sApi) -> None:
    k8s_api.create(EXPERIMENT)
    listing = k8s_api.request("GET", k8s_api.path("experiments", "default"))
    assert listing["kind"] == "ExperimentList"
    assert listing["apiVersion"] == "dioptra.dev/v1alpha1"
    assert (
        listing["metadata"]["resourceVersion"] == listing["items"][0]["metadata"]["resourceVersion"]
    )


def test_the_request_log_stays_trimmed_while_requests_are_recorded(k8s_api: K8sApi) -> None:
    k8s_api.create(EXPERIMENT)
    for _ in range(50):
        k8s_api.get("experiments", "exp-1")
    assert k8s_api.server.call(lambda: len(k8s_api.emulator._requests)) == 0
    assert len(k8s_api.requests) == 51


def test_injected_failures_answer_the_given_status_then_stop(k8s_api: K8sApi) -> None:
    k8s_api.create(EXPERIMENT)
    k8s_api.fail("GET", r"/experiments/exp-1$", status=500, times=2)
    statuses = []
    for _ in range(3):
        try:
            k8s_api.get("experiments", "exp-1")
            statuses.append(200)
        except ApiError as e:
            statuses.append(e.status)
    assert statuses == [500, 500, 200]


def test_kubectl_lists_experiments_and_namespaces(k8s_api: K8sApi) -> None:
    k8s_api.create(EXPERIMENT)
    kubectl = [_kubectl(), "--kubeconfig", str(k8s_api.kubeconfig_path)]
    experiments = subprocess.run(
        [*kubectl, "get", "experiments", "-o", "name"], capture_output=True, text=True, check=True
    )
    namespaces = subprocess.run(
        [*kubectl, "get", "namespaces", "-o", "name"], capture_output=True, text=True, check=True
    )
    assert experiments.stdout.split() == ["experiment.dioptra.dev/exp-1"]
    assert namespaces.stdout.split() == ["namespace/default"]


@pytest.fixture()
def kopf_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)
    return registry


def test_a_kopf_operator_creates_a_job_and_patches_status(
    k8s_api: K8sApi, kopf_registry: kopf.OperatorRegistry
) -> None:
    @kopf.on.login(registry=kopf_registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=k8s_api.url, insecure=True, token="test-token")

    @kopf.on.create("dioptra.dev", "v1alpha1", "experiments", registry=kopf_registry)
    def create(
        body: kopf.Body, namespace: str | None, name: str, patch: kopf.Patch, **_: Any
    ) -> None:
        import kubernetes.client

        job: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{name}-run"},
            "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
        }
        kopf.adopt(job, owner=body)
        batch = kubernetes.client.BatchV1Api(k8s_api.api_client())
        batch.create_namespaced_job(namespace or "default", job)  # type: ignore[arg-type]
        patch.status["phase"] = "Pending"
        patch.status["jobName"] = job["metadata"]["name"]

    started = time.monotonic()
    with KopfRunner(
        ["run", "--standalone", "--all-namespaces"], registry=kopf_registry, timeout=30
    ) as runner:
        k8s_api.create(EXPERIMENT)
        experiment = wait_until(
            lambda: (e := k8s_api.get("experiments", "exp-1")).get("status", {}).get("phase") and e,
            what="the operator to patch the status",
        )
        job = k8s_api.get("jobs", "exp-1-run")
    assert runner.exit_code == 0, runner.output
    assert experiment["status"]["phase"] == "Pending" and experiment["spec"] == EXPERIMENT["spec"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == experiment["metadata"]["uid"]
    assert time.monotonic() - started < 15
    assert threading.active_count() < 50
