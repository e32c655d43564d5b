"""The Experiment CRD on a real API server: accepted, Established, and enforcing what it says.

The server is the judge of structure and CEL (it type-checks every rule and its cost when the
CRD is created); `dioptra run` validates files against the same schema locally, and these tests
hold the two to the same verdicts. Checks of the file itself (descriptions, names, printer
columns) stay pure.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dioptra_api import schema as crd_schema
from dioptra_runner.experiment import load_experiment_file, validate_document
from support.cluster import Cluster
from support.controlplane import ApiError

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "crds" / "experiments.dioptra.dev.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CHART_CRD = REPO / "charts" / "dioptra-operator" / "files" / CRD_PATH.name


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD_PATH.read_text()))


@pytest.fixture(scope="module")
def openapi(crd: dict[str, Any]) -> dict[str, Any]:
    return crd_schema.crd_version_schema(crd)


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node` (fields, items, additionalProperties), with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def experiment(name: str = "checked", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, **spec},
    }


def server_verdict(cluster: Cluster, manifest: dict[str, Any]) -> str | None:
    """None when the API server would create the object (dry run), else its message."""
    path = cluster.path("experiments") + "?dryRun=All&fieldValidation=Strict"
    try:
        cluster.request("POST", path, manifest)
    except ApiError as error:
        assert error.status in (400, 422), error.body  # 400: strict decoding (unknown field)
        return str(error.body["message"])
    return None


# -- the file ---------------------------------------------------------------------------------


def test_the_chart_ships_the_same_crd_file() -> None:
    assert CHART_CRD.read_bytes() == CRD_PATH.read_bytes()


def test_the_crd_names_the_dioptra_group_version_and_kind(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "experiments.dioptra.dev"
    assert (spec["group"], spec["scope"]) == ("dioptra.dev", "Namespaced")
    assert spec["names"]["kind"] == "Experiment"
    assert spec["names"]["plural"] == "experiments"
    assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1alpha1"]


def test_every_field_but_the_root_metadata_has_a_description(openapi: dict[str, Any]) -> None:
    undocumented = [
        path or "<root>"
        for path, node in walk(openapi)
        if not node.get("description") and path != ".metadata"
    ]
    assert undocumented == []


def test_descriptions_name_nothing_users_do_not_have(openapi: dict[str, Any]) -> None:
    texts = [node.get("description", "") for _, node in walk(openapi)]
    assert not [t for t in texts if "DESIGN" in t or ".md" in t or "issue" in t.lower()]


def test_printer_columns_show_phase_tasks_duration_and_age_with_message_and_job_on_wide(
    crd: dict[str, Any],
) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"] for c in columns if c.get("priority", 0) == 0]
    wide = [c["name"] for c in columns if c.get("priority", 0) == 1]
    assert default == ["Phase", "Tasks", "Duration", "Age"]
    assert wide == ["Message", "Job"]


def test_the_phase_enum_lists_every_phase_of_the_design(openapi: dict[str, Any]) -> None:
    phases = openapi["properties"]["status"]["properties"]["phase"]["enum"]
    expected = {"Pending", "Suspended", "SyncingPlugins", "Running", "Succeeded", "Failed"}
    assert set(phases) == expected


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_dioptra_run_accepts_the_example(example: Path) -> None:
    assert load_experiment_file(example).name


# -- on the API server ------------------------------------------------------------------------


def test_the_api_server_establishes_the_crd_with_a_structural_schema(
    experiment_crd: dict[str, Any],
) -> None:
    conditions = {c["type"]: c for c in experiment_crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert experiment_crd["status"]["acceptedNames"]["shortNames"] == ["exp", "dexp"]


def test_the_api_server_serves_the_short_names_and_the_dioptra_category(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    resources = cluster.request("GET", "/apis/dioptra.dev/v1alpha1")["resources"]
    experiments = next(r for r in resources if r["name"] == "experiments")
    assert experiments["shortNames"] == ["exp", "dexp"]
    assert experiments["categories"] == ["dioptra"]
    assert {r["name"] for r in resources} == {"experiments", "experiments/status"}
    assert cluster.kubectl("get", "dioptra").returncode == 0


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_api_server_accepts_the_example(
    cluster: Cluster, experiment_crd: dict[str, Any], example: Path
) -> None:
    assert server_verdict(cluster, yaml.safe_load(example.read_text())) is None


MALFORMED = {
    "negative-backoff": (experiment(backoffLimit=-1), "spec.backoffLimit"),
    "two-entry-points": (
        experiment(entryPoint={"module": "acme.flows:flow", "script": "x = 1"}),
        "exactly one of module, script, configMapRef or taskGraph must be set",
    ),
    "no-entry-point-kind": (experiment(entryPoint={"flow": "flow"}), "exactly one of module"),
    "bad-module": (
        experiment(entryPoint={"module": "not a module path"}),
        "spec.entryPoint.module",
    ),
    "bad-bucket": (experiment(plugins={"sources": ["s3://UPPER/prefix"]}), "spec.plugins.sources"),
    "suspend-not-bool": (experiment(suspend="yes"), "spec.suspend"),
    "misspelt-field": (experiment(entrypoint={"module": "acme.flows:flow"}), "entrypoint"),
    "no-spec-entry-point": (
        {**experiment(), "spec": {"parameters": {"n": 1}}},
        "spec.entryPoint: Required value",
    ),
    "name-too-long": (experiment(name="x" * 64), "metadata.name must be at most 63 characters"),
    "sweep-grid-and-points": (
        experiment(sweep={"grid": {"e": [1]}, "points": [{"e": 1}]}),
        "spec.sweep",
    ),
    "sweep-neither": (experiment(sweep={"maxConcurrent": 2}), "spec.sweep"),
    "sweep-empty-values": (experiment(sweep={"grid": {"e": []}}), "spec.sweep.grid.e"),
    "bad-quantity": (
        experiment(runner={"resources": {"limits": {"cpu": "two"}}}),
        "spec.runner.resources.limits.cpu",
    ),
    "empty-task-graph": (experiment(entryPoint={"taskGraph": {"steps": []}}), "steps"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_the_api_server_refuses_a_malformed_experiment_and_dioptra_run_agrees(
    cluster: Cluster, experiment_crd: dict[str, Any], case: str
) -> None:
    manifest, named = MALFORMED[case]
    message = server_verdict(cluster, manifest)
    assert message is not None and named in message, message
    assert validate_document(manifest), "dioptra run must refuse what the server refuses"


ACCEPTED = {
    "integer-quantity": experiment(runner={"resources": {"limits": {"cpu": 2, "memory": "2Gi"}}}),
    "sweep-of-any-values": experiment(sweep={"grid": {"e": [0.1, "x", {"a": [1]}, None]}}),
    "sweep-points": experiment(sweep={"points": [{"e": 0.1}, {"e": 0.2}], "maxConcurrent": 2}),
    "name-of-63": experiment(name="x" * 63),
    "config-map": experiment(entryPoint={"configMapRef": {"name": "c", "key": "flow.py"}}),
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_the_api_server_accepts_a_valid_experiment_and_dioptra_run_agrees(
    cluster: Cluster, experiment_crd: dict[str, Any], case: str
) -> None:
    assert server_verdict(cluster, ACCEPTED[case]) is None
    assert validate_document(ACCEPTED[case]) == []


def test_the_api_server_fills_in_the_schema_defaults(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    created = cluster.create(experiment(sweep={"grid": {"e": [1]}}))
    spec = created["spec"]
    assert (spec["backoffLimit"], spec["suspend"]) == (0, False)
    assert spec["sweep"]["maxConcurrent"] == 1
    assert spec["entryPoint"] == {"module": "acme.flows:flow", "flow": "flow"}
    local = crd_schema.apply_defaults(
        crd_schema.crd_version_schema(crd_schema.load_crd()), experiment(sweep={"grid": {"e": [1]}})
    )
    assert local["spec"] == spec  # dioptra run defaults a file the way the server does


BASE_SPEC: dict[str, Any] = {
    "entryPoint": {"module": "a.b:flow"},
    "plugins": {"sources": ["s3://bucket/a"]},
    "parameters": {"n": 1},
}
CHANGES = {
    "parameters": ({"parameters": {"n": 2}}, None),
    "suspend": ({"suspend": True}, None),
    "plugin-region": ({"plugins": {"sources": ["s3://bucket/a"], "region": "eu-west-1"}}, None),
    "entry-point": ({"entryPoint": {"module": "a.b:other"}}, "spec.entryPoint is immutable"),
    "plugin-sources": (
        {"plugins": {"sources": ["s3://bucket/b"]}},
        "spec.plugins.sources is immutable",
    ),
    "plugins-removed": ({"plugins": None}, "spec.plugins.sources is immutable"),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_the_entry_point_and_plugin_sources_are_immutable_and_the_rest_is_not(
    cluster: Cluster, experiment_crd: dict[str, Any], change: str
) -> None:
    cluster.create(experiment("frozen", **copy.deepcopy(BASE_SPEC)))
    patch, refusal = CHANGES[change]
    try:
        cluster.patch("experiments", "frozen", {"spec": patch})
    except ApiError as error:
        assert refusal is not None and refusal in str(error.body["message"]), error.body
    else:
        assert refusal is None, f"the server allowed a change of {change}"


def test_kubectl_get_shows_the_printer_columns_from_status(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    cluster.create(experiment("shown"))
    status = {
        "phase": "Running",
        "progress": "3/7",
        "duration": "1m23s",
        "message": "running task train",
        "jobName": "shown-g1",
    }
    cluster.patch("experiments", "shown", {"status": status}, subresource="status")
    table = cluster.kubectl("get", "experiments", "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "TASKS", "DURATION", "AGE", "MESSAGE", "JOB"]
    row = table[1]
    for value in ("shown", "Running", "3/7", "1m23s", "running task train", "shown-g1"):
        assert value in row
    short = cluster.kubectl("get", "exp").stdout.splitlines()
    assert short[0].split() == ["NAME", "PHASE", "TASKS", "DURATION", "AGE"]


def test_kubectl_explain_describes_the_spec_from_the_published_schema(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    explained = cluster.kubectl("explain", "experiment.spec").stdout
    assert "What to run" in explained
    assert "entryPoint\t<Object> -required-" in explained
    deeper = cluster.kubectl("explain", "experiment.spec.plugins.sources").stdout
    assert "s3://bucket/prefix" in deeper


def test_the_status_subresource_ignores_spec_and_the_main_resource_ignores_status(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    cluster.create(experiment("split"))
    cluster.patch("experiments", "split", {"status": {"phase": "Running"}})
    assert "status" not in cluster.get("experiments", "split")
    cluster.patch(
        "experiments",
        "split",
        {"spec": {"backoffLimit": 3}, "status": {"phase": "Running"}},
        subresource="status",
    )
    current = cluster.get("experiments", "split")
    assert current["status"]["phase"] == "Running"
    assert current["spec"]["backoffLimit"] == 0


def test_a_status_the_schema_refuses_is_refused_by_the_server(
    cluster: Cluster, experiment_crd: dict[str, Any]
) -> None:
    cluster.create(experiment("strict"))
    with pytest.raises(ApiError) as refused:
        cluster.patch(
            "experiments", "strict", {"status": {"phase": "Exploded"}}, subresource="status"
        )
    assert "status.phase" in json.dumps(refused.value.body)
