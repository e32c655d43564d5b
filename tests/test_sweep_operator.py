"""A sweep in the cluster, the pure parts: point Jobs, the plan, the status.

What a sweep point's runner reports is checked on the API server, in tests/test_reporter.py.
"""

from __future__ import annotations

import json
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.sweep import SweepPoint, expand_sweep
from dioptra_operator.job_builder import (
    InvalidSpecError,
    build_job,
    job_name,
    point_job_name,
    spec_hash,
    sweep_points,
)
from dioptra_operator.settings import Settings
from dioptra_operator.sweep_plan import (
    job_finished,
    job_phase,
    plan_sweep,
    point_outcome,
    sweep_phase,
    sweep_status,
)

P = c.Phase
SETTINGS = Settings(runner_image="registry.example/runner:1")
GRID = {"grid": {"epsilon": [0.05, 0.1, 0.2]}, "maxConcurrent": 2}


def experiment(name: str = "sweep", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "lab", "generation": 2, "uid": "u-1"},
        "spec": {
            "entryPoint": {"module": "acme.flows:flow"},
            "parameters": {"epsilon": 0.0, "seed": 7},
            "sweep": GRID,
            **spec,
        },
    }


def points() -> list[SweepPoint]:
    return expand_sweep(GRID, {"epsilon": 0.0, "seed": 7})


def names(generation: int = 2) -> dict[str, str]:
    return {point.key: point_job_name("sweep", generation, point.key) for point in points()}


def main_env(job: dict[str, Any]) -> dict[str, Any]:
    (main,) = job["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value") for item in main["env"]}


def job(*, condition: str | None = None, active: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"active": active} if active else {}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True"}]
    return {"metadata": {"name": "j"}, "status": status}


# -- point Jobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [5, 40, 63, 120])
def test_a_point_job_name_fits_a_dns_label(length: int) -> None:
    assert len(point_job_name("e" * length, 12, "abcdefghij")) <= c.DNS_LABEL_MAX


@pytest.mark.parametrize("length", [5, 40, 120])
def test_a_point_job_name_ends_with_the_generation_and_the_point_key(length: int) -> None:
    assert point_job_name("e" * length, 12, "abcdefghij").endswith("-g12-abcdefghij")


def test_long_experiment_names_differing_only_at_the_end_get_different_point_job_names() -> None:
    first, second = "x" * 70 + "a", "x" * 70 + "b"
    assert point_job_name(first, 1, "k" * 10) != point_job_name(second, 1, "k" * 10)


def test_a_point_job_name_differs_from_the_plain_job_name() -> None:
    assert point_job_name("sweep", 2, "abcdefghij") != job_name("sweep", 2)


def test_a_point_job_is_named_after_its_point() -> None:
    point = points()[1]
    built = build_job(experiment(), SETTINGS, point)
    assert built["metadata"]["name"] == point_job_name("sweep", 2, point.key)


@pytest.mark.parametrize("where", ["job", "pod"])
def test_a_point_job_and_its_pods_carry_the_sweep_point_label(where: str) -> None:
    point = points()[0]
    built = build_job(experiment(), SETTINGS, point)
    metadata = built["metadata"] if where == "job" else built["spec"]["template"]["metadata"]
    assert metadata["labels"][c.LABEL_SWEEP_POINT] == point.key


def test_a_point_job_tells_the_runner_its_point_key() -> None:
    point = points()[2]
    assert main_env(build_job(experiment(), SETTINGS, point))[c.SWEEP_POINT_ENV] == point.key


def test_a_point_jobs_snapshot_has_the_points_parameters_and_no_sweep() -> None:
    point = points()[2]
    snapshot = json.loads(main_env(build_job(experiment(), SETTINGS, point))["DIOPTRA_EXPERIMENT"])
    assert "sweep" not in snapshot["spec"]
    assert snapshot["spec"]["parameters"] == {"epsilon": 0.2, "seed": 7}


def test_a_plain_job_tells_the_runner_no_sweep_point() -> None:
    spec = {key: value for key, value in experiment()["spec"].items() if key != "sweep"}
    plain = build_job({**experiment(), "spec": spec}, SETTINGS)
    assert c.SWEEP_POINT_ENV not in main_env(plain)


