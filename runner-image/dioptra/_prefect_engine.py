"""Execute a recorded flow graph (:class:`dioptra.graph.FlowGraph`) as one Prefect 3 flow run.

Kept apart from ``flow.py`` so that defining a flow (and importing plugins)
never imports Prefect; only running one does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import queue
from collections.abc import Callable
from typing import Any

from prefect import Flow as PrefectFlow
from prefect import Task as PrefectTask
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from dioptra.graph import (
    COMPLETED,
    FAILED,
    NOT_RUN,
    RUNNING,
    FlowGraph,
    FlowRunResult,
    ItemRef,
    Parameter,
    TaskListener,
    TaskNode,
    TaskOutcome,
    describe_error,
    pick,
    substitute,
)

_PICK_KEY = "__dioptra_pick__"
# What a task sees when Prefect stops it at its timeoutSeconds.
_TIMEOUT_ERRORS = (TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError)


class _TaskFailures(RuntimeError):
    """Raised at the end of the flow function so that Prefect marks the flow run Failed."""


def run_on_prefect(
    flow: FlowGraph,
    parameters: dict[str, Any],
    *,
    listener: TaskListener | None,
    max_workers: int | None,
) -> FlowRunResult:
    outcomes = {node.name: TaskOutcome(name=node.name, task=node.task) for node in flow.tasks}
    notify = listener.task_changed if listener is not None else (lambda outcome: None)
    flow_run_id: dict[str, str] = {}

    def entry_point(parameters: dict[str, Any]) -> None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            flow_run_id["id"] = str(context.flow_run.id)
        futures = _schedule(flow, parameters, outcomes, notify)
        for node in flow.tasks:
            future = futures.get(node.name)
            if future is not None:
                _settle(outcomes[node.name], future, notify)
        failed = [o.name for o in outcomes.values() if o.state == FAILED]
        if failed:
            raise _TaskFailures(f"{len(failed)} task(s) failed: {', '.join(failed)}")

    runner: ThreadPoolTaskRunner[Any] = (
        ThreadPoolTaskRunner(max_workers=max_workers) if max_workers else ThreadPoolTaskRunner()
    )
    run: PrefectFlow[[dict[str, Any]], None] = PrefectFlow(
        entry_point,
        name=flow.name,
        task_runner=runner,  # type: ignore[arg-type]  # Prefect's own annotation is narrower
        validate_parameters=False,
        persist_result=False,
    )
    state = run(parameters, return_state=True)
    failed = [o for o in outcomes.values() if o.state == FAILED]
    if state.is_completed() and not failed:
        return FlowRunResult(flow.name, COMPLETED, outcomes, "", flow_run_id.get("id"))
    if failed:
        first = failed[0]
        message = f"task {first.name} failed: {first.message}"
        if len(failed) > 1:
            message += f" (and {len(failed) - 1} more)"
    else:
        message = f"flow run ended {state.name}: {state.message or ''}".strip()
    return FlowRunResult(flow.name, FAILED, outcomes, message, flow_run_id.get("id"))


def _schedule(
    flow: FlowGraph,
    parameters: dict[str, Any],
    outcomes: dict[str, TaskOutcome],
    notify: Callable[[TaskOutcome], None],
) -> dict[str, PrefectFuture[Any]]:
    """Submit each node once everything it depends on has finished; return all futures.

    Submitting a node only when it is ready (rather than all at once with ``wait_for``)
    matters: Prefect's thread pool gives a submitted task a worker thread while it
    waits for its inputs, so with a bounded pool, waiting tasks could starve ready ones.
    A node whose upstream failed is never submitted: it is marked NotRun here.
    """
    nodes = {node.name: node for node in flow.tasks}
    waiting = {node.name: {dep.name for dep in node.dependencies} for node in flow.tasks}
    dependents: dict[str, list[str]] = {name: [] for name in nodes}
    for node in flow.tasks:
        for dep in node.dependencies:
            dependents[dep.name].append(node.name)
    futures: dict[str, PrefectFuture[Any]] = {}
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()

    def submit(name: str) -> None:
        future = _submit(nodes[name], parameters, futures, outcomes[name], notify)
        futures[name] = future
        future.add_done_callback(lambda _, name=name: finished.put(name))  # type: ignore[misc]

    def skip(name: str) -> None:
        outcome = outcomes[name]
        if outcome.state == NOT_RUN:
            return
        outcome.state, outcome.message = NOT_RUN, "not run: an upstream task failed"
        notify(outcome)
        for child in dependents[name]:
            skip(child)

    for name, deps in waiting.items():
        if not deps:
            submit(name)
    in_flight = len(futures)
    while in_flight:
        name = finished.get()
        in_flight -= 1
        future = futures[name]
        future.wait()
        succeeded = future.state.is_completed()
        for child in dependents[name]:
            if not succeeded:
                skip(child)
                continue
            waiting[child].discard(name)
            if not waiting[child] and outcomes[child].state != NOT_RUN:
                submit(child)
                in_flight += 1
    return futures


def _submit(
    node: TaskNode,
    parameters: dict[str, Any],
    futures: dict[str, PrefectFuture[Any]],
    outcome: TaskOutcome,
    notify: Callable[[TaskOutcome], None],
) -> PrefectFuture[Any]:
    def to_input(value: Any) -> Any:
        if isinstance(value, Parameter):
            return parameters[value.name]
        if isinstance(value, TaskNode):
            return futures[value.name]
        assert isinstance(value, ItemRef)
        if isinstance(value.source, Parameter):
            return pick(parameters[value.source.name], value.path)
        # Prefect resolves futures nested in dicts; the task unwraps the pick itself.
        return {_PICK_KEY: futures[value.source.name], "path": list(value.path)}

    args = substitute(node.args, to_input)
    kwargs = substitute(node.kwargs, to_input)
    options = node.options
    task: PrefectTask[..., Any] = PrefectTask(
        _invoker(node, outcome, notify),
        name=node.name,
        retries=options.retries,
        retry_delay_seconds=options.retry_delay_seconds,
        timeout_seconds=options.timeout_seconds,
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    wait_for = [futures[upstream.name] for upstream in node.upstream]
    return task.submit(*args, wait_for=wait_for, **kwargs)


def _invoker(
    node: TaskNode, outcome: TaskOutcome, notify: Callable[[TaskOutcome], None]
) -> Callable[..., Any]:
    assert node.func is not None
    func = node.func

    @functools.wraps(func)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_unpick(a) for a in args)
        kwargs = {k: _unpick(v) for k, v in kwargs.items()}
        outcome.state, outcome.start_time, outcome.end_time = RUNNING, _now(), None
        notify(outcome)
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            outcome.end_time = _now()
            outcome.message, outcome.traceback = describe_error(error)
            timeout = node.options.timeout_seconds
            if timeout and isinstance(error, _TIMEOUT_ERRORS):
                outcome.message = f"timed out after {timeout:g} s (timeoutSeconds)"
            if _is_final_attempt(node):
                outcome.state, outcome.error = FAILED, error
            else:
                outcome.state = "Retrying"
            notify(outcome)
            raise
        outcome.state, outcome.result, outcome.end_time = COMPLETED, result, _now()
        outcome.error, outcome.message = None, ""
        notify(outcome)
        return result

    return invoke


def _settle(
    outcome: TaskOutcome, future: PrefectFuture[Any], notify: Callable[[TaskOutcome], None]
) -> None:
    """Record nodes the invoker never saw finish: not run (upstream failed), crashed, timed out."""
    state = future.state
    if outcome.state == COMPLETED and state.is_completed():
        return
    if state.is_failed() or state.is_crashed():
        if outcome.state != FAILED:
            outcome.state = FAILED
            outcome.message = outcome.message or f"{state.name}: {state.message or ''}".strip()
            outcome.end_time = outcome.end_time or _now()
            notify(outcome)
        return
    if not state.is_completed():
        outcome.state = NOT_RUN
        outcome.message = "not run: an upstream task failed"
        notify(outcome)


def _unpick(value: Any) -> Any:
    if isinstance(value, dict) and _PICK_KEY in value and set(value) == {_PICK_KEY, "path"}:
        return pick(value[_PICK_KEY], tuple(value["path"]))
    if isinstance(value, list):
        return [_unpick(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unpick(v) for v in value)
    if isinstance(value, dict):
        return {k: _unpick(v) for k, v in value.items()}
    return value


def _is_final_attempt(node: TaskNode) -> bool:
    context = TaskRunContext.get()
    if context is None or context.task_run is None:
        return True
    # run_count counts this attempt: 1 on the first, retries + 1 on the last.
    return context.task_run.run_count > node.options.retries


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
