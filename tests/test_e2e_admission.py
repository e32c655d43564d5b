"""End to end: schema admission in front of the operator, as an API server would do it.

kmock does not validate custom resources, so `apply` here plays the API server's part: it
checks the manifest against the CRD's `openAPIV3Schema` (jsonschema) and its CEL rules, and
fills in defaults, before anything reaches the emulator. A malformed spec is rejected at
"kubectl apply" time and the operator never sees it; every example is admitted and gets a Job.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dioptra_operator import constants as c
from dioptra_runner import schema
from support.k8s_emulator import K8sApi, wait_until
from support.kubelet import OperatorProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
VALID: dict[str, Any] = {
    "apiVersion": "dioptra.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "checked", "namespace": "default"},
    "spec": {"entryPoint": {"module": "acme.flows:flow"}},
}


class Rejected(Exception):
    """What `kubectl apply` would print for an invalid manifest."""


def apply(api: K8sApi, manifest: dict[str, Any]) -> dict[str, Any]:
    """Validate like the API server (schema, CEL, defaults), then create."""
    node = schema.crd_version_schema(schema.load_crd())
    try:
        jsonschema.validate(manifest, schema.to_json_schema(node))
    except jsonschema.ValidationError as e:
        raise Rejected(f"{'.'.join(map(str, e.absolute_path))}: {e.message}") from None
    violations = schema.cel_violations(node, manifest)
    if violations:
        raise Rejected("; ".join(f"{path}: {message}" for path, message in violations))
    return dict(api.create(schema.apply_defaults(node, manifest)))


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    manifest["spec"].update(changes)
    return manifest


@pytest.mark.parametrize(
    "manifest",
    [
        with_spec(backoffLimit=-1),
        with_spec(entryPoint={"module": "acme.flows:flow", "script": "x = 1"}),
        with_spec(entryPoint={"module": "not a module path"}),
        with_spec(plugins={"sources": ["s3://UPPER/prefix"]}),
        with_spec(suspend="yes"),
        with_spec(entrypoint={"module": "acme.flows:flow"}),
        {**VALID, "spec": {"parameters": {"n": 1}}},
    ],
    ids=[
        "negative-backoff",
        "two-entry-points",
        "bad-module",
        "bad-bucket",
        "suspend-not-bool",
        "misspelt-field",
        "no-entry-point",
    ],
)
def test_a_malformed_experiment_is_rejected_before_the_operator_sees_it(
    k8s_api: K8sApi, operator_process: OperatorProcess, manifest: dict[str, Any]
) -> None:
    with pytest.raises(Rejected):
        apply(k8s_api, manifest)
    assert k8s_api.list("experiments", "default") == []
    assert k8s_api.list("jobs", "default") == []


def _laptop_only(manifest: dict[str, Any]) -> bool:
    sources = manifest["spec"].get("plugins", {}).get("sources", [])
    return any(not source.startswith("s3://") for source in sources)


CLUSTER_EXAMPLES = [p for p in EXAMPLES if not _laptop_only(yaml.safe_load(p.read_text()))]
LAPTOP_EXAMPLES = [p for p in EXAMPLES if p not in CLUSTER_EXAMPLES]


@pytest.mark.parametrize("path", CLUSTER_EXAMPLES, ids=[p.stem for p in CLUSTER_EXAMPLES])
def test_every_cluster_example_is_admitted_and_gets_a_job(
    k8s_api: K8sApi, operator_process: OperatorProcess, path: Path
) -> None:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"]["namespace"] = "default"
    apply(k8s_api, manifest)
    name = manifest["metadata"]["name"]
    sweep = manifest["spec"].get("sweep")
    if sweep is None:
        wait_until(
            lambda: k8s_api.get("experiments", name).get("status", {}).get("jobName"),
            what=f"the Job of {path.name}",
        )
        assert k8s_api.exists("jobs", f"{name}-g1")
        return
    # A sweep starts its first point Jobs (as many as maxConcurrent allows), named per point.
    selector = f"{c.LABEL_EXPERIMENT}={name}"
    jobs = wait_until(
        lambda: k8s_api.list("jobs", "default", labelSelector=selector),
        what=f"the point Jobs of {path.name}",
    )
    assert all(job["metadata"]["name"].startswith(f"{name}-g1-") for job in jobs)
    assert 1 <= len(jobs) <= sweep.get("maxConcurrent", 1)


@pytest.mark.parametrize("path", LAPTOP_EXAMPLES, ids=[p.stem for p in LAPTOP_EXAMPLES])
def test_an_example_with_local_plugin_folders_is_admitted_but_refused_by_the_operator(
    k8s_api: K8sApi, operator_process: OperatorProcess, path: Path
) -> None:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"]["namespace"] = "default"
    apply(k8s_api, manifest)
    name = manifest["metadata"]["name"]
    status = wait_until(
        lambda: (s := k8s_api.get("experiments", name).get("status", {})).get("phase") and s,
        what=f"the operator's verdict on {path.name}",
    )
    assert status["phase"] == "Failed"
    assert "s3://" in status["message"]
    assert not k8s_api.exists("jobs", f"{name}-g1")
