"""`dioptra run`: the same Experiment file runs locally with clear results and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("prefect_api_url")

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))

STEPS = '''
from dioptra import pyplugs
from dioptra import metrics

@pyplugs.register
def make_items(n: int) -> dict:
    """Make n items."""
    return {"items": list(range(n)), "meta": {"n": n}}

@pyplugs.register
def total(data: dict) -> int:
    metrics.log_metric("total", sum(data["items"]))
    return sum(data["items"])

@pyplugs.register
def explode(data: dict) -> None:
    raise RuntimeError("the detector overheated")
'''

FLOWS = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Totals") as flow:
    n = Parameter("n")
    items = pyplugs.call_task("runpkg.ops", "steps", "make_items", n=n)
    pyplugs.call_task("runpkg.ops", "steps", "total", data=items)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    package = tmp_path / "plugins" / "runpkg"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "steps.py").write_text(STEPS)
    (package / "flows.py").write_text(FLOWS)
    return tmp_path


def experiment(folder: Path, entry_point: dict[str, Any], **spec: Any) -> Path:
    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "totals"},
        "spec": {"entryPoint": entry_point, "plugins": {"sources": ["./plugins/"]}, **spec},
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def dioptra_run(
    path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(path.parent / "cache"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        cwd=path.parent.parent,
    )


def test_a_module_entry_point_runs_and_prints_its_results_as_json(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 4})

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout[done.stdout.index("{") :])
    assert document["phase"] == "Succeeded"
    assert document["results"]["metrics"] == {"total": 6}
    assert document["results"]["outputs"]["runpkg.ops.steps.total"] == 6
    assert [t["state"] for t in document["tasks"]] == ["Completed", "Completed"]


def test_set_overrides_a_parameter(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 4})

    done = dioptra_run(path, "--output", "json", "--set", "n=10")

    document = json.loads(done.stdout[done.stdout.index("{") :])
    assert document["results"]["metrics"] == {"total": 45}


def test_an_inline_script_runs_with_a_results_table(workspace: Path) -> None:
    path = experiment(workspace, {"script": FLOWS}, parameters={"n": 3})

    done = dioptra_run(path)

    assert done.returncode == 0, done.stderr
    assert "results of totals" in done.stdout
    assert "Succeeded totals: 2 tasks" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_schema_violations_are_all_reported_with_their_paths(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, backoffLimit="many")
    document = yaml.safe_load(path.read_text())
    document["spec"]["plugins"]["sources"] = [42]
    path.write_text(yaml.safe_dump(document))

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "spec.backoffLimit" in done.stderr
    assert "spec.plugins.sources[0]" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_plugin_is_named_with_the_folders_searched_and_nothing_runs(
    workspace: Path,
) -> None:
    script = FLOWS.replace('"total"', '"totl"')
    path = experiment(workspace, {"script": script}, parameters={"n": 3})

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "totl" in done.stderr
    assert str(workspace / "cache" / "plugins" / "totals") in done.stderr
    assert "Completed" not in done.stdout


def test_a_missing_parameter_is_named_before_anything_runs(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"})

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "missing parameter(s): n" in done.stderr


def test_an_entry_point_module_that_does_not_exist_is_reported(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.nowhere:flow"}, parameters={"n": 1})

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "entry point module 'runpkg.nowhere' not found" in done.stderr


def test_a_syntax_error_in_an_inline_script_gives_its_line(workspace: Path) -> None:
    script = "from dioptra.flow import Flow\n\nwith Flow('x') as flow\n    pass\n"
    path = experiment(workspace, {"script": script})

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "syntax error in spec.entryPoint.script at line 3" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failing_task_is_summarised_and_its_traceback_goes_to_the_log(workspace: Path) -> None:
    script = FLOWS.replace('"total"', '"explode"')
    path = experiment(workspace, {"script": script}, parameters={"n": 3})
    log = workspace / "run.log"

    done = dioptra_run(path, "--log-file", str(log))

    assert done.returncode == 1
    assert (
        "task runpkg.ops.steps.explode failed: RuntimeError: the detector overheated" in done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert "Traceback" in log.read_text()
    assert 'raise RuntimeError("the detector overheated")' in log.read_text()


def test_a_second_run_syncs_nothing_new(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 2})
    dioptra_run(path, "--output", "json")

    again = dioptra_run(path, "--output", "json")

    assert again.returncode == 0
    assert "0 downloaded" in again.stdout


@pytest.mark.parametrize("value", ["n", "=3"])
def test_a_malformed_set_option_is_rejected(workspace: Path, value: str) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 2})

    done = dioptra_run(path, "--set", value)

    assert done.returncode == 2
    assert "--set expects NAME=VALUE" in done.stderr


def test_a_file_that_does_not_exist_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [DIOPTRA, "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert "nope.yaml" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_sweep_runs_every_point_and_reports_each(workspace: Path, parallel: str) -> None:
    path = experiment(
        workspace,
        {"module": "runpkg.flows:flow"},
        parameters={"n": 1},
        sweep={"grid": {"n": [2, 3, 4]}},
    )

    done = dioptra_run(path, "--output", "json", "--parallel", parallel)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout[done.stdout.index("{") :])
    assert document["phase"] == "Succeeded"
    assert document["message"] == "3/3 sweep points succeeded"
    totals = {p["label"]: p["results"]["metrics"]["total"] for p in document["points"]}
    assert totals == {"n=2": 1, "n=3": 3, "n=4": 6}


def test_a_sweep_over_an_unknown_parameter_is_rejected_before_running(workspace: Path) -> None:
    path = experiment(
        workspace,
        {"module": "runpkg.flows:flow"},
        parameters={"n": 1},
        sweep={"grid": {"size": [2, 3]}},
    )

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "invalid sweep" in done.stderr
    assert "spec.sweep.grid.size" in done.stderr
