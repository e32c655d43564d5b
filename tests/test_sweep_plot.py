"""A sweep ends with a PNG: each metric against the swept parameter."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
from dioptra.graph import COMPLETED, FAILED, FlowRunResult
from dioptra_api.sweep import expand_sweep
from dioptra_runner.execution import PointRun
from dioptra_runner.sweep_plot import plot_title, render_sweep_plot, sweep_plot_points
from support.records import DIOPTRA

REPO = Path(__file__).resolve().parent.parent


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def point_runs(grid: dict[str, list[Any]], results: list[dict[str, Any]]) -> list[PointRun]:
    runs = []
    for point, result in zip(expand_sweep({"grid": grid}, {}), results, strict=True):
        run_ = PointRun(point, dict(point.parameters))
        state = FAILED if result is None else COMPLETED
        run_.result = FlowRunResult("f", state)
        run_.results = result or {}
        runs.append(run_)
    return runs


@pytest.mark.usefixtures("prefect_api_url")
def test_the_epsilon_sweep_ends_with_a_plot_named_in_the_summary(tmp_path: Path) -> None:
    import subprocess

    example = (REPO / "examples" / "epsilon-sweep.yaml").read_text()
    builtins = REPO / "runner-image" / "dioptra_builtins"
    path = tmp_path / "epsilon-sweep.yaml"
    path.write_text(example.replace("s3://dioptra-plugins/dioptra_builtins", str(builtins)))

    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(tmp_path / "cache"), "--parallel", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr
    shown = re.search(r"^plot: (\S+\.png)$", done.stdout, re.MULTILINE)
    assert shown, done.stdout
    plot = Path(shown.group(1))
    assert plot.parent == tmp_path / "cache" / "plots"
    width, height = png_size(plot.read_bytes())
    assert width > height > 300


def test_points_plot_their_logged_metrics_and_leave_out_the_swept_parameter() -> None:
    runs = point_runs(
        {"eps": [0.1, 0.2]},
        [
            {"metrics": {"acc": 0.9, "eps": 0.1}, "outputs": {"final": {"x": 1}}},
            {"metrics": {"acc": 0.5, "eps": 0.2}},
        ],
    )

    assert sweep_plot_points(runs, ["final"]) == [
        ({"eps": 0.1}, {"acc": 0.9}),
        ({"eps": 0.2}, {"acc": 0.5}),
    ]


def test_without_logged_metrics_the_final_tasks_numbers_are_plotted() -> None:
    runs = point_runs(
        {"eps": [0.1, 0.3]},
        [
            {"outputs": {"summary": {"eps": 0.1, "acc": 0.9, "name": "a"}, "mid": 7}},
            None,  # a failed point: a gap in the lines
        ],
    )

    assert sweep_plot_points(runs, ["summary"]) == [
        ({"eps": 0.1}, {"acc": 0.9}),
        ({"eps": 0.3}, {}),
    ]


def test_two_swept_parameters_draw_one_panel_per_metric() -> None:
    points = [
        ({"eps": eps, "seed": seed}, {"acc": 1 - eps - seed / 10, "loss": eps + seed})
        for eps in (0.1, 0.2, 0.3)
        for seed in (0, 1)
    ]

    one_panel = png_size(render_sweep_plot("s", [(v, {"acc": m["acc"]}) for v, m in points]) or b"")
    two_panels = png_size(render_sweep_plot("s", points) or b"")

    assert two_panels[0] > one_panel[0]  # side by side
    assert two_panels[1] == one_panel[1]


def test_a_sweep_without_numbers_has_no_plot() -> None:
    assert render_sweep_plot("s", [({"eps": 0.1}, {}), ({"eps": 0.2}, {})]) is None


def test_string_values_are_evenly_spaced_labels() -> None:
    points = [({"model": "svm"}, {"acc": 0.8}), ({"model": "lr"}, {"acc": 0.9})]

    png = render_sweep_plot("s", points)

    assert png is not None
    assert png_size(png)[0] > 0


def test_a_long_title_is_wrapped_to_the_figures_width_and_a_short_one_is_not() -> None:
    what = "clean_accuracy, adversarial_accuracy, defended_accuracy"
    wrapped = plot_title("epsilon-sweep", what, "epsilon", 8)
    assert wrapped.replace("\n", " ") == f"epsilon-sweep: {what} against epsilon"
    assert max(len(line) for line in wrapped.splitlines()) <= 72 < len(wrapped)
    assert plot_title("grid", "accuracy", "epsilon", 8) == "grid: accuracy against epsilon"
