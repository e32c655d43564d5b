"""A spec that can run is Accepted; one whose cached outputs would die with the pod says so."""

from __future__ import annotations

from typing import Any

import dioptra_api as c
from dioptra_operator.acceptance import accepted_condition, asks_for_cache
from dioptra_operator.settings import Settings

R = c.Reason
NO_STORE = Settings(runner_image="registry.example/runner:1")
CHART_STORE = Settings(runner_image="registry.example/runner:1", artifacts_store="s3://lab/art")


def graph(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"entryPoint": {"taskGraph": {"steps": list(steps)}}}


def test_a_plain_spec_is_accepted_as_valid() -> None:
    condition = accepted_condition({"entryPoint": {"module": "acme:flow"}}, NO_STORE, 3)
    assert (condition["type"], condition["status"]) == (c.ConditionType.ACCEPTED, "True")
    assert condition["reason"] == R.SPEC_ACCEPTED
    assert condition["observedGeneration"] == 3


def test_cached_tasks_without_any_store_are_accepted_with_a_warning_naming_the_fix() -> None:
    condition = accepted_condition({"cache": True}, NO_STORE, 1)
    assert (condition["status"], condition["reason"]) == ("True", R.CACHE_NOT_KEPT)
    assert "spec.artifacts.store" in condition["message"]
    assert "artifacts.store" in condition["message"].replace("spec.artifacts.store", "")
    assert R.CACHE_NOT_KEPT in c.WARNING_REASONS


def test_a_cached_task_graph_step_counts_as_caching() -> None:
    spec = graph({"name": "train", "task": "fit"}, {"name": "score", "task": "s", "cache": True})
    assert asks_for_cache(spec)
    assert not asks_for_cache(graph({"name": "train", "task": "fit", "cache": False}))
    assert accepted_condition(spec, NO_STORE, 1)["reason"] == R.CACHE_NOT_KEPT


def test_a_store_in_the_spec_or_the_chart_keeps_the_cache_without_a_warning() -> None:
    in_spec = {"cache": True, "artifacts": {"store": "s3://lab/runs"}}
    assert accepted_condition(in_spec, NO_STORE, 1)["reason"] == R.SPEC_ACCEPTED
    assert accepted_condition({"cache": True}, CHART_STORE, 1)["reason"] == R.SPEC_ACCEPTED
