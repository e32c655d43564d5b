"""A sweep in the cluster, the pure parts: its Indexed Job, its points' state, the status.

What a sweep point's runner reports is checked on the API server, in tests/test_reporter.py;
the whole sweep on the real control plane in tests/test_e2e_sweep.py.
"""

from __future__ import annotations

import json
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.sweep import SweepError, SweepPoint, cluster_points, point_for_index
from dioptra_operator.job_builder import (
    InvalidSpecError,
    build_job,
    job_name,
    sweep_points,
)
from dioptra_operator.settings import Settings
from dioptra_operator.sweep_plan import (
    changed_records,
    job_finished,
    parse_index_set,
    point_outcome,
    point_records,
    stalled_condition,
    sweep_phase,
    sweep_status,
)

P = c.Phase
SETTINGS = Settings(runner_image="registry.example/runner:1")
GRID = {"grid": {"epsilon": [0.05, 0.1, 0.2]}, "maxConcurrent": 2}
JOB = "sweep-g2"


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
    return cluster_points(GRID, {"epsilon": 0.0, "seed": 7})


def main_env(job: dict[str, Any]) -> dict[str, Any]:
    (main,) = job["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value") for item in main["env"]}


# -- the index sets of an Indexed Job's status --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        (None, set()),
        ("", set()),
        ("4", {4}),
        ("0-3", {0, 1, 2, 3}),
        ("1,3-5,7", {1, 3, 4, 5, 7}),
        ("0-1,10-12,999", {0, 1, 10, 11, 12, 999}),
    ],
)
def test_an_index_set_lists_single_indexes_and_ranges(text: str | None, indexes: set[int]) -> None:
    assert parse_index_set(text) == indexes


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "1,,x", "1.5"])
def test_anything_else_is_not_an_index_set(text: str) -> None:
    with pytest.raises(ValueError, match="not an index set"):
        parse_index_set(text)


# -- the sweep's Job ----------------------------------------------------------------------------


def test_a_sweep_is_one_indexed_job_with_one_completion_per_point() -> None:
    spec = build_job(experiment(), SETTINGS)["spec"]
    assert (spec["completionMode"], spec["completions"]) == ("Indexed", 3)


@pytest.mark.parametrize(("limit", "parallelism"), [(1, 1), (2, 2), (50, 3)])
def test_the_sweeps_job_runs_at_most_max_concurrent_points_at_once(
    limit: int, parallelism: int
) -> None:
    sweep = {**GRID, "maxConcurrent": limit}
    assert build_job(experiment(sweep=sweep), SETTINGS)["spec"]["parallelism"] == parallelism


@pytest.mark.parametrize(("backoff", "per_index"), [(None, 0), (2, 2)])
def test_the_backoff_limit_applies_to_each_point_on_its_own(
    backoff: int | None, per_index: int
) -> None:
    knobs = {} if backoff is None else {"backoffLimit": backoff}
    spec = build_job(experiment(**knobs), SETTINGS)["spec"]
    assert spec["backoffLimitPerIndex"] == per_index
    # A Job-wide limit would count every point's failures together and stop the others.
    assert "backoffLimit" not in spec and "maxFailedIndexes" not in spec


def test_the_sweeps_job_keeps_the_job_knobs() -> None:
    knobs = {"suspend": True, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60}
    spec = build_job(experiment(**knobs), SETTINGS)["spec"]
    assert {key: spec[key] for key in knobs} == knobs


def test_the_sweeps_job_is_named_after_the_run_generation() -> None:
    built = build_job(experiment(), SETTINGS, generation=1)
    assert built["metadata"]["name"] == job_name("sweep", 1)
    assert built["metadata"]["labels"][c.LABEL_GENERATION] == "1"


def test_the_sweeps_snapshot_holds_the_whole_sweep_for_the_runners_to_expand() -> None:
    snapshot = json.loads(main_env(build_job(experiment(), SETTINGS))["DIOPTRA_EXPERIMENT"])
    assert snapshot["spec"]["sweep"] == GRID
    assert snapshot["spec"]["parameters"] == {"epsilon": 0.0, "seed": 7}


def test_no_job_names_a_point_the_runner_finds_its_own_by_completion_index() -> None:
    env = main_env(build_job(experiment(), SETTINGS))
    assert c.SWEEP_POINT_ENV not in env and c.JOB_COMPLETION_INDEX_ENV not in env


def test_a_plain_experiments_job_is_not_indexed() -> None:
    spec = {key: value for key, value in experiment()["spec"].items() if key != "sweep"}
    built = build_job({**experiment(), "spec": spec}, SETTINGS)["spec"]
    assert "completionMode" not in built and built["backoffLimit"] == 0


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


# -- each Pod's point ---------------------------------------------------------------------------


