"""The README's "Install on a cluster" commands, run with the real helm and kubectl
against the API emulator (helm renders, kubectl applies: `helm install` itself needs a
real API server, see TESTING-NOTES.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.k8s_emulator import K8sApi

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    search = os.pathsep.join([str(REPO / ".tools" / "bin"), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make tools` (it lands in .tools/bin/)")
    return found


def run(
    command: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done


@pytest.fixture
def cluster_env(k8s_api: K8sApi, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        **k8s_api.env(),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }


def test_the_chart_applies_and_an_example_experiment_can_be_created_and_listed(
    k8s_api: K8sApi, cluster_env: dict[str, str]
) -> None:
    kubectl, helm = tool("kubectl"), tool("helm")
    rendered = run(
        [
            helm,
            "template",
            "dioptra-operator",
            "charts/dioptra-operator",
            "--namespace",
            "default",
            "--set",
            "s3.credentialsSecret=s3-credentials",
        ],
        cluster_env,
    ).stdout
    run([kubectl, "apply", "--validate=false", "-f", "-"], cluster_env, stdin=rendered)
    run(
        [
            kubectl,
            "create",
            "secret",
            "generic",
            "s3-credentials",
            "--from-literal=AWS_ACCESS_KEY_ID=example",
            "--from-literal=AWS_SECRET_ACCESS_KEY=example-secret",
        ],
        cluster_env,
    )
    run([kubectl, "apply", "--validate=false", "-f", "examples/random-integer.yaml"], cluster_env)
    listed = run([kubectl, "get", "experiments", "-o", "json"], cluster_env).stdout

    assert [item["metadata"]["name"] for item in json.loads(listed)["items"]] == ["random-integer"]
    assert k8s_api.exists("deployments", "dioptra-operator")
    assert k8s_api.exists("serviceaccounts", "dioptra-runner")
    assert k8s_api.exists("secrets", "s3-credentials")