def test_a_point_job_keeps_the_run_generation_it_was_given() -> None:
    point = points()[0]
    built = build_job(experiment(), SETTINGS, point, generation=1)
    assert built["metadata"]["name"] == point_job_name("sweep", 1, point.key)
    assert built["metadata"]["labels"][c.LABEL_GENERATION] == "1"


def test_every_point_job_carries_the_hash_of_the_whole_spec() -> None:
    hashes = {
        build_job(experiment(), SETTINGS, point)["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]
        for point in points()
    }
    assert hashes == {spec_hash(experiment()["spec"])}


@pytest.mark.parametrize(
    ("sweep", "path"),
    [
        ({"grid": {"epsilon": []}}, "spec.sweep.grid.epsilon"),
        ({"points": []}, "spec.sweep.points"),
        ({"grid": {"a": [1]}, "points": [{"a": 1}]}, "spec.sweep"),
        ({"grid": {"a": [1]}, "maxConcurrent": 0}, "spec.sweep.maxConcurrent"),
    ],
)
def test_an_invalid_sweep_is_an_invalid_spec_naming_the_path(
    sweep: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidSpecError, match=path.replace(".", r"\.")):
        sweep_points(experiment(sweep=sweep)["spec"])


def test_a_spec_without_a_sweep_has_no_points() -> None:
    assert sweep_points({"entryPoint": {"module": "m:f"}}) is None


# -- a point's phase and outcome ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("point_job", "phase"),
    [
        (job(), P.PENDING),
        (job(active=1), P.PENDING),
        (job(condition="Complete"), P.SUCCEEDED),
        (job(condition="Failed"), P.FAILED),
    ],
)
def test_a_point_jobs_phase_follows_its_status(point_job: dict[str, Any], phase: str) -> None:
    assert job_phase(point_job) == phase


def test_a_point_runs_once_its_job_has_a_ready_pod() -> None:
    ready = job(active=1)
    ready["status"]["ready"] = 1
    assert job_phase(ready) == P.RUNNING


