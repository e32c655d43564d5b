"""Sweep expansion (``spec.sweep``) into points, and the status summary of their outcomes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from dioptra_api.sweep import (
    MAX_HEADLINES,
    MAX_POINTS,
    SweepError,
    SweepPoint,
    expand_sweep,
    max_concurrent,
    summarize_points,
)

GRID = {"grid": {"epsilon": [0.05, 0.1, 0.2], "seed": [0, 1]}, "maxConcurrent": 2}


def problems_of(sweep: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(SweepError) as caught:
        expand_sweep(sweep, {}, **kwargs)
    return caught.value.problems


def test_a_grid_expands_to_its_cartesian_product_first_parameter_slowest() -> None:
    points = expand_sweep(GRID, {})

    assert [p.values for p in points] == [
        {"epsilon": e, "seed": s} for e in (0.05, 0.1, 0.2) for s in (0, 1)
    ]
    assert [p.index for p in points] == list(range(6))


def test_each_point_merges_its_values_over_the_base_parameters() -> None:
    points = expand_sweep({"points": [{"epsilon": 0.3}]}, {"epsilon": 0.0, "data_dir": "/d"})

    assert points[0].parameters == {"epsilon": 0.3, "data_dir": "/d"}


def test_expansion_leaves_the_base_parameters_unchanged() -> None:
    base = {"epsilon": 0.0}

    expand_sweep(GRID, base)

    assert base == {"epsilon": 0.0}


def test_explicit_points_keep_their_order_and_may_set_different_parameters() -> None:
    points = expand_sweep({"points": [{"seed": 3}, {"epsilon": 0.1, "seed": 1}]}, {})

    assert [p.label for p in points] == ["seed=3", "epsilon=0.1,seed=1"]


def test_labels_name_each_value_in_grid_order() -> None:
    points = expand_sweep(GRID, {})

    assert points[0].label == "epsilon=0.05,seed=0"
    assert points[-1].label == "epsilon=0.2,seed=1"


def test_labels_show_structured_values_as_compact_json() -> None:
    points = expand_sweep({"points": [{"size": [28, 28], "name": "mnist", "on": True}]}, {})

    assert points[0].label == "size=[28,28],name=mnist,on=true"


def test_keys_are_short_lowercase_and_safe_in_job_names() -> None:
    for point in expand_sweep(GRID, {}):
        assert re.fullmatch(r"[a-z0-9-]{1,12}", point.key), point.key


def test_keys_are_distinct_for_distinct_points() -> None:
    keys = [p.key for p in expand_sweep({"grid": {"x": list(range(1000))}}, {})]

    assert len(set(keys)) == 1000


def test_the_same_values_get_the_same_key_in_any_sweep_and_order() -> None:
    from_grid = expand_sweep(GRID, {"other": 1})[1]
    from_points = expand_sweep({"points": [{"seed": 1, "epsilon": 0.05}]}, {})[0]

    assert from_grid.key == from_points.key


def test_max_concurrent_defaults_to_one() -> None:
    assert max_concurrent({"grid": {"x": [1]}}) == 1
    assert max_concurrent(GRID) == 2


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ({}, "spec.sweep: set exactly one of grid or points"),
        ({"grid": {"x": [1]}, "points": [{"x": 1}]}, "spec.sweep: set exactly one of grid or"),
        ({"grid": {}}, "spec.sweep.grid: must be a non-empty mapping"),
        ({"grid": {"x": 0.1}}, "spec.sweep.grid.x: must be a non-empty list of values, got float"),
        ({"grid": {"x": []}}, "spec.sweep.grid.x: must be a non-empty list of values, got list"),
        ({"points": []}, "spec.sweep.points: must be a non-empty list of parameter mappings"),
        ({"points": [{"x": 1}, {}]}, "spec.sweep.points[1]: must be a non-empty mapping"),
        ({"points": [{"x": 1}, 5]}, "spec.sweep.points[1]: must be a non-empty mapping"),
        ({"points": [{"x": 1}, {"x": 1}]}, "spec.sweep.points[1]: point x=1 is listed twice"),
        ({"grid": {"x": [1, 1]}}, "spec.sweep.grid: point x=1 is listed twice (also point 0)"),
        ({"grid": {"x": [1]}, "maxConcurrent": 0}, "spec.sweep.maxConcurrent: must be an integer"),
        ({"grid": {"x": [1]}, "parallel": 2}, "spec.sweep.parallel: unknown field"),
        ("grid", "spec.sweep: must be a mapping with grid or points, got str"),
    ],
)
def test_each_malformed_sweep_is_reported_with_its_path(sweep: Any, expected: str) -> None:
    problems = problems_of(sweep)

    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_grid_over_the_point_limit_is_rejected_without_expanding_it() -> None:
    sweep = {"grid": {"a": list(range(100)), "b": list(range(100)), "c": list(range(100))}}

    problems = problems_of(sweep)

    assert problems == [
        f"spec.sweep.grid: 100 x 100 x 100 = 1000000 points, more than the limit of {MAX_POINTS}"
    ]


def test_too_many_explicit_points_are_rejected() -> None:
    problems = problems_of({"points": [{"x": i} for i in range(MAX_POINTS + 1)]})

    assert problems == [
        f"spec.sweep.points: {MAX_POINTS + 1} points, more than the limit of {MAX_POINTS}"
    ]


def test_names_the_flow_does_not_declare_are_unknown_when_the_caller_knows_them() -> None:
    problems = problems_of(
        {"points": [{"epsilon": 0.1}, {"epsilno": 0.2}]}, known_parameters={"epsilon", "seed"}
    )

    assert problems == [
        "spec.sweep.points[1].epsilno: unknown parameter 'epsilno' (the flow declares: "
        "epsilon, seed)"
    ]


def test_every_problem_is_listed_at_once() -> None:
    problems = problems_of({"grid": {"x": 1, "y": []}, "maxConcurrent": -1})

    assert len(problems) == 3, problems


# -- summary ------------------------------------------------------------------------------------


def points_of(n: int) -> list[SweepPoint]:
    return expand_sweep({"grid": {"i": list(range(n))}}, {})


def test_the_summary_counts_points_by_phase_and_unreported_points_are_pending() -> None:
    points = points_of(5)
    outcomes = {0: {"phase": "Succeeded"}, 1: {"phase": "Failed"}, 2: {"phase": "Running"}}

    summary = summarize_points(points, outcomes)

    assert summary["total"] == 5
    assert summary["counts"] == {"Pending": 2, "Running": 1, "Succeeded": 1, "Failed": 1}


def test_outcomes_may_be_keyed_by_point_key() -> None:
    points = points_of(2)

    summary = summarize_points(points, {points[1].key: {"phase": "Succeeded"}})

    assert [row["phase"] for row in summary["points"]] == ["Pending", "Succeeded"]


def test_each_row_shows_the_points_values_and_headline_metrics() -> None:
    points = points_of(1)
    results = {
        "metrics": {"accuracy": 0.91, "loss": 0.2},
        "outputs": {"report": {"big": list(range(100))}, "name": "run-a"},
    }

    row = summarize_points(points, {0: {"phase": "Succeeded", "results": results}})["points"][0]

    assert row == {
        "index": 0,
        "key": points[0].key,
        "values": {"i": 0},
        "phase": "Succeeded",
        "results": {"accuracy": 0.91, "loss": 0.2, "name": "run-a"},
    }


def test_headline_results_are_capped() -> None:
    metrics = {f"m{i}": i for i in range(20)}

    summary = summarize_points(points_of(1), {0: {"results": {"metrics": metrics}}})

    assert len(summary["points"][0]["results"]) == MAX_HEADLINES


def test_a_failed_points_message_is_kept_to_its_first_line() -> None:
    outcome = {"phase": "Failed", "message": "task attack failed: ValueError: bad\nTraceback..."}

    row = summarize_points(points_of(1), {0: outcome})["points"][0]

    assert row["message"] == "task attack failed: ValueError: bad"


def test_rows_beyond_the_cap_are_left_out_and_counted_but_still_counted_by_phase() -> None:
    points = points_of(150)
    outcomes = {i: {"phase": "Succeeded"} for i in range(150)}

    summary = summarize_points(points, outcomes, max_rows=100)

    assert len(summary["points"]) == 100
    assert summary["omitted"] == 50
    assert summary["counts"]["Succeeded"] == 150