def test_the_grid_order_does_not_change_which_point_an_index_runs() -> None:
    written = {"grid": {"seed": [1, 2], "epsilon": [0.1, 0.2]}}
    sorted_copy = {"grid": {"epsilon": [0.1, 0.2], "seed": [1, 2]}}
    assert [p.key for p in cluster_points(written, {})] == [
        p.key for p in cluster_points(sorted_copy, {})
    ]


@pytest.mark.parametrize("index", ["0", "2", 1])
def test_a_pod_runs_the_point_of_its_completion_index(index: str | int) -> None:
    point = point_for_index(GRID, {"seed": 7}, index)
    assert point == points()[int(index)]
    assert point.parameters["seed"] == 7


@pytest.mark.parametrize(
    ("index", "words"),
    [("3", "out of range: the sweep has 3 points (indexes 0-2)"), (None, "unset"), ("x", "'x'")],
)
def test_a_bad_completion_index_is_a_one_line_error(index: str | None, words: str) -> None:
    with pytest.raises(SweepError) as caught:
        point_for_index(GRID, {}, index)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_sweep_that_does_not_expand_is_a_one_line_error_in_the_pod() -> None:
    with pytest.raises(SweepError) as caught:
        point_for_index({"grid": {"a": []}, "points": []}, {}, "0")
    assert "spec.sweep" in str(caught.value) and "\n" not in str(caught.value)


# -- each point's record, from the Indexed Job and its Pods -------------------------------------


def indexed_job(
    completed: str = "", failed: str = "", condition: str | None = None, **status: Any
) -> dict[str, Any]:
    status = {**status}
    if completed:
        status["completedIndexes"] = completed
    if failed:
        status["failedIndexes"] = failed
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": "X"}]
    return {"metadata": {"name": JOB}, "spec": {}, "status": status}


def pod(index: int, phase: str = "Running", **container: Any) -> dict[str, Any]:
    state = container or {"running": {}}
    return {
        "metadata": {"name": f"{JOB}-{index}-x", "labels": {c.LABEL_COMPLETION_INDEX: str(index)}},
        "status": {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}]},
    }


def phases(records: dict[str, dict[str, Any]]) -> list[str | None]:
    return [records.get(point.key, {}).get("jobPhase") for point in points()]


def test_completed_and_failed_indexes_are_succeeded_and_failed_points() -> None:
    records = point_records(points(), JOB, indexed_job(completed="0", failed="2"), {})
    assert phases(records) == [P.SUCCEEDED, None, P.FAILED]


def test_a_point_whose_pod_runs_is_running_and_one_without_a_started_pod_has_no_record() -> None:
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    pods = [pod(0), pod(1, phase="Pending", **waiting)]
    assert phases(point_records(points(), JOB, indexed_job(), {}, pods)) == [P.RUNNING, None, None]


