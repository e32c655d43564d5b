"""`helm install`, `helm test`, `helm upgrade` and `helm uninstall` on a real control plane.

Each test gets an empty cluster of its own, as a new user has: the chart installs the CRD, the
operator runs from the chart's Deployment (the stand-in kubelet runs its Pod, logged in with the
Pod's own ServiceAccount token), and the README's commands are replayed with only the S3
endpoint and the Prefect API pointed at the test's servers.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
import yaml
from support.cluster import CHART, Cluster, helm, private_control_plane, wait_for_crd
from support.controlplane import ApiError, free_port, kubectl_env
from support.kubelet import StandInKubelet, running_kubelet
from support.s3 import FAKE_KEY, S3Server
from test_e2e_experiment import push_builtins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
RELEASE = "dioptra-operator"
NAMESPACE = "dioptra"


@dataclass
class Installation:
    """An empty cluster, its kubelet, and the helm/kubectl environment for it."""

    cluster: Cluster  # admin, in the `default` namespace (where the README applies examples)
    kubelet: StandInKubelet
    env: dict[str, str]

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm(*args, env=self.env, check=check)

    def operator_pods(self) -> list[dict[str, Any]]:
        return self.cluster.list(
            "pods",
            NAMESPACE,
            labelSelector="app.kubernetes.io/name=dioptra-operator,"
            "app.kubernetes.io/component=operator",
        )

    def operator_log(self) -> str:
        return "\n".join(
            self.kubelet.log_of(NAMESPACE, pod["metadata"]["name"], "operator")
            for pod in self.operator_pods()
        )


@pytest.fixture()
def empty_cluster(tmp_path: Path) -> Iterator[Installation]:
    with private_control_plane(tmp_path / "controlplane") as plane, running_kubelet(plane) as node:
        cluster = Cluster(plane, "default", tmp_path / "cluster")
        cluster.wait_for("serviceaccounts", "default", bool)
        env = kubectl_env(cluster.kubeconfig_path)
        yield Installation(cluster, node, env)


def install_values(s3: S3Server, prefect_api_url: str | None) -> list[str]:
    """The README's values, pointed at the test's S3 server, plus free ports for the node.

    `prefect_api_url`: the session's Prefect server; None keeps the default, each runner's own
    temporary server (works too, and only costs a few seconds more per run).
    """
    values = [
        "--set",
        f"s3.endpoint={s3.endpoint_url}",
        "--set",
        "s3.credentialsSecret=s3-credentials",
        "--set",
        "runner.namespaces={default}",
        # Pods of the stand-in kubelet share the host's ports.
        "--set",
        f"health.port={free_port()}",
        "--set",
        f"metrics.port={free_port()}",
    ]
    if prefect_api_url is not None:
        values += ["--set", f"prefect.apiUrl={prefect_api_url}"]
    return values


def readme_experiment(s3: S3Server) -> dict[str, Any]:
    """examples/random-integer.yaml with its bucket replaced by the test's."""
    manifest = copy.deepcopy(yaml.safe_load((REPO / "examples/random-integer.yaml").read_text()))
    bucket = s3.new_bucket()
    push_builtins(s3, bucket)
    manifest["spec"]["plugins"]["sources"] = [f"s3://{bucket}/dioptra_builtins"]
    return dict(manifest)


def helm_install(inst: Installation, values: list[str]) -> None:
    inst.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        *values,
    )


def create_credentials(inst: Installation) -> None:
    inst.cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3-credentials",
        f"--from-literal=AWS_ACCESS_KEY_ID={FAKE_KEY}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={FAKE_KEY}",
    )


def wait_terminal(cluster: Cluster, name: str, namespace: str | None = None) -> dict[str, Any]:
    return dict(
        cluster.wait_for(
            "experiments",
            name,
            lambda e: ((e or {}).get("status") or {}).get("phase") in c.Phase.TERMINAL,
            timeout=180,
            namespace=namespace,
            what=f"{name} to finish",
        )["status"]
    )


