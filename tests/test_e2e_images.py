"""The image tier: the chart's operator and the Experiments' Jobs run in the images we build.

On a control plane of its own, the Helm chart is installed with the locally built images
(tests/images/build.sh, run by `make test`); the stand-in kubelet runs every container in its
image with podman, with the Pod's security context (UID 65532, read-only root, all capabilities
dropped), its volumes, env and ServiceAccount token, on the host network beside a local S3
server. Nothing runs from the test's virtualenv: the operator logs in from its Pod, the init
container syncs the plugins, and the runner runs the flow on its own temporary Prefect server,
as in a default install.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
import yaml
from support import podman
from support.cluster import CHART, Cluster, helm, private_control_plane, wait_for_crd
from support.controlplane import free_port, kubectl_env
from support.kubelet import StandInKubelet, running_kubelet
from support.s3 import FAKE_KEY, S3Server, start_moto_server
from test_e2e_experiment import credentials_secret, example, push_builtins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
RELEASE = "dioptra-operator"
NAMESPACE = "dioptra"


@dataclass
class ImageCluster:
    cluster: Cluster  # admin, in `default`, where the Experiments go
    kubelet: StandInKubelet
    bucket: str
    endpoint: str

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.cluster.create(manifest)
        name = manifest["metadata"]["name"]
        final = self.cluster.wait_for(
            "experiments",
            name,
            lambda e: ((e or {}).get("status") or {}).get("phase") in c.Phase.TERMINAL,
            timeout=300,
            what=f"{name} to finish",
        )
        return dict(final["status"])

    def logs(self) -> dict[str, str]:
        return {
            **self.kubelet.logs_in("default"),
            **{f"operator/{k}": v[-3000:] for k, v in self.kubelet.logs_in(NAMESPACE).items()},
        }


@pytest.fixture(scope="module")
def image_cluster(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[ImageCluster]:
    reason = podman.unusable_reason()
    if reason is not None:
        pytest.fail(f"image tier: {reason}", pytrace=False)
    folder = tmp_path_factory.mktemp("image-tier")
    with (
        private_control_plane(folder / "controlplane") as plane,
        running_kubelet(plane, images=True) as node,
    ):
        cluster = Cluster(plane, "default", folder / "cluster")
        cluster.wait_for("serviceaccounts", "default", bool)
        bucket = s3_server.new_bucket()
        push_builtins(s3_server, bucket)
        credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
        repository, tag = podman.RUNNER_IMAGE.rsplit(":", 1)
        operator_repository = podman.OPERATOR_IMAGE.rsplit(":", 1)[0]
        helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "120s",
            "--set",
            f"image.repository={operator_repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            f"runner.image.repository={repository}",
            "--set",
            f"runner.image.tag={tag}",
            "--set",
            "runner.image.pullPolicy=Never",
            "--set",
            "runner.namespaces={default}",
            "--set",
            f"s3.endpoint={s3_server.endpoint_url}",
            "--set",
            "s3.credentialsSecret=s3-credentials",
            # Pods of the stand-in kubelet share the host's ports.
            "--set",
            f"health.port={free_port()}",
            "--set",
            f"metrics.port={free_port()}",
            env=kubectl_env(cluster.kubeconfig_path),
        )
        wait_for_crd(plane)
        yield ImageCluster(cluster, node, bucket, s3_server.endpoint_url)


def test_the_operator_runs_from_its_image_as_its_service_account(
    image_cluster: ImageCluster,
) -> None:
    (pod,) = image_cluster.cluster.list(
        "pods", NAMESPACE, labelSelector="app.kubernetes.io/component=operator"
    )
    assert pod["status"]["phase"] == "Running"
    command = image_cluster.kubelet.commands[f"{NAMESPACE}/{pod['metadata']['name']}/operator"]
    assert command[:2] == ["podman", "run"] and podman.OPERATOR_IMAGE in command
    assert "--user=65532:65532" in command and "--read-only" in command
    assert "--cap-drop=ALL" in command


def test_random_integer_succeeds_in_the_runner_image(image_cluster: ImageCluster) -> None:
    final = image_cluster.finish(
        example("random-integer", image_cluster.bucket, image_cluster.endpoint)
    )
    assert final["phase"] == c.Phase.SUCCEEDED, (final.get("message"), image_cluster.logs())
    assert final["progress"] == "3/3"
    assert final["plugins"], "the synced plugin versions are recorded"
    commands = image_cluster.kubelet.commands
    (sync,) = [
        argv
        for key, argv in commands.items()
        if key.startswith("default/random-integer-") and key.endswith("/sync")
    ]
    assert podman.RUNNER_IMAGE in sync and "--user=65532:65532" in sync


def test_adversarial_digits_succeeds_in_the_runner_image(image_cluster: ImageCluster) -> None:
    manifest = example("adversarial-digits", image_cluster.bucket, image_cluster.endpoint)
    final = image_cluster.finish(manifest)
    assert final["phase"] == c.Phase.SUCCEEDED, (final.get("message"), image_cluster.logs())
    assert final["tasksDone"] == final["tasksTotal"] > 3
    summary = final["results"]["outputs"]["dioptra_builtins.metrics.report.summarize"]
    # The same figures as the demo's: FGSM hurts, feature squeezing wins some back.
    assert summary["adversarial_accuracy"] < summary["defended_accuracy"]
    assert summary["defended_accuracy"] < summary["clean_accuracy"]


def test_bad_credentials_fail_the_sync_in_the_runner_image(image_cluster: ImageCluster) -> None:
    strict = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # enforces credentials
    try:
        credentials_secret(image_cluster.cluster, "wrong-credentials", "AKIDWRONG", "wrong-secret")
        manifest = example("random-integer", "plugins", strict.endpoint_url)
        manifest["metadata"]["name"] = "bad-credentials"
        manifest["spec"]["plugins"]["credentialsSecretRef"] = {"name": "wrong-credentials"}
        final = image_cluster.finish(manifest)
    finally:
        strict.stop()
    assert final["phase"] == c.Phase.FAILED
    failed = next(x for x in final["conditions"] if x["type"] == c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.PLUGIN_SYNC_FAILED, final
    assert "InvalidAccessKeyId" in final["message"]
    assert "Traceback" not in final["message"] and "wrong-secret" not in str(final)


LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m; "
    "print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))"
)


@pytest.mark.parametrize("image", [podman.RUNNER_IMAGE, podman.OPERATOR_IMAGE])
def test_the_image_holds_the_locked_versions_the_tests_ran_with(image: str) -> None:
    reason = podman.unusable_reason()
    if reason is not None:
        pytest.fail(f"image tier: {reason}", pytrace=False)
    listed = podman.podman(
        "run", "--rm", "--entrypoint=/opt/venv/bin/python", image, "-c", LIST_DISTRIBUTIONS
    ).stdout.split()
    pins = {
        name.lower().replace("_", "-"): version
        for name, version in (
            line.split("==", 1)
            for line in (REPO / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }
    installed = dict(line.lower().replace("_", "-").split("==", 1) for line in listed)
    installed.pop("dioptra-operator")
    assert len(installed) > 20
    assert {n: v for n, v in installed.items() if n in pins and pins[n] != v} == {}
    # Unlocked only: what a requirement's marker leaves out on the Python the lock was made
    # with (Debian's Python 3.11.2 needs async-timeout for redis; the tests' 3.11.7 does not).
    assert set(installed) - set(pins) <= _left_out_by_markers_here()


def _left_out_by_markers_here() -> set[str]:
    import importlib.metadata

    from packaging.requirements import Requirement

    left_out = set()
    for dist in importlib.metadata.distributions():
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker and "extra" not in str(marker) and not marker.evaluate():
                left_out.add(requirement.name.lower().replace("_", "-"))
    return left_out


def _restricted_run(
    image: str, *args: str, env: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The image under a restricted Pod's settings, without any volume."""
    reason = podman.unusable_reason()
    if reason is not None:
        pytest.fail(f"image tier: {reason}", pytrace=False)
    return podman.podman(
        "run",
        "--rm",
        "--network=host",
        "--user=65532:65532",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        *(f"--env={item}" for item in env),
        image,
        *args,
        check=False,
    )


def test_the_operator_image_without_a_cluster_says_so_in_one_line() -> None:
    ran = _restricted_run(podman.OPERATOR_IMAGE)
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert "kubeconfig" in line.lower() and "Traceback" not in line


def test_the_runner_image_without_a_writable_tmp_says_so_in_one_line() -> None:
    experiment = json.dumps(yaml.safe_load((REPO / "examples/minimal.yaml").read_text()))
    ran = _restricted_run(
        podman.RUNNER_IMAGE, "run", "--in-cluster", env=(f"DIOPTRA_EXPERIMENT={experiment}",)
    )
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_HOME" in lines[0], ran.stderr[-2000:]