def test_a_failed_point_is_explained_by_its_own_pod() -> None:
    pods = [pod(0), pod(1, "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})]
    records = point_records(points(), JOB, indexed_job(failed="1"), {}, pods)
    assert records[points()[1].key]["jobMessage"] == c.MESSAGES[c.Reason.OOM_KILLED]
    assert "jobMessage" not in records[points()[0].key]


def test_a_point_killed_before_its_runner_reported_fails_with_the_pods_exit() -> None:
    pods = [pod(2, "Failed", terminated={"exitCode": 3, "reason": "Error"})]
    records = point_records(points(), JOB, indexed_job(failed="2"), {}, pods)
    outcome = point_outcome(JOB, records[points()[2].key])
    assert outcome == {"phase": P.FAILED, "message": "The runner exited with an error: exit code 3"}


def test_points_a_failed_job_never_finished_fail_with_the_jobs_reason() -> None:
    job = indexed_job(completed="0", condition="Failed")
    job["status"]["conditions"][0]["reason"] = "DeadlineExceeded"
    records = point_records(points(), JOB, job, {})
    assert phases(records) == [P.SUCCEEDED, P.FAILED, P.FAILED]
    assert records[points()[1].key]["jobMessage"].startswith(c.MESSAGES[c.Reason.DEADLINE_EXCEEDED])


def test_a_running_point_whose_pod_was_stopped_by_a_suspension_is_pending_again() -> None:
    first = points()[0].key
    reports = {first: {"job": JOB, "jobPhase": P.RUNNING}}
    stopped = [pod(0, "Failed", terminated={"exitCode": 143})]
    records = point_records(points(), JOB, indexed_job(), reports, stopped)
    assert records[first]["jobPhase"] == P.PENDING


def test_finished_points_keep_their_record_once_the_job_expired() -> None:
    reports = {p.key: {"job": JOB, "jobPhase": P.SUCCEEDED} for p in points()}
    records = point_records(points(), JOB, None, reports, job_created=True)
    assert phases(records) == [P.SUCCEEDED] * 3


def test_unfinished_points_of_a_job_deleted_under_them_fail_with_job_missing() -> None:
    reports = {points()[0].key: {"job": JOB, "jobPhase": P.SUCCEEDED}}
    records = point_records(points(), JOB, None, reports, job_created=True)
    assert phases(records) == [P.SUCCEEDED, P.FAILED, P.FAILED]
    assert "was deleted before the experiment finished" in records[points()[1].key]["jobMessage"]


def test_no_point_has_a_record_before_the_runs_job_is_created() -> None:
    assert point_records(points(), JOB, None, {}) == {}


def test_only_changed_records_are_written_and_a_stale_message_is_removed() -> None:
    key = points()[0].key
    reports = {key: {"job": JOB, "jobPhase": P.FAILED, "jobMessage": "old", "phase": P.FAILED}}
    records = {key: {"job": JOB, "jobPhase": P.PENDING}}
    assert changed_records(records, reports) == {key: {"jobPhase": P.PENDING, "jobMessage": None}}
    assert changed_records(reports, reports) == {}


def test_a_job_is_finished_only_with_a_terminal_condition() -> None:
    assert job_finished(indexed_job()) is None
    assert job_finished(indexed_job(condition="Failed")) == P.FAILED
    assert job_finished(indexed_job(condition="Complete")) == P.SUCCEEDED


# -- a point's outcome --------------------------------------------------------------------------


def test_a_point_outcome_carries_the_runners_results() -> None:
    entry = {"jobPhase": P.SUCCEEDED, "phase": P.SUCCEEDED, "results": {"metrics": {"a": 0.9}}}
    assert point_outcome(JOB, entry)["results"] == {"metrics": {"a": 0.9}}


def test_a_point_whose_index_failed_is_failed_even_if_the_runner_said_running() -> None:
    entry = {"job": JOB, "jobPhase": P.FAILED, "jobMessage": "OOMKilled", "phase": P.RUNNING}
    assert point_outcome(JOB, entry) == {"phase": P.FAILED, "message": "OOMKilled"}


def test_a_failed_points_message_prefers_the_runners_own() -> None:
    entry = {"jobPhase": P.FAILED, "jobMessage": "exit code 1", "phase": P.FAILED}
    entry["message"] = "task attack failed"
    assert point_outcome(JOB, entry)["message"] == "task attack failed"


def test_a_point_whose_runner_failed_is_failed_even_if_its_index_completed() -> None:
    assert point_outcome(JOB, {"jobPhase": P.SUCCEEDED, "phase": P.FAILED})["phase"] == P.FAILED


def test_a_runners_report_alone_does_not_finish_a_point() -> None:
    assert point_outcome(JOB, {"phase": P.SUCCEEDED})["phase"] == P.PENDING


def test_an_entry_about_another_runs_job_is_ignored() -> None:
    entry = {"job": "sweep-g1", "jobPhase": P.FAILED, "phase": P.FAILED}
    assert point_outcome(JOB, entry) == {"phase": P.PENDING}


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


# -- why a sweep waits: its Stalled condition ------------------------------------------------------

PULL = {"waiting": {"reason": "ImagePullBackOff", "message": "no such image lab/runner:9"}}


def test_a_point_waiting_on_its_image_stalls_the_sweep_naming_the_first_such_point() -> None:
    pods = [pod(2, "Pending", **PULL), pod(1, "Pending", **PULL), pod(0)]
    stalled = stalled_condition(pods, [], 2)
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", c.Reason.IMAGE_PULL_FAILED)
    assert "point 1: runner: no such image lab/runner:9" in stalled["message"]
    assert stalled["message"].endswith("(and 1 more points)")
    assert stalled["observedGeneration"] == 2


def test_pods_without_a_problem_say_nothing_until_a_stall_was_reported() -> None:
    creating = {"waiting": {"reason": "ContainerCreating"}}
    assert stalled_condition([pod(0, "Pending", **creating)], [], 2) is None
    assert stalled_condition([], [], 2) is None


def test_a_reported_stall_clears_once_pods_exist_without_a_problem() -> None:
    before = [{"type": c.ConditionType.STALLED, "status": "True", "reason": "X", "message": "m"}]
    assert stalled_condition([], before, 2) is None  # still no Pod: the reason stands
    cleared = stalled_condition([pod(0)], before, 2)
    assert cleared is not None
    assert (cleared["status"], cleared["reason"]) == ("False", c.Reason.CONTAINERS_STARTED)


def test_an_ended_pod_never_stalls_the_sweep() -> None:
    ended = pod(0, "Failed", **PULL)
    assert stalled_condition([ended], [], 2) is None