@pytest.mark.parametrize(
    ("statuses", "phase"),
    [
        (
            {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
            P.PENDING,
        ),
        ({"initContainerStatuses": [{"state": {"running": {}}}]}, P.RUNNING),
        ({"containerStatuses": [{"state": {"running": {}}}]}, P.RUNNING),
    ],
    ids=["creating", "syncing", "running"],
)
def test_a_point_runs_once_a_container_of_its_pod_started(
    statuses: dict[str, Any], phase: str
) -> None:
    assert job_phase(job(active=1), [{"status": statuses}]) == phase


@pytest.mark.parametrize(
    ("condition", "done"), [(None, False), ("Complete", True), ("Failed", True)]
)
def test_a_point_job_is_finished_only_with_a_terminal_condition(
    condition: str | None, done: bool
) -> None:
    assert (job_finished(job(condition=condition)) is not None) is done


def test_a_point_outcome_carries_the_runners_results() -> None:
    report = {"phase": P.SUCCEEDED, "results": {"metrics": {"accuracy": 0.9}}}
    outcome = point_outcome("j", job(condition="Complete"), report)
    assert outcome["results"] == {"metrics": {"accuracy": 0.9}}


def test_a_point_whose_job_failed_is_failed_even_if_the_runner_said_running() -> None:
    outcome = point_outcome("j", job(condition="Failed"), {"phase": P.RUNNING}, "OOMKilled")
    assert (outcome["phase"], outcome["message"]) == (P.FAILED, "OOMKilled")


def test_a_failed_points_message_prefers_the_runners_own() -> None:
    report = {"phase": P.FAILED, "message": "task attack failed"}
    outcome = point_outcome("j", job(condition="Failed"), report, "exit code 1")
    assert outcome["message"] == "task attack failed"


def test_a_point_whose_runner_failed_is_failed_even_if_its_job_completed() -> None:
    outcome = point_outcome("j", job(condition="Complete"), {"phase": P.FAILED})
    assert outcome["phase"] == P.FAILED


def test_a_finished_point_whose_job_expired_keeps_its_recorded_phase() -> None:
    outcome = point_outcome("j", None, {"job": "j", "jobPhase": P.SUCCEEDED})
    assert outcome["phase"] == P.SUCCEEDED


def test_a_point_whose_job_vanished_before_finishing_failed_with_job_missing() -> None:
    outcome = point_outcome("j", None, {"job": "j", "jobPhase": P.RUNNING})
    assert outcome["phase"] == P.FAILED
    assert "was deleted before the experiment finished" in outcome["message"]


def test_a_report_about_another_runs_job_is_ignored() -> None:
    report = {"job": "old-g1-k", "jobPhase": P.FAILED, "phase": P.FAILED}
    assert point_outcome("new-g2-k", None, report) == {"phase": P.PENDING}


# -- the plan -----------------------------------------------------------------------------------


def jobs_for(states: list[str | None]) -> dict[str, dict[str, Any]]:
    """Point Jobs for the first len(states) points: None is running, else a condition type."""
    by_key = names()
    return {
        by_key[point.key]: job(condition=state, active=0 if state else 1)
        for point, state in zip(points(), states, strict=False)
    }


@pytest.mark.parametrize(
    ("states", "limit", "created"),
    [
        ([], 2, 2),
        ([], 5, 3),
        ([None], 2, 1),
        ([None, None], 2, 0),
        (["Complete", None], 2, 1),
        (["Complete", "Failed"], 2, 1),
        (["Complete", "Complete", "Complete"], 2, 0),
    ],
)
def test_the_plan_keeps_at_most_the_limit_of_point_jobs_unfinished(
    states: list[str | None], limit: int, created: int
) -> None:
    plan = plan_sweep(points(), names(), jobs_for(states), {}, limit)
    assert len(plan.create) == created


def test_the_plan_starts_points_in_sweep_order() -> None:
    plan = plan_sweep(points(), names(), jobs_for(["Complete"]), {}, 2)
    assert [point.index for point in plan.create] == [1, 2]


def test_a_point_whose_finished_job_expired_is_not_started_again() -> None:
    first = points()[0]
    reports = {first.key: {"job": names()[first.key], "jobPhase": P.SUCCEEDED}}
    plan = plan_sweep(points(), names(), {}, reports, 3)
    assert [point.index for point in plan.create] == [1, 2]


def test_a_runner_report_alone_does_not_count_as_a_started_point() -> None:
    first = points()[0]
    plan = plan_sweep(points(), names(), {}, {first.key: {"phase": P.RUNNING}}, 3)
    assert [point.index for point in plan.create] == [0, 1, 2]


# -- the Experiment's status --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "suspended", "phase"),
    [
        ({"Pending": 3}, False, P.PENDING),
        ({"Running": 1, "Pending": 2}, False, P.RUNNING),
        ({"Succeeded": 1, "Pending": 2}, False, P.RUNNING),
        ({"Succeeded": 3}, False, P.SUCCEEDED),
        ({"Succeeded": 2, "Failed": 1}, False, P.FAILED),
        ({"Failed": 1, "Running": 2}, False, P.RUNNING),
        ({"Running": 2, "Pending": 1}, True, P.SUSPENDED),
        ({"Succeeded": 3}, True, P.SUCCEEDED),
    ],
)
def test_the_sweeps_phase_follows_its_points(
    counts: dict[str, int], suspended: bool, phase: str
) -> None:
    assert sweep_phase(counts, 3, suspended=suspended) == phase


def outcomes(*phases: str) -> dict[str, dict[str, Any]]:
    return {point.key: {"phase": phase} for point, phase in zip(points(), phases, strict=True)}


def test_the_sweeps_progress_counts_finished_points() -> None:
    status = sweep_status(points(), outcomes(P.SUCCEEDED, P.FAILED, P.RUNNING))
    assert status["progress"] == "2/3"


def test_the_sweeps_summary_counts_points_by_phase() -> None:
    status = sweep_status(points(), outcomes(P.SUCCEEDED, P.SUCCEEDED, P.RUNNING))
    assert status["sweep"]["counts"] == {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 0}


def test_a_failed_sweeps_message_counts_the_failed_points_and_quotes_the_first() -> None:
    failed = outcomes(P.SUCCEEDED, P.FAILED, P.FAILED)
    failed[points()[1].key]["message"] = "exit code 1\nmore"
    status = sweep_status(points(), failed)
    assert status["message"] == "2 of 3 sweep points failed; first: exit code 1"


def test_a_running_sweep_writes_no_message() -> None:
    assert "message" not in sweep_status(points(), outcomes(P.RUNNING, P.PENDING, P.PENDING))