def test_the_readme_install_runs_the_example_and_passes_helm_test(
    empty_cluster: Installation, s3_server: S3Server, prefect_api_url: str
) -> None:
    inst = empty_cluster
    helm_install(inst, install_values(s3_server, prefect_api_url))
    wait_for_crd(inst.cluster.plane)
    (pod,) = inst.operator_pods()
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["status"]["phase"] == "Running"

    tested = inst.helm("test", RELEASE, "-n", NAMESPACE, check=False)
    test_command = inst.kubelet.commands[f"{NAMESPACE}/{RELEASE}-test-health/wget"]
    assert tested.returncode == 0, (tested.stderr, test_command, inst.operator_log()[-3000:])
    assert "Phase:          Succeeded" in tested.stdout

    create_credentials(inst)
    manifest = readme_experiment(s3_server)
    inst.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    final = wait_terminal(inst.cluster, "random-integer")
    assert final["phase"] == c.Phase.SUCCEEDED, (final, inst.operator_log())
    assert final["progress"] == "3/3"

    table = inst.cluster.kubectl("get", "experiments").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "TASKS", "DURATION", "AGE"]
    assert table[1].split()[:3] == ["random-integer", "Succeeded", "3/3"]
    described = inst.cluster.kubectl("describe", "experiment", "random-integer").stdout
    assert "JobCreated" in described and "Complete" in described
    sync_log = inst.cluster.kubectl("logs", "job/random-integer-g1", "-c", "sync").stdout
    assert "synced" in sync_log
    runner_log = inst.cluster.kubectl("logs", "job/random-integer-g1", "-c", "runner").stdout
    assert runner_log.strip()
    assert FAKE_KEY not in sync_log + runner_log + str(final)


def test_an_upgrade_to_single_namespace_mode_replaces_the_operator_and_its_rights(
    empty_cluster: Installation, s3_server: S3Server, prefect_api_url: str
) -> None:
    inst = empty_cluster
    values = install_values(s3_server, prefect_api_url)
    helm_install(inst, values)
    (first,) = inst.operator_pods()
    inst.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
        *values,
        "--set",
        "watch.clusterWide=false",
        "--set",
        "watch.namespaces={default}",
    )
    (second,) = inst.operator_pods()
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    args = second["spec"]["containers"][0]["args"]
    assert "--namespace=default" in args and "--all-namespaces" not in args
    # The operator now may act in `default` only: its ClusterRole is gone.
    with pytest.raises(ApiError) as gone:
        inst.cluster.get("clusterroles", RELEASE)
    assert gone.value.status == 404
    create_credentials(inst)
    inst.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(readme_experiment(s3_server)))
    final = wait_terminal(inst.cluster, "random-integer")
    assert final["phase"] == c.Phase.SUCCEEDED, (final, inst.operator_log())


def test_uninstall_keeps_the_crd_and_the_experiments(
    empty_cluster: Installation, s3_server: S3Server, prefect_api_url: str
) -> None:
    inst = empty_cluster
    helm_install(inst, install_values(s3_server, prefect_api_url))
    inst.cluster.create(
        {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "metadata": {"name": "kept"},
            "spec": {"entryPoint": {"module": "acme.flows:flow"}, "suspend": True},
        }
    )
    inst.cluster.wait_for(
        "experiments", "kept", lambda e: ((e or {}).get("status") or {}).get("jobName")
    )
    inst.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    assert inst.cluster.exists("customresourcedefinitions", "experiments.dioptra.dev")
    assert inst.cluster.exists("experiments", "kept")
    assert not inst.cluster.exists("deployments", RELEASE, NAMESPACE)
    assert not inst.cluster.exists("clusterroles", RELEASE)
    listed = inst.helm("list", "-A", "-q").stdout.split()
    assert RELEASE not in listed
    # Deletable without the operator: no finalizer holds it.
    inst.cluster.delete("experiments", "kept")
    inst.cluster.wait_for("experiments", "kept", lambda e: e is None, what="the deletion")
