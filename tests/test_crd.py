"""The Experiment CRD: structural, self-describing, consistent with its printer columns and
with the Python twins of its CEL rules, and accepting every example in `examples/`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from dioptra_runner import schema as crd_schema
from dioptra_runner.experiment import load_experiment_file

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "crds" / "experiments.dioptra.dev.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# Keys a structural schema may not hold (besides the int-or-string anyOf exception).
_FORBIDDEN_IN_JUNCTORS = {"description", "type", "default", "additionalProperties", "nullable"}


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


def structural_problems(root: dict[str, Any]) -> list[str]:
    """What makes a schema non-structural, per the apiextensions rules (pure)."""
    problems = []
    for path, node in walk(root):
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        if "type" not in node and not untyped_ok:
            problems.append(f"{path or '<root>'}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("additionalProperties") is False or node.get("uniqueItems"):
            problems.append(f"{path}: additionalProperties false / uniqueItems are not allowed")
        if "$ref" in node:
            problems.append(f"{path}: $ref is not allowed")
        for junctor in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(junctor, []):
                allowed_type = node.get("x-kubernetes-int-or-string") and set(branch) == {"type"}
                if not allowed_type and _FORBIDDEN_IN_JUNCTORS & set(branch):
                    problems.append(f"{path}: {junctor} branch sets {set(branch)}")
    metadata = root["properties"].get("metadata", {})
    if set(metadata) - {"type", "description"}:
        problems.append("metadata: only type and description are allowed at the root's metadata")
    return problems


def test_the_crd_passes_kubernetes_validate_in_strict_mode() -> None:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(tool), "--strict", str(CRD_PATH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_crd_names_the_dioptra_group_version_and_kind(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "experiments.dioptra.dev"
    assert (spec["group"], spec["scope"]) == ("dioptra.dev", "Namespaced")
    assert spec["names"]["kind"] == "Experiment"
    assert spec["names"]["plural"] == "experiments"
    assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1alpha1"]


def test_the_crd_has_short_names_and_the_dioptra_category(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert "exp" in names["shortNames"]
    assert "dioptra" in names["categories"]


def test_the_crd_has_the_status_subresource(crd: dict[str, Any]) -> None:
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_the_schema_is_structural(openapi: dict[str, Any]) -> None:
    assert structural_problems(openapi) == []


def test_the_structural_check_catches_an_untyped_field() -> None:
    broken = {"type": "object", "properties": {"spec": {"description": "no type"}}}
    assert structural_problems(broken) == [".spec: no type"]


def test_every_field_has_a_description(openapi: dict[str, Any]) -> None:
    undocumented = [path or "<root>" for path, node in walk(openapi) if not node.get("description")]
    assert undocumented == []


def test_every_printer_column_points_at_a_field_of_the_schema(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    for column in version["additionalPrinterColumns"]:
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            assert parts[1] == "creationTimestamp"
            continue
        node = version["schema"]["openAPIV3Schema"]
        for part in parts:
            node = node["properties"][part]
        assert node["type"] == "string", column


def test_printer_columns_show_phase_tasks_duration_and_age_with_message_and_job_on_wide(
    crd: dict[str, Any],
) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"] for c in columns if c.get("priority", 0) == 0]
    wide = [c["name"] for c in columns if c.get("priority", 0) == 1]
    assert default == ["Phase", "Tasks", "Duration", "Age"]
    assert wide == ["Message", "Job"]


def test_every_cel_rule_without_old_self_has_a_python_twin(openapi: dict[str, Any]) -> None:
    rules = [
        rule["rule"]
        for _, node in walk(openapi)
        for rule in node.get("x-kubernetes-validations", [])
        if not crd_schema.is_transition_rule(rule["rule"])
    ]
    assert rules, "the CRD should carry CEL rules"
    missing = [r for r in rules if crd_schema.normalize_rule(r) not in crd_schema.CEL_EQUIVALENTS]
    assert missing == []


@pytest.mark.parametrize("field", ["entryPoint", "plugins.sources"])
def test_a_transition_rule_makes_the_field_immutable(openapi: dict[str, Any], field: str) -> None:
    spec_rules = openapi["properties"]["spec"]["x-kubernetes-validations"]
    transition = [r for r in spec_rules if crd_schema.is_transition_rule(r["rule"])]
    assert any(f"self.{field}" in r["rule"] and "oldSelf" in r["rule"] for r in transition)


def test_the_phase_enum_lists_every_phase_of_the_design(openapi: dict[str, Any]) -> None:
    phases = openapi["properties"]["status"]["properties"]["phase"]["enum"]
    expected = {"Pending", "Suspended", "SyncingPlugins", "Running", "Succeeded", "Failed"}
    assert set(phases) == expected


def test_there_is_at_least_one_example() -> None:
    assert REPO / "examples" / "minimal.yaml" in EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_is_a_valid_experiment(example: Path) -> None:
    experiment = load_experiment_file(example)
    assert experiment.name


# The CEL rules, evaluated for real by cel-python (the API server's CEL, minus cost checks).
ENTRY_POINTS: list[dict[str, Any]] = [
    {"module": "a.b:flow"},
    {"script": "pass", "flow": "flow"},
    {"configMapRef": {"name": "c", "key": "k"}},
    {"taskGraph": {"steps": []}},
    {},
    {"flow": "flow"},
    {"module": "a.b:flow", "script": "pass"},
    {"script": "pass", "taskGraph": {"steps": []}, "configMapRef": {"name": "c", "key": "k"}},
]
SWEEPS: list[dict[str, Any]] = [
    {"grid": {"eps": [1]}},
    {"points": [{"eps": 1}]},
    {"grid": {"eps": [1]}, "points": []},
    {"maxConcurrent": 2},
]


def cel_rule(openapi: dict[str, Any], path: str, needle: str) -> str:
    node = openapi
    for part in path.split("."):
        node = node["properties"][part]
    (rule,) = [r["rule"] for r in node["x-kubernetes-validations"] if needle in r["rule"]]
    return str(rule)


def evaluate_cel(rule: str, self_value: Any, old_value: Any = None) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return bool(program.evaluate(activation))


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=lambda e: "+".join(e) or "empty")
def test_the_entry_point_rule_and_its_python_twin_agree(
    openapi: dict[str, Any], entry_point: dict[str, Any]
) -> None:
    rule = cel_rule(openapi, "spec.entryPoint", "has(self.module)")
    twin = crd_schema.CEL_EQUIVALENTS[crd_schema.normalize_rule(rule)]
    assert evaluate_cel(rule, entry_point) == twin(entry_point)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda s: "+".join(s))
def test_the_sweep_rule_and_its_python_twin_agree(
    openapi: dict[str, Any], sweep: dict[str, Any]
) -> None:
    rule = cel_rule(openapi, "spec.sweep", "has(self.grid)")
    twin = crd_schema.CEL_EQUIVALENTS[crd_schema.normalize_rule(rule)]
    assert evaluate_cel(rule, sweep) == twin(sweep)


@pytest.mark.parametrize("length", [63, 64])
def test_the_name_length_rule_and_its_python_twin_agree(
    openapi: dict[str, Any], length: int
) -> None:
    (entry,) = openapi["x-kubernetes-validations"]
    twin = crd_schema.CEL_EQUIVALENTS[crd_schema.normalize_rule(entry["rule"])]
    root = {"metadata": {"name": "x" * length}}
    assert evaluate_cel(entry["rule"], root) == twin(root) == (length <= 63)


BASE_SPEC: dict[str, Any] = {
    "entryPoint": {"module": "a.b:flow"},
    "plugins": {"sources": ["s3://bucket/a"]},
    "parameters": {"n": 1},
}


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ({"parameters": {"n": 2}}, True),
        ({"suspend": False}, True),
        ({"entryPoint": {"module": "a.b:other"}}, False),
        ({"plugins": {"sources": ["s3://bucket/b"]}}, False),
        ({"plugins": {"sources": ["s3://bucket/a"], "region": "eu-west-1"}}, True),
    ],
    ids=["parameters", "suspend", "entry-point", "plugin-sources", "plugin-region"],
)
def test_transition_rules_freeze_the_entry_point_and_plugin_sources_only(
    openapi: dict[str, Any], change: dict[str, Any], allowed: bool
) -> None:
    spec_rules = openapi["properties"]["spec"]["x-kubernetes-validations"]
    new = {**BASE_SPEC, **change}
    results = [evaluate_cel(r["rule"], new, BASE_SPEC) for r in spec_rules]
    assert all(results) == allowed


def test_removing_the_plugins_is_a_change_of_plugin_sources(openapi: dict[str, Any]) -> None:
    rule = cel_rule(openapi, "spec", "self.plugins")
    without = {k: v for k, v in BASE_SPEC.items() if k != "plugins"}
    assert evaluate_cel(rule, without, BASE_SPEC) is False
    assert evaluate_cel(rule, without, without) is True
