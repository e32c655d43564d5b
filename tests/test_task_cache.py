"""Cached tasks on real Prefect 3: a stored output stands in for a call with the same inputs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter
from dioptra_runner.artifacts import LocalStore, StoreError, open_store
from dioptra_runner.task_cache import ArtifactKeeper
from dioptra_runner.taskgraph_spec import parse_task_graph
from support.cluster import wait_until
from support.plugin_tree import PluginTree

pytestmark = pytest.mark.usefixtures("prefect_server_env")

OPS = """
import threading
from dioptra import pyplugs

CALLS: list[str] = []

@pyplugs.register
def make(n: int) -> dict:
    CALLS.append("make")
    return {"items": list(range(n))}

@pyplugs.register
def total(data: dict, scale: int = 1) -> int:
    CALLS.append("total")
    return sum(data["items"]) * scale

@pyplugs.register
def record(**kwargs: object) -> list:
    CALLS.append("record")
    return sorted(kwargs)

@pyplugs.register
def lock() -> object:
    CALLS.append("lock")
    return threading.Lock()

@pyplugs.register
def describe(thing: object) -> str:
    CALLS.append("describe")
    return type(thing).__name__
"""


@pytest.fixture
def ops(plugin_tree: PluginTree) -> tuple[str, Any]:
    pkg = plugin_tree.package("cachepkg")
    plugin_tree.module(f"{pkg}.ops", OPS)
    return pkg, importlib.import_module(f"{pkg}.ops")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "artifacts")


def totals_flow(pkg: str, *, cache: bool = True) -> Flow:
    with Flow("totals") as flow:
        n = Parameter("n")
        made = pyplugs.call_task(pkg, "ops", "make", n=n, cache=cache)
        pyplugs.call_task(pkg, "ops", "total", data=made, cache=cache)
    return flow


def test_a_second_run_reuses_every_cached_output_and_shows_cached(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    pkg, module = ops
    flow = totals_flow(pkg)
    first = flow.run({"n": 4}, store=ArtifactKeeper(store))

    second = flow.run({"n": 4}, store=ArtifactKeeper(store))

    assert first.is_successful() and second.is_successful()
    assert module.CALLS == ["make", "total"]
    assert [t.shown_state for t in second.tasks.values()] == ["Cached", "Cached"]
    assert second[f"{pkg}.ops.total"].result == 6


def test_prefect_records_a_reused_task_in_its_cached_state(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    pkg, _ = ops
    flow = totals_flow(pkg)
    flow.run({"n": 2}, store=ArtifactKeeper(store))
    second = flow.run({"n": 2}, store=ArtifactKeeper(store))

    assert second.flow_run_id is not None
    only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[second.flow_run_id]))

    def states() -> list[str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=only_this_run)
        return sorted(run.state.name for run in runs if run.state)

    # Task runs reach the API through Prefect's events, a moment after they ended.
    wait_until(lambda: states() == ["Cached", "Cached"], timeout=20, what="two Cached task runs")


def test_a_changed_input_runs_the_task_again(ops: tuple[str, Any], store: LocalStore) -> None:
    pkg, module = ops
    flow = totals_flow(pkg)
    flow.run({"n": 4}, store=ArtifactKeeper(store))

    again = flow.run({"n": 5}, store=ArtifactKeeper(store))

    assert module.CALLS == ["make", "total", "make", "total"]
    assert [t.shown_state for t in again.tasks.values()] == ["Completed", "Completed"]


def test_outputs_are_kept_but_not_reused_without_cache(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    pkg, module = ops
    flow = totals_flow(pkg, cache=False)
    flow.run({"n": 3}, store=ArtifactKeeper(store))
    keeper = ArtifactKeeper(store)

    flow.run({"n": 3}, store=keeper)

    assert module.CALLS == ["make", "total"] * 2
    assert [(r.task, r.format, r.cached) for r in keeper.records] == [
        (f"{pkg}.ops.make", "json", False),
        (f"{pkg}.ops.total", "json", False),
    ]
    assert all(
        (store.root / r.uri.removeprefix(f"{store.location}/")).is_file() for r in keeper.records
    )


def test_spec_cache_caches_every_task_of_the_run(ops: tuple[str, Any], store: LocalStore) -> None:
    pkg, module = ops
    flow = totals_flow(pkg, cache=False)
    flow.run({"n": 3}, store=ArtifactKeeper(store, cache_all=True))

    again = flow.run({"n": 3}, store=ArtifactKeeper(store, cache_all=True))

    assert module.CALLS == ["make", "total"]
    assert all(t.cached for t in again.tasks.values())


def test_the_cache_option_of_call_task_never_reaches_the_plugin(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    pkg, _ = ops
    with Flow("options") as flow:
        recorded = pyplugs.call_task(pkg, "ops", "record", x=1, cache=True)

    result = flow.run(store=ArtifactKeeper(store))

    assert recorded.options.cache
    assert result[recorded].result == ["x"]


def test_an_input_that_cannot_be_serialized_leaves_its_task_uncached_with_a_warning(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    pkg, module = ops
    with Flow("locks") as flow:
        made = pyplugs.call_task(pkg, "ops", "lock", cache=True)
        pyplugs.call_task(pkg, "ops", "describe", thing=made, cache=True)
    keeper = ArtifactKeeper(store)

    result = flow.run(store=keeper)
    flow.run(store=ArtifactKeeper(store))

    assert result.is_successful()
    assert module.CALLS == ["lock", "describe", "lock", "describe"]
    assert any("output not stored" in w and "lock" in w for w in keeper.warnings)
    assert any("not cached: input 'thing'" in w for w in keeper.warnings)


def test_the_key_changes_when_the_plugin_functions_source_changes(
    ops: tuple[str, Any], plugin_tree: PluginTree, store: LocalStore
) -> None:
    pkg, module = ops
    keeper = ArtifactKeeper(store)
    before = keeper.cache_key(module.total, ({"items": [1]},), {})
    plugin_tree.module(f"{pkg}.ops", OPS.replace("* scale", "* scale * 2"))

    after = keeper.cache_key(importlib.reload(module).total, ({"items": [1]},), {})

    assert before != after


def test_a_positional_and_a_keyword_call_share_a_key(
    ops: tuple[str, Any], store: LocalStore
) -> None:
    _, module = ops
    keeper = ArtifactKeeper(store)

    positional = keeper.cache_key(module.total, ({"items": [1]}, 2), {})
    keyword = keeper.cache_key(module.total, (), {"scale": 2, "data": {"items": [1]}})

    assert positional == keyword


def test_a_task_graph_step_may_ask_for_caching_and_must_say_it_with_a_boolean() -> None:
    steps, problems = parse_task_graph(
        {
            "steps": [
                {"name": "a", "task": "p.m.f", "cache": True},
                {"name": "b", "task": "p.m.f", "cache": "yes"},
            ]
        }
    )

    assert [s.cache for s in steps] == [True, False]
    assert problems == [
        "spec.entryPoint.taskGraph.steps[1].cache: must be true or false, got str 'yes'"
    ]


def test_a_store_that_cannot_be_reached_fails_the_writing_task_naming_the_store(
    ops: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg, _ = ops
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    unreachable = open_store("s3://art/runs", endpoint_url="http://127.0.0.1:9")

    result = totals_flow(pkg).run({"n": 2}, store=ArtifactKeeper(unreachable))

    failed = result.failed_tasks[0]
    assert isinstance(failed.error, StoreError)
    assert "artifact store s3://art/runs" in failed.message
    assert "cannot reach" in failed.message
    assert "very-secret-key" not in failed.message and "AKIDSECRETID" not in failed.message
