"""`dioptra run`: the same Experiment file runs locally with clear results and clear errors."""

from __future__ import annotations

import json
import os
import re
import socket
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
    document = json.loads(done.stdout)
    assert document["phase"] == "Succeeded"
    assert document["results"]["metrics"] == {"total": 6}
    assert document["results"]["outputs"]["runpkg.ops.steps.total"] == 6
    assert [t["state"] for t in document["tasks"]] == ["Completed", "Completed"]


def test_set_overrides_a_parameter(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 4})

    done = dioptra_run(path, "--output", "json", "--set", "n=10")

    document = json.loads(done.stdout)
    assert document["results"]["metrics"] == {"total": 45}


def test_an_inline_script_runs_with_a_results_table(workspace: Path) -> None:
    path = experiment(workspace, {"script": FLOWS}, parameters={"n": 3})

    done = dioptra_run(path)

    assert done.returncode == 0, done.stderr
    assert "results of totals" in done.stdout
    assert "Succeeded totals: 2 tasks" in done.stdout
    log = re.search(r"^log: (\S+)$", done.stdout, re.MULTILINE)
    assert log and Path(log.group(1)).name.startswith("totals-"), done.stdout
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
    assert re.search(r"(?<!\d)0 downloaded \(0\.0 MiB\), 4 unchanged", again.stderr), again.stderr


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
    document = json.loads(done.stdout)
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


BARRIER_STEP = '''
import time
from pathlib import Path
from dioptra import pyplugs

@pyplugs.register
def meet(n: int, folder: str) -> int:
    """Arrive, then wait (bounded) until every point has arrived: only concurrent points pass."""
    Path(folder, f"arrived-{n}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(folder).glob("arrived-*"))) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other sweep point never ran at the same time")
        time.sleep(0.01)
    return n
'''

BARRIER_FLOW = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Meet") as flow:
    pyplugs.call_task("runpkg.ops", "meeting", "meet", n=Parameter("n"), folder=Parameter("folder"))
