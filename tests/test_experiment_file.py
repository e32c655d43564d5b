"""Loading and validating Experiment files against the CRD schema (dioptra_runner.experiment)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from dioptra_api import schema as crd_schema
from dioptra_runner.experiment import (
    ExperimentError,
    experiment_from_env,
    load_experiment_file,
    load_experiment_text,
    validate_status,
)

VALID = textwrap.dedent(
    """\
    apiVersion: dioptra.dev/v1alpha1
    kind: Experiment
    metadata:
      name: image-resizer
    spec:
      entryPoint:
        module: my_experiments.resizer:flow
      parameters:
        data_dir: /data/images
        image_size: [28, 28]
      plugins:
        sources:
          - s3://dioptra-plugins/dioptra_builtins
          - ./plugins
        endpointURL: http://minio.storage:9000
        region: us-east-1
        credentialsSecretRef:
          name: s3-credentials
      runner:
        resources: {limits: {memory: 2Gi, cpu: 2}}
      activeDeadlineSeconds: 3600
    """
)


def with_spec(**changes: object) -> str:
    """The valid document with some spec fields replaced (None removes a field)."""
    document = yaml.safe_load(VALID)
    for key, value in changes.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return yaml.safe_dump(document)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ExperimentError) as caught:
        load_experiment_text(text)
    return caught.value.errors


def test_a_valid_file_loads_with_its_name_and_spec(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(VALID)
    experiment = load_experiment_file(path)
    assert experiment.name == "image-resizer"
    assert experiment.spec["parameters"]["image_size"] == [28, 28]
    assert experiment.source_path == path.resolve()
    assert experiment.entry_point_kind == "module"


def test_loading_applies_the_crd_defaults() -> None:
    experiment = load_experiment_text(VALID)
    assert experiment.spec["backoffLimit"] == 0
    assert experiment.spec["suspend"] is False
    assert experiment.spec["plugins"]["credentialsSecretRef"]["accessKeyIdKey"] == (
        "AWS_ACCESS_KEY_ID"
    )


def test_a_relative_plugin_folder_resolves_against_the_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "exp.yaml"
    path.parent.mkdir()
    path.write_text(VALID)
    sources = load_experiment_file(path).resolved_plugin_sources()
    assert sources == [
        "s3://dioptra-plugins/dioptra_builtins",
        str((tmp_path / "sub" / "plugins").resolve()),
    ]


def test_a_file_uri_plugin_source_becomes_an_absolute_path(tmp_path: Path) -> None:
    text = with_spec(plugins={"sources": [f"file://{tmp_path}/plugins"]})
    assert load_experiment_text(text).resolved_plugin_sources() == [str(tmp_path / "plugins")]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"backoffLimit": -1}, "spec.backoffLimit: -1 is less than the minimum of 0"),
        ({"suspend": "yes"}, "spec.suspend: 'yes' is not of type 'boolean'"),
        ({"entryPoint": {"module": "no-colon"}}, "spec.entryPoint.module: 'no-colon' is not valid"),
        ({"entryPoint": None}, "spec.entryPoint: required field is missing"),
        ({"plugins": {"sources": ["http://x/y"]}}, "spec.plugins.sources[0]: 'http://x/y' is not"),
        ({"plugins": {"sources": []}}, "spec.plugins.sources: [] should be non-empty"),
        ({"runner": {"imagePullPolicy": "Sometimes"}}, "spec.runner.imagePullPolicy: 'Sometimes'"),
        (
            {"runner": {"resources": {"limits": {"memory": "lots"}}}},
            "spec.runner.resources.limits.memory: 'lots' is not valid",
        ),
        ({"sweep": {"grid": {"eps": [0.1]}, "points": [{}]}}, "spec.sweep: exactly one of"),
    ],
    ids=[
        "minimum",
        "type",
        "pattern",
        "required",
        "s3-uri",
        "min-items",
        "enum",
        "quantity",
        "cel-rule",
    ],
)
def test_a_violation_is_reported_with_its_field_path(
    changes: dict[str, object], expected: str
) -> None:
    errors = errors_of(with_spec(**changes))
    assert len(errors) == 1
    assert errors[0].startswith(expected)


def test_several_violations_are_reported_together() -> None:
    errors = errors_of(with_spec(backoffLimit=-1, suspend="no", maxParallelTasks=0))
    assert [error.split(":")[0] for error in errors] == [
        "spec.backoffLimit",
        "spec.maxParallelTasks",
        "spec.suspend",
    ]


def test_several_violations_render_as_one_bullet_each() -> None:
    error = ExperimentError(["spec.a: bad", "spec.b: worse"], source="exp.yaml")
    assert (
        str(error)
        == "exp.yaml: invalid Experiment (2 problems):\n  - spec.a: bad\n  - spec.b: worse"
    )


def test_two_entry_point_kinds_are_rejected() -> None:
    errors = errors_of(with_spec(entryPoint={"module": "a.b:flow", "script": "pass"}))
    assert errors == [
        "spec.entryPoint: exactly one of module, script, configMapRef or taskGraph must be set"
    ]


def test_an_entry_point_with_no_kind_is_rejected() -> None:
    errors = errors_of(with_spec(entryPoint={"flow": "flow"}))
    assert errors[0].startswith("spec.entryPoint: exactly one of")


def test_an_unknown_field_is_rejected_by_name() -> None:
    errors = errors_of(with_spec(backofLimit=1))
    assert errors == ["spec.backofLimit: unknown field"]


def test_an_unknown_field_inside_a_task_graph_step_is_rejected() -> None:
    graph = {"taskGraph": {"steps": [{"name": "a", "task": "p.m.f", "retry": 2}]}}
    assert errors_of(with_spec(entryPoint=graph)) == [
        "spec.entryPoint.taskGraph.steps[0].retry: unknown field"
    ]


def test_free_form_parameters_and_step_args_accept_any_fields() -> None:
    graph = {"taskGraph": {"steps": [{"name": "a", "task": "p.m.f", "args": {"x": {"y": [1]}}}]}}
    text = with_spec(entryPoint=graph, parameters={"anything": {"nested": True}})
    assert load_experiment_text(text).entry_point_kind == "taskGraph"


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ("apiVersion: dioptra.dev/v1alpha1", "apiVersion: must be dioptra.dev/v1alpha1, got 'v1'"),
        ("kind: Experiment", "kind: must be Experiment, got 'Job'"),
    ],
)
def test_a_wrong_api_version_or_kind_is_rejected(replace: str, expected: str) -> None:
    bad = "apiVersion: v1" if replace.startswith("apiVersion") else "kind: Job"
    assert errors_of(VALID.replace(replace, bad)) == [expected]


def test_an_invalid_name_is_rejected() -> None:
    errors = errors_of(VALID.replace("name: image-resizer", "name: Image_Resizer"))
    assert errors[0].startswith("metadata.name: 'Image_Resizer' is not a valid name")


def test_a_yaml_syntax_error_gives_one_line_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: dioptra.dev/v1alpha1\nkind: [Experiment\nspec: {}\n")
    with pytest.raises(ExperimentError) as caught:
        load_experiment_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid YAML at line 3, column 5:")


def test_the_first_experiment_of_a_multi_document_file_is_used() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + VALID
    assert load_experiment_text(text).name == "image-resizer"


def test_a_file_without_an_experiment_says_which_kinds_it_found() -> None:
    text = "kind: ConfigMap\n---\nkind: Secret\n"
    assert errors_of(text) == ["no document has kind: Experiment (found: ConfigMap, Secret)"]


def test_an_empty_file_is_rejected() -> None:
    assert errors_of("") == ["the file is empty (expected an Experiment)"]


def test_a_missing_file_gives_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"cannot read the file: No such file"):
        load_experiment_file(tmp_path / "nope.yaml")


def test_the_env_snapshot_loads_with_namespace_generation_and_uid() -> None:
    document = yaml.safe_load(VALID)
    document["metadata"].update({"namespace": "lab", "generation": 3, "uid": "u-1"})
    experiment = experiment_from_env(json.dumps(document))
    assert (experiment.namespace, experiment.generation) == ("lab", 3)
    assert experiment.source_path is None


def test_an_invalid_env_snapshot_names_the_variable() -> None:
    with pytest.raises(ExperimentError, match=r"^DIOPTRA_EXPERIMENT: invalid JSON at line 1"):
        experiment_from_env("{not json")


def test_the_crd_path_can_be_overridden_by_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "crd.yaml"
    copy.write_text(crd_schema.find_crd_path().read_text())
    monkeypatch.setenv("DIOPTRA_CRD_PATH", str(copy))
    assert crd_schema.find_crd_path() == copy


def test_the_crd_is_found_in_the_dev_checkout() -> None:
    assert crd_schema.find_crd_path() == Path(__file__).resolve().parents[1] / "crds" / (
        "experiments.dioptra.dev.yaml"
    )


def test_a_status_in_the_documented_shape_is_valid() -> None:
    status = {
        "phase": "Running",
        "progress": "1/2",
        "tasksDone": 1,
        "tasksTotal": 2,
        "tasks": [{"name": "a", "task": "p.m.f", "state": "Completed"}],
        "results": {"accuracy": 0.9},
        "conditions": [
            {
                "type": "JobCreated",
                "status": "True",
                "reason": "JobCreated",
                "message": "created",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    assert validate_status(status) == []


def test_a_status_with_a_wrong_phase_or_a_numeric_duration_is_reported() -> None:
    problems = validate_status({"phase": "Done", "duration": 1.5, "tasks": [{"nme": "a"}]})
    assert [problem.split(":")[0] for problem in problems] == [
        "status.duration",
        "status.phase",
        "status.tasks[0].nme",
    ]
