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
from support.cluster import Cluster, private_control_plane, wait_for_crd
from support.controlplane import kubectl_env
from support.kubelet import running_kubelet
from support.lock import locked_versions, normalized
from support.s3 import FAKE_KEY, S3Server, start_moto_server
from test_e2e_experiment import credentials_secret, example, push_builtins
from test_helm_install import NAMESPACE, Installation, helm_install, install_values, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> None:
    """The tier needs podman and the built images; without them it fails with the reason."""
    reason = podman.unusable_reason()
    if reason is not None:
        pytest.fail(f"image tier: {reason}", pytrace=False)


@dataclass
class ImageCluster:
    installation: Installation  # the admin's cluster is in `default`, where Experiments go
    bucket: str
    endpoint: str

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.installation.cluster.create(manifest)
        return wait_terminal(self.installation.cluster, manifest["metadata"]["name"])

    def logs(self) -> dict[str, str]:
        return {
            **self.installation.kubelet.logs_in("default"),
            "operator": self.installation.operator_log()[-3000:],
        }


def image_values() -> list[str]:
    """The chart pointed at the locally built images, never pulled."""
    values = []
    for prefix, image in (("image", podman.OPERATOR_IMAGE), ("runner.image", podman.RUNNER_IMAGE)):
        repository, tag = image.rsplit(":", 1)
        values += [
            "--set",
            f"{prefix}.repository={repository}",
            "--set",
            f"{prefix}.tag={tag}",
            "--set",
            f"{prefix}.pullPolicy=Never",
        ]
    return values


@pytest.fixture(scope="module")
def image_cluster(
    images: None, tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[ImageCluster]:
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
        # No Prefect server: each runner starts its own, as in a default install.
        installation = Installation(cluster, node, kubectl_env(cluster.kubeconfig_path))
        helm_install(installation, [*install_values(s3_server, None), *image_values()])
        wait_for_crd(plane)
        yield ImageCluster(installation, bucket, s3_server.endpoint_url)


def test_the_operator_runs_from_its_image_as_its_service_account(
    image_cluster: ImageCluster,
) -> None:
    (pod,) = image_cluster.installation.operator_pods()
    assert pod["status"]["phase"] == "Running"
    commands = image_cluster.installation.kubelet.commands
    command = commands[f"{NAMESPACE}/{pod['metadata']['name']}/operator"]
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
    commands = image_cluster.installation.kubelet.commands
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
        credentials_secret(
            image_cluster.installation.cluster, "wrong-credentials", "AKIDWRONG", "wrong-secret"
        )
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
def test_the_image_holds_the_locked_versions_the_tests_ran_with(images: None, image: str) -> None:
    listed = podman.podman(
        "run", "--rm", "--entrypoint=/opt/venv/bin/python", image, "-c", LIST_DISTRIBUTIONS
    ).stdout.split()
    pins = locked_versions()
    installed = dict(normalized(line).split("==", 1) for line in listed)
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
                left_out.add(normalized(requirement.name))
    return left_out


def _restricted_run(
    image: str, *args: str, env: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The image under a restricted Pod's settings, without any volume."""
    return podman.podman(
        "run",
        "--rm",
        *podman.RESTRICTED_FLAGS,
        *(f"--env={item}" for item in env),
        image,
        *args,
        check=False,
    )


def test_the_operator_image_without_a_cluster_says_so_in_one_line(images: None) -> None:
    ran = _restricted_run(podman.OPERATOR_IMAGE)
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert "kubeconfig" in line.lower() and "Traceback" not in line


def test_the_runner_image_without_a_writable_tmp_says_so_in_one_line(images: None) -> None:
    experiment = json.dumps(yaml.safe_load((REPO / "examples/minimal.yaml").read_text()))
    ran = _restricted_run(
        podman.RUNNER_IMAGE, "run", "--in-cluster", env=(f"DIOPTRA_EXPERIMENT={experiment}",)
    )
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_HOME" in lines[0], ran.stderr[-2000:]