"""


def test_parallel_sweep_points_run_at_the_same_time(workspace: Path) -> None:
    (workspace / "plugins" / "runpkg" / "ops" / "meeting.py").write_text(BARRIER_STEP)
    arrivals = workspace / "arrivals"
    arrivals.mkdir()
    path = experiment(
        workspace,
        {"script": BARRIER_FLOW},
        parameters={"n": 0, "folder": str(arrivals)},
        sweep={"grid": {"n": [1, 2]}},
    )

    done = dioptra_run(path, "--output", "json", "--parallel", "2")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["message"] == "2/2 sweep points succeeded"
    assert sorted(p.name for p in arrivals.iterdir()) == ["arrived-1", "arrived-2"]


# -- --output json: one document on stdout in every outcome -------------------------------------


def test_a_failed_task_gives_a_json_document_with_exit_code_and_error(workspace: Path) -> None:
    script = FLOWS.replace('"total"', '"explode"')
    path = experiment(workspace, {"script": script}, parameters={"n": 3})

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert (document["phase"], document["exitCode"]) == ("Failed", 1)
    assert document["error"] == {
        "reason": "TaskFailed",
        "message": "task runpkg.ops.steps.explode failed: RuntimeError: the detector overheated",
    }
    assert Path(document["log"]).is_file()


def test_invalid_input_gives_a_json_document_and_one_line_on_stderr(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"})  # n is missing

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert (document["experiment"], document["exitCode"]) == ("totals", 2)
    assert document["error"]["reason"] == "InvalidFlow"
    assert document["error"]["message"].endswith("missing parameter(s): n")
    assert done.stderr.count("missing parameter(s): n") == 1


def test_an_unreadable_file_gives_a_json_document_without_an_experiment_name(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [DIOPTRA, "run", str(tmp_path / "nope.yaml"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert document["experiment"] is None
    assert document["error"]["reason"] == "InvalidSpec"
    assert "nope.yaml" in document["error"]["message"]


def test_a_failed_sync_gives_a_json_document_with_exit_code_3(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    document = yaml.safe_load(path.read_text())
    document["spec"]["plugins"]["sources"] = ["./no-such-folder/"]
    path.write_text(yaml.safe_dump(document))

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 3
    assert json.loads(done.stdout)["error"]["reason"] == "PluginSyncFailed"


def test_the_json_mode_sends_sync_and_progress_lines_to_stderr(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 2})

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exitCode"] == 0
    assert "plugins: synced 4 files" in done.stderr
    assert "Completed" in done.stderr


# -- one clear line for bad input ------------------------------------------------------------------


def test_each_file_level_error_is_printed_once(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, backoffLimit="many")

    done = dioptra_run(path)

    assert done.returncode == 2
    assert done.stderr.count("spec.backoffLimit") == 1


def test_a_key_given_twice_in_the_file_is_an_error_naming_the_key(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 2})
    text = path.read_text().replace("    n: 2\n", "    n: 2\n    n: 3\n")
    assert text.count("    n: ") == 2
    path.write_text(text)

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "duplicate key 'n'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_set_value_that_does_not_parse_says_so(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 2})

    done = dioptra_run(path, "--set", "n=[1,2")

    assert done.returncode == 2
    assert "--set n: '[1,2' does not parse" in done.stderr


def test_a_parameter_of_the_wrong_type_is_named_before_any_task_runs(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": "ten"})

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert "parameter 'n' = \"ten\" is not an int" in document["error"]["message"]
    assert "runpkg.ops.steps.make_items" in document["error"]["message"]
    assert "tasks" not in document


def test_a_parameter_over_prefects_size_limit_is_named_not_echoed(workspace: Path) -> None:
    path = experiment(
        workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1, "blob": "x" * 600_000}
    )

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "blob (600,002 bytes)" in done.stderr
    assert "xxxxxxxxxx" not in done.stderr + done.stdout
    assert len(done.stderr) < 2000


def test_an_unusable_plugin_cache_is_one_line(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    blocker = workspace / "a-file"
    blocker.write_text("not a folder")

    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(blocker / "cache")],
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 2
    assert f"cannot write the log file {blocker / 'cache' / 'logs'}" in done.stderr
    assert "--plugin-cache DIR" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unwritable_log_file_is_one_line(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    blocker = workspace / "a-file"
    blocker.write_text("not a folder")

    done = dioptra_run(path, "--log-file", str(blocker / "run.log"))

    assert done.returncode == 2
    assert f"cannot write the log file {blocker / 'run.log'}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_prefect_api_that_does_not_answer_is_one_line(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"

    done = dioptra_run(path, env={"PREFECT_API_URL": url})

    assert done.returncode == 2
    assert f"the Prefect API at {url} does not answer" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 2


def test_two_runs_at_once_write_their_own_log_files(workspace: Path) -> None:
    script = FLOWS.replace('"total"', '"explode"')
    path = experiment(workspace, {"script": script}, parameters={"n": 3})
    cache = str(workspace / "cache")
    command = [DIOPTRA, "run", str(path), "--plugin-cache", cache, "--output", "json"]
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]

    logs = [Path(json.loads(stdout)["log"]) for stdout, _ in outputs]
    assert logs[0] != logs[1]
    for log in logs:
        assert log.read_text().count("RuntimeError: the detector overheated") >= 1
        assert log.name.startswith("totals-")


# -- plugin problems name the plugin's file ---------------------------------------------------


def test_a_plugin_with_a_syntax_error_is_named_with_its_file_and_line(workspace: Path) -> None:
    steps = workspace / "plugins" / "runpkg" / "ops" / "steps.py"
    steps.write_text(STEPS.replace("def total(data: dict) -> int:", "def total(data: dict) -> int"))
    path = experiment(workspace, {"script": FLOWS}, parameters={"n": 1})

    done = dioptra_run(path)

    assert done.returncode == 2
    synced = workspace / "cache" / "plugins" / "totals" / "runpkg" / "ops" / "steps.py"
    line = steps.read_text().splitlines().index("def total(data: dict) -> int") + 1
    assert f"in plugin file {synced}, line {line}" in done.stderr


def test_a_plugin_importing_a_missing_library_is_named_with_its_file_and_line(
    workspace: Path,
) -> None:
    steps = workspace / "plugins" / "runpkg" / "ops" / "steps.py"
    steps.write_text("import not_installed_library\n" + STEPS)
    path = experiment(workspace, {"script": FLOWS}, parameters={"n": 1})

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "No module named 'not_installed_library'" in done.stderr
    synced = workspace / "cache" / "plugins" / "totals" / "runpkg" / "ops" / "steps.py"
    assert f"in plugin file {synced}, line 1" in done.stderr


def test_a_source_synced_as_a_folder_gets_the_trailing_slash_hint(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    document = yaml.safe_load(path.read_text())
    document["spec"]["plugins"]["sources"] = ["./plugins"]
    path.write_text(yaml.safe_dump(document))

    done = dioptra_run(path)

    assert done.returncode == 2
    assert "the source was synced as the folder plugins/" in done.stderr
    assert "end the source with a slash" in done.stderr


def test_a_command_line_argparse_refuses_still_gives_a_json_document(tmp_path: Path) -> None:
    done = subprocess.run(
        [DIOPTRA, "run", "x.yaml", "--output", "json", "--parallel", "many"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert document["error"] == {
        "reason": "InvalidArguments",
        "message": "dioptra run: argument --parallel: invalid int value: 'many'",
    }


def test_the_default_embedded_prefect_mode_gives_the_same_json_document(
    workspace: Path, tmp_path: Path
) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 4})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")

    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(workspace / "cache"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=workspace,
    )

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["phase"], document["exitCode"]) == ("Succeeded", 0)
    assert document["results"]["metrics"] == {"total": 6}
    assert "Traceback" not in done.stderr


def test_an_unwritable_prefect_home_is_one_line_before_anything_runs(workspace: Path) -> None:
    path = experiment(workspace, {"module": "runpkg.flows:flow"}, parameters={"n": 1})
    blocker = workspace / "a-file"
    blocker.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(blocker / "prefect")

    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(workspace / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert done.returncode == 2
    assert done.stderr == (
        f"dioptra run: cannot start the local Prefect server: {blocker / 'prefect'} is not "
        "writable (Not a directory); set PREFECT_HOME to a writable folder (in a pod, mount a "
        "writable emptyDir at /tmp, as the operator's Jobs do) or PREFECT_API_URL to a Prefect "
        "server\n"
    )
