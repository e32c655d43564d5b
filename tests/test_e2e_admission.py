"""End to end: `kubectl apply` in front of the running operator, on the real API server.

A malformed spec is refused by the API server (schema, CEL, strict field validation) at apply
time, as kubectl's own log of its requests shows, so the operator never sees it; every example
is admitted and gets its Job; an example that only `dioptra run` can run (local plugin folders)
is admitted by the schema and refused by the operator.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cluster import Cluster, OperatorProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
VALID: dict[str, Any] = {
    "apiVersion": "dioptra.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "checked"},
    "spec": {"entryPoint": {"module": "acme.flows:flow"}},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    manifest["spec"].update(changes)
    return manifest


def apply(cluster: Cluster, manifest: dict[str, Any]) -> Any:
    """`kubectl apply` with kubectl's own log of its requests and their answers (`-v=6`)."""
    return cluster.kubectl("apply", "-v=6", "-f", "-", check=False, input=yaml.safe_dump(manifest))


def creates_sent(stderr: str) -> list[tuple[str, int]]:
    """(query, HTTP status) of each Experiment create kubectl sent, from its `-v=6` log."""
    found = re.findall(
        r'"Response" verb="POST" url="[^"?]*/experiments\?([^"]*)" status="(\d+)', stderr
    )
    return [(query, int(status)) for query, status in found]


MALFORMED = {
    "negative-backoff": (with_spec(backoffLimit=-1), "spec.backoffLimit"),
    "two-entry-points": (
        with_spec(entryPoint={"module": "acme.flows:flow", "script": "x = 1"}),
        "exactly one of module, script, configMapRef or taskGraph must be set",
    ),
    "bad-module": (with_spec(entryPoint={"module": "not a module path"}), "spec.entryPoint.module"),
    "bad-bucket": (with_spec(plugins={"sources": ["s3://UPPER/prefix"]}), "spec.plugins.sources"),
    "suspend-not-bool": (with_spec(suspend="yes"), "spec.suspend"),
    "misspelt-field": (
        with_spec(entrypoint={"module": "acme.flows:flow"}),
        'strict decoding error: unknown field "spec.entrypoint"',
    ),
    "no-entry-point": (
        {**VALID, "spec": {"parameters": {"n": 1}}},
        "spec.entryPoint: Required value",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_experiment_is_refused_by_the_api_server_and_never_reaches_the_operator(
    cluster: Cluster, operator_process: OperatorProcess, case: str
) -> None:
    manifest, named = MALFORMED[case]
    manifest = {**manifest, "metadata": {"name": "malformed"}}

    result = apply(cluster, manifest)

    assert result.returncode != 0
    # The create reached the API server, which refused it (422 Invalid; 400 for the strict
    # decoder's unknown field): kubectl did not stop it on its own.
    ((query, status),) = creates_sent(result.stderr)
    assert "fieldValidation=Strict" in query
    assert status == (400 if case == "misspelt-field" else 422), result.stderr
    assert named in result.stderr, result.stderr  # the server's reason, as kubectl prints it
    assert not cluster.exists("experiments", "malformed")
    # The operator, running all along, handles the valid Experiment applied after it (and its
    # Job), and never saw the malformed one.
    assert apply(cluster, VALID).returncode == 0
    cluster.wait_for("jobs", "checked-g1", bool, what="the valid Experiment's Job")
    handled = set(re.findall(r"\] \[[^/\]]+/([^\]]+)\]", operator_process.log))
    assert "checked" in handled, handled
    assert handled <= {"checked", "checked-g1"}, handled
    assert cluster.events_for("malformed") == []
    assert [job["metadata"]["name"] for job in cluster.list("jobs")] == ["checked-g1"]


def _laptop_only(manifest: dict[str, Any]) -> bool:
    sources = manifest["spec"].get("plugins", {}).get("sources", [])
    return any(not source.startswith("s3://") for source in sources)


CLUSTER_EXAMPLES = [p for p in EXAMPLES if not _laptop_only(yaml.safe_load(p.read_text()))]
LAPTOP_EXAMPLES = [p for p in EXAMPLES if p not in CLUSTER_EXAMPLES]


@pytest.mark.parametrize("path", CLUSTER_EXAMPLES, ids=[p.stem for p in CLUSTER_EXAMPLES])
def test_every_cluster_example_is_admitted_and_gets_a_job(
    cluster: Cluster, operator_process: OperatorProcess, path: Path
) -> None:
    result = cluster.kubectl("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    job = cluster.wait_for("jobs", f"{name}-g1", bool, what=f"the Job of {path.name}")
    sweep = manifest["spec"].get("sweep")
    if sweep is not None:
        # A sweep is one Indexed Job: a completion per point, maxConcurrent at once.
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["parallelism"] <= sweep.get("maxConcurrent", 1)


@pytest.mark.parametrize("path", LAPTOP_EXAMPLES, ids=[p.stem for p in LAPTOP_EXAMPLES])
def test_an_example_with_local_plugin_folders_is_admitted_but_refused_by_the_operator(
    cluster: Cluster, operator_process: OperatorProcess, path: Path
) -> None:
    result = cluster.kubectl("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    status = cluster.wait_for(
        "experiments",
        name,
        lambda e: ((e or {}).get("status") or {}).get("phase"),
        what=f"the operator's verdict on {path.name}",
    )["status"]
    assert status["phase"] == "Failed"
    assert "s3://" in status["message"]
    assert not cluster.exists("jobs", f"{name}-g1")
