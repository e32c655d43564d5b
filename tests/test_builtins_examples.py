"""The example Experiments: schema-valid, their flows well-formed, and their flows really run.

Entry points are loaded with the runner's own loader (``dioptra_runner.entrypoint``) while the
example's plugin folders are on the path, checked (plugins found, arguments bind, parameters
complete) and run for real on Prefect 3 against the session's Prefect server.
"""

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dioptra.flow import Flow
from dioptra.sdk.utilities.contexts import plugin_dirs
from dioptra_api.sweep import expand_sweep
from dioptra_builtins.random.rng import init_rng
from dioptra_builtins.random.sample import draw_random_integer
from dioptra_runner.entrypoint import load_flow
from dioptra_runner.experiment import Experiment, load_experiment_file, validate_document

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_FLOWS = [
    "adversarial-digits.yaml",
    "image-resizer.yaml",
    "random-integer.yaml",
    "module-entrypoint.yaml",
    "task-graph.yaml",
    "epsilon-sweep.yaml",
]
SUMMARY = "dioptra_builtins.metrics.report.summarize"


def _local_plugin_folders(experiment: Experiment) -> list[str]:
    """The Experiment's local plugin folders. The S3 sources of the examples hold the builtins,
    which are installed here as in the runner image, so they need no sync in these tests."""
    return [s for s in experiment.resolved_plugin_sources() if not s.startswith("s3://")]


@pytest.fixture
def load_example() -> Iterator[Callable[[str], tuple[Experiment, Flow]]]:
    """Load an example's Experiment and Flow with its plugin folders on the path for the test."""
    with contextlib.ExitStack() as stack:

        def load(name: str) -> tuple[Experiment, Flow]:
            experiment = load_experiment_file(EXAMPLES / name)
            stack.enter_context(plugin_dirs(dirs=_local_plugin_folders(experiment)))
            return experiment, load_flow(experiment.spec["entryPoint"])

        yield load


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_experiment(path: Path) -> None:
    assert validate_document(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("name", EXAMPLE_FLOWS)
def test_example_flows_find_their_plugins_and_accept_their_parameters(
    name: str, load_example: Any
) -> None:
    experiment, flow = load_example(name)
    flow.check(experiment.spec["parameters"])
    assert flow.tasks


def test_the_module_example_resolves_its_plugin_folder_next_to_the_file() -> None:
    experiment = load_experiment_file(EXAMPLES / "module-entrypoint.yaml")
    assert experiment.resolved_plugin_sources() == [f"{EXAMPLES / 'plugins'}/"]


def _run(load_example: Any, name: str, **overrides: Any) -> dict[str, Any]:
    experiment, flow = load_example(name)
    result = flow.run({**experiment.spec["parameters"], **overrides})
    assert result.is_successful(), result.message
    return {task: outcome.result for task, outcome in result.tasks.items()}


def test_the_adversarial_digits_demo_reports_attack_and_defence_accuracies(
    prefect_server_env: str, load_example: Any
) -> None:
    summary = _run(load_example, "adversarial-digits.yaml")[SUMMARY]
    assert summary["epsilon"] == 0.2
    assert summary["clean_accuracy"] >= 0.9
    assert summary["adversarial_accuracy"] < summary["clean_accuracy"] - 0.3
    assert summary["defended_accuracy"] > summary["adversarial_accuracy"]
    assert summary["mean_linf_perturbation"] == pytest.approx(0.2, abs=1e-3)


def test_the_image_resizer_rotates_generated_images_at_the_requested_size(
    prefect_server_env: str, load_example: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the tasks' scratch folders
    results = _run(load_example, "image-resizer.yaml")
    assert results["dioptra_builtins.data.images.describe"] == {
        "count": 6,
        "sizes": [[28, 28]],
        "formats": ["JPEG", "PNG"],
    }
    assert Path(results["dioptra_builtins.data.images.rotate"]).parent == tmp_path


def test_the_random_integer_example_reports_its_seed_and_the_draw_it_reproduces(
    prefect_server_env: str, load_example: Any
) -> None:
    summary = _run(load_example, "random-integer.yaml")[SUMMARY]
    _, rng = init_rng(42)
    assert summary == {"seed": 42, "value": draw_random_integer(rng, low=0, high=100)}


def test_the_module_entry_point_runs_the_local_plugin_package(
    prefect_server_env: str, load_example: Any
) -> None:
    report = _run(load_example, "module-entrypoint.yaml")["acme.ops.steps.report"]
    assert report["n"] == 10 and report["seed"] == 7
    assert report["total"] == report["first_half_sum"] + report["second_half_sum"]


def test_the_task_graph_example_runs_the_builtins_as_declared(
    prefect_server_env: str, load_example: Any
) -> None:
    summary = _run(load_example, "task-graph.yaml")["summary"]
    assert summary["seed"] == 0 and summary["epsilon"] == 0.2
    assert summary["clean_accuracy"] >= 0.9
    assert summary["adversarial_accuracy"] < summary["clean_accuracy"] - 0.3
    # Smoothing wins back part of what the attack took (seed 0: 0.08 attacked, 0.23 smoothed).
    assert summary["smoothed_accuracy"] > summary["adversarial_accuracy"] + 0.1
    assert summary["smoothed_accuracy"] < summary["clean_accuracy"]
    assert summary["mean_l2_perturbation"] > 0.0


def test_the_epsilon_sweep_expands_to_one_run_per_epsilon_the_flow_accepts(
    load_example: Any,
) -> None:
    experiment, flow = load_example("epsilon-sweep.yaml")
    sweep = experiment.spec["sweep"]
    points = expand_sweep(sweep, experiment.spec["parameters"], known_parameters=flow.parameters)
    assert [p.values for p in points] == [{"epsilon": e} for e in sweep["grid"]["epsilon"]]
    for point in points:
        assert flow.check(point.parameters)["epsilon"] == point.values["epsilon"]


def test_the_epsilon_sweep_loses_accuracy_as_epsilon_grows(
    prefect_server_env: str, load_example: Any
) -> None:
    none = _run(load_example, "epsilon-sweep.yaml", epsilon=0.0)["summary"]
    large = _run(load_example, "epsilon-sweep.yaml", epsilon=0.3)["summary"]
    assert none["adversarial_accuracy"] == none["clean_accuracy"] >= 0.9
    assert large["adversarial_accuracy"] < none["adversarial_accuracy"] - 0.3
