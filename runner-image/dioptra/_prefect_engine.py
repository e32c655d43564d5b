"""Execute a recorded flow graph (:class:`dioptra.graph.FlowGraph`) as one Prefect 3 flow run.

Kept apart from ``flow.py`` so that defining a flow (and importing plugins)
never imports Prefect; only running one does.

A run can be cancelled (:class:`dioptra.graph.Cancellation`, what the runner sets on SIGINT
or SIGTERM): no task starts after that, tasks still running are cancelled in Prefect's API and
abandoned (Python cannot stop a thread), and the flow run ends Cancelled while the API still
answers. The caller gets the result at once instead of after the running tasks' end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect import Flow as PrefectFlow
from prefect import Task as PrefectTask
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.states import Cancelled, Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from dioptra.graph import (
    CACHED,
    CANCELLED,
    CANCELLED_BEFORE_START,
    COMPLETED,
    FAILED,
    FINAL_STATES,
    NOT_RUN,
    RUNNING,
    Cancellation,
    FlowGraph,
    FlowRunResult,
    ItemRef,
    OutputStore,
    Parameter,
    TaskListener,
    TaskNode,
    TaskOutcome,
    cancel_outcome,
    cancelled_run_message,
    describe_error,
    pick,
    substitute,
)

_PICK_KEY = "__dioptra_pick__"
# What a task sees when Prefect stops it at its timeoutSeconds.
_TIMEOUT_ERRORS = (TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError)
# How long a running task's cancellation may wait for the API to know the task run: its
# creation reaches the API through Prefect's events, a moment after the task started.
_TASK_RUN_RECORD_WAIT = 3.0
_NOT_STARTED = CANCELLED_BEFORE_START
_LOG = logging.getLogger("dioptra.flow")
# A parameter value larger than this as JSON (or not JSON at all, e.g. an artifact loaded as
# an object) is shown to Prefect by its type only: Prefect stores a flow run's parameters and
# caps them (512 KiB by default); the runner checks the values it was given against that cap.
_SHOWN_PARAMETER_LIMIT = 65536


class _TaskFailures(RuntimeError):
    """Raised at the end of the flow function so that Prefect marks the flow run Failed."""


@dataclass
class _Run:
    """What the scheduler, the task invokers and the cancellation of one flow run share.

    ``lock`` orders outcome changes between the flow's thread (cancelling) and the task
    threads (starting, finishing): a task that ends after its run was cancelled must not
    turn its Cancelled account back into Completed or start its function.
    """

    outcomes: dict[str, TaskOutcome]
    notify: Callable[[TaskOutcome], None]
    cancellation: Cancellation | None
    store: OutputStore | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cancelled(self) -> bool:
        return self.cancellation is not None and self.cancellation.is_cancelled()

    @property
    def reason(self) -> str:
        return self.cancellation.reason if self.cancellation is not None else ""


class _AbandoningTaskRunner(ThreadPoolTaskRunner[Any]):
    """Prefect's thread pool task runner, except that a cancelled run does not wait for tasks.

    ``ThreadPoolTaskRunner`` shuts its executor down and waits for running tasks when the
    flow run ends; a task blocked in plugin code (which no thread can be made to leave)
    would keep the cancelled flow run, and the process, alive until it ends on its own.
    Once the run's cancellation is set, queued tasks are dropped and running ones abandoned.
    """

    def __init__(
        self, max_workers: int | None = None, cancellation: Cancellation | None = None
    ) -> None:
        super().__init__(max_workers=max_workers)
        self._cancellation = cancellation

    def duplicate(self) -> _AbandoningTaskRunner:
        # The flow engine runs a duplicate: it must share the cancellation.
        return type(self)(max_workers=self._max_workers, cancellation=self._cancellation)

    def cancel_all(self) -> None:
        if self._cancellation is None or not self._cancellation.is_cancelled():
            super().cancel_all()
            return
        for event in self._cancel_events.values():
            event.set()  # a task not yet past Prefect's own check does not start
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def run_on_prefect(
    flow: FlowGraph,
    parameters: dict[str, Any],
    *,
    listener: TaskListener | None,
    max_workers: int | None,
    cancellation: Cancellation | None = None,
    heartbeats: bool = True,
    store: OutputStore | None = None,
) -> FlowRunResult:
    outcomes = {node.name: TaskOutcome(name=node.name, task=node.task) for node in flow.tasks}
    notify = listener.task_changed if listener is not None else (lambda outcome: None)
    run_ = _Run(outcomes, notify, cancellation, store)
    flow_run_id: dict[str, str] = {}
    if run_.cancelled():
        # Cancelled before it started (a later sweep point): no flow run is created at all.
        _cancel_outcomes(run_, {})
        return FlowRunResult(flow.name, CANCELLED, outcomes, _cancel_message(run_))

    def entry_point(shown: dict[str, Any]) -> State[Any] | None:
        # Prefect records `shown`; the tasks get the values themselves (see _shown_parameters).
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            flow_run_id["id"] = str(context.flow_run.id)
        futures, stopped = _schedule(flow, parameters, run_)
        if stopped:
            # Returning a Cancelled state is how a Prefect flow function ends its run Cancelled.
            return _cancel_run(run_, futures)
        for node in flow.tasks:
            future = futures.get(node.name)
            if future is not None:
                _settle(outcomes[node.name], future, notify)
        failed = [o.name for o in outcomes.values() if o.state == FAILED]
        if failed:
            raise _TaskFailures(f"{len(failed)} task(s) failed: {', '.join(failed)}")
        return None

    runner = _AbandoningTaskRunner(max_workers=max_workers or None, cancellation=cancellation)
    run: PrefectFlow[[dict[str, Any]], State[Any] | None] = PrefectFlow(
        entry_point,
        name=flow.name,
        task_runner=runner,  # type: ignore[arg-type]  # Prefect's own annotation is narrower
        validate_parameters=False,
        persist_result=False,
    )
    with _heartbeat_setting(heartbeats):
        state = run(_shown_parameters(parameters), return_state=True)
    if state.is_cancelled():
        return FlowRunResult(
            flow.name, CANCELLED, outcomes, _cancel_message(run_), flow_run_id.get("id")
        )
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


def _shown_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters as Prefect records them: JSON values as they are, others by type."""
    import json

    shown: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            size = len(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            size = -1
        if 0 <= size <= _SHOWN_PARAMETER_LIMIT:
            shown[name] = value
        else:
            shown[name] = f"<{type(value).__name__}>"
    return shown


@contextlib.contextmanager
def _heartbeat_setting(heartbeats: bool) -> Iterator[None]:
    """Prefect's flow-run heartbeats as asked, for this thread's flow runs only.

    The setting cannot be turned off through the environment (it must be >= 30 s there);
    a settings context (a contextvar) scopes it to the calling thread.
    """
    if heartbeats:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _schedule(
    flow: FlowGraph, parameters: dict[str, Any], run_: _Run
) -> tuple[dict[str, PrefectFuture[Any]], bool]:
    """Submit each node once everything it depends on has finished; return all futures.

    Submitting a node only when it is ready (rather than all at once with ``wait_for``)
    matters: Prefect's thread pool gives a submitted task a worker thread while it
    waits for its inputs, so with a bounded pool, waiting tasks could starve ready ones.
    A node whose upstream failed is never submitted: it is marked NotRun here.
    The second value is True when the run was cancelled: nothing is submitted after the
    cancellation, and this returns at once, without waiting for the tasks in flight.
    """
    nodes = {node.name: node for node in flow.tasks}
    waiting = {node.name: {dep.name for dep in node.dependencies} for node in flow.tasks}
    dependents: dict[str, list[str]] = {name: [] for name in nodes}
    for node in flow.tasks:
        for dep in node.dependencies:
            dependents[dep.name].append(node.name)
    futures: dict[str, PrefectFuture[Any]] = {}
    # Names of finished nodes; None when the run is cancelled (it wakes the loop below).
    finished: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def submit(name: str) -> None:
        future = _submit(nodes[name], parameters, futures, run_)
        futures[name] = future
        future.add_done_callback(lambda _, name=name: finished.put(name))  # type: ignore[misc]

    def skip(name: str) -> None:
        outcome = run_.outcomes[name]
        if outcome.state == NOT_RUN:
            return
        outcome.state, outcome.message = NOT_RUN, "not run: an upstream task failed"
        run_.notify(outcome)
        for child in dependents[name]:
            skip(child)

    forget = (
        run_.cancellation.add_callback(lambda: finished.put(None))
        if run_.cancellation is not None
        else (lambda: None)
    )
    try:
        for name, deps in waiting.items():
            if not deps:
                if run_.cancelled():
                    return futures, True
                submit(name)
        in_flight = len(futures)
        while in_flight:
            done = finished.get()
            if done is None or run_.cancelled():
                return futures, True  # a task that saw the cancellation first ends Cancelled
            in_flight -= 1
            future = futures[done]
            future.wait()
            succeeded = future.state.is_completed()
            for child in dependents[done]:
                if not succeeded:
                    skip(child)
                    continue
                waiting[child].discard(done)
                if not waiting[child] and run_.outcomes[child].state != NOT_RUN:
                    if run_.cancelled():
                        return futures, True
                    submit(child)
                    in_flight += 1
    finally:
        forget()
    return futures, False


def _submit(
    node: TaskNode,
    parameters: dict[str, Any],
    futures: dict[str, PrefectFuture[Any]],
    run_: _Run,
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
        _invoker(node, run_.outcomes[node.name], run_),
        name=node.name,
        retries=options.retries,
        retry_delay_seconds=options.retry_delay_seconds,
        timeout_seconds=options.timeout_seconds,
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    wait_for = [futures[upstream.name] for upstream in node.upstream]
    return task.submit(*args, wait_for=wait_for, **kwargs)


def _invoker(node: TaskNode, outcome: TaskOutcome, run_: _Run) -> Callable[..., Any]:
    assert node.func is not None
    func = node.func
    notify = run_.notify

    @functools.wraps(func)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_unpick(a) for a in args)
        kwargs = {k: _unpick(v) for k, v in kwargs.items()}
        # Returning a Cancelled state is how a Prefect task ends its task run Cancelled.
        with run_.lock:
            if run_.cancelled():
                # Got a worker thread after the cancellation: the plugin is not called.
                if outcome.state == CANCELLED:
                    return Cancelled(message=outcome.message)
                outcome.state, outcome.message = CANCELLED, _NOT_STARTED
            else:
                outcome.state, outcome.start_time, outcome.end_time = RUNNING, _now(), None
            started = outcome.state == RUNNING
        notify(outcome)
        if not started:
            return Cancelled(message=_NOT_STARTED)
        try:
            lookup = run_.store.lookup(node, args, kwargs) if run_.store is not None else None
            if lookup is not None and lookup.hit:
                return _reuse(outcome, lookup, run_)
            result = func(*args, **kwargs)
            if run_.store is not None and lookup is not None:
                run_.store.keep(node, lookup, result)
        except BaseException as error:
            with run_.lock:
                if outcome.state == CANCELLED:
                    # Ended after its run was cancelled and abandoned it: the task run keeps
                    # the Cancelled state the run reported (Prefect would record Failed).
                    return Cancelled(message=outcome.message)
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
        with run_.lock:
            if outcome.state == CANCELLED:
                return Cancelled(message=outcome.message)  # as above, for a late success
            outcome.state, outcome.result, outcome.end_time = COMPLETED, result, _now()
            outcome.error, outcome.message = None, ""
        notify(outcome)
        return result

    return invoke


def _reuse(outcome: TaskOutcome, lookup: Any, run_: _Run) -> Any:
    """End a task with the stored output a cache hit found: Completed, shown as Cached."""
    with run_.lock:
        if outcome.state == CANCELLED:
            return Cancelled(message=outcome.message)
        outcome.state, outcome.result, outcome.end_time = COMPLETED, lookup.value, _now()
        outcome.cached, outcome.error, outcome.message = True, None, ""
    run_.notify(outcome)
    # Prefect's own Cached state (a Completed type): the UI shows the task as Cached.
    return Completed(name=CACHED, data=lookup.value, message="reused a stored output")


def _settle(
    outcome: TaskOutcome, future: PrefectFuture[Any], notify: Callable[[TaskOutcome], None]
) -> None:
    """Record nodes the invoker never saw finish: not run (upstream failed), crashed, timed out."""
    state = future.state
    if outcome.state == COMPLETED and state.is_completed():
        return
    if state.is_cancelled():
        if outcome.state != CANCELLED:
            outcome.state, outcome.message = CANCELLED, state.message or _NOT_STARTED
            notify(outcome)
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


# -- cancellation -----------------------------------------------------------------------------


def _cancel_message(run_: _Run) -> str:
    return cancelled_run_message(run_.reason)


def _cancel_run(run_: _Run, futures: dict[str, PrefectFuture[Any]]) -> State[Any]:
    """Account for every node of a cancelled run, cancel its task runs; the flow's end state.

    Called in the flow function, so the flow run is still Running in the API: finished
    nodes are settled as usual, the others end Cancelled, both here and (for the task runs
    that started) in Prefect's API. Nothing here waits for a running task.
    """
    for name, future in futures.items():
        wrapped = future.wrapped_future if isinstance(future, PrefectWrappedFuture) else None
        if wrapped is not None and wrapped.done() and not wrapped.cancelled():
            future.wait()  # done: keeps its final state, so _settle does not ask the API
            _settle(run_.outcomes[name], future, run_.notify)
    abandoned = _cancel_outcomes(run_, futures)
    if abandoned:
        _cancel_task_runs(abandoned, _cancel_message(run_))
    return Cancelled(message=_cancel_message(run_))


def _cancel_outcomes(run_: _Run, futures: dict[str, PrefectFuture[Any]]) -> list[uuid.UUID]:
    """Mark every node not finished Cancelled; the task run ids of those that were running."""
    abandoned: list[uuid.UUID] = []
    changed: list[TaskOutcome] = []
    with run_.lock:
        for name, outcome in run_.outcomes.items():
            if outcome.state in FINAL_STATES:
                continue
            if cancel_outcome(outcome, run_.reason):
                # Running, or waiting to retry: its thread is left to itself.
                outcome.end_time = _now()
                if name in futures:
                    abandoned.append(futures[name].task_run_id)
            changed.append(outcome)
    for outcome in changed:
        run_.notify(outcome)
    return abandoned


def _cancel_task_runs(task_run_ids: list[uuid.UUID], message: str) -> None:
    """End the given task runs Cancelled in Prefect's API (they would stay Running forever).

    A task run reaches the API through Prefect's events a moment after it started; one the
    API does not know yet is retried for a few seconds. Failing to reach the API is logged:
    the run must still end.
    """
    deadline = time.monotonic() + _TASK_RUN_RECORD_WAIT
    try:
        with get_client(sync_client=True) as client:
            for task_run_id in task_run_ids:
                while True:
                    try:
                        client.set_task_run_state(
                            task_run_id, Cancelled(message=message), force=True
                        )
                        break
                    except httpx.HTTPStatusError as error:
                        if error.response.status_code != 404 or time.monotonic() >= deadline:
                            _LOG.warning("could not cancel task run %s: %s", task_run_id, error)
                            break
                        time.sleep(0.1)
    except Exception as error:  # the API is gone: the flow run's state says what happened
        _LOG.warning("could not cancel the task runs in Prefect: %s", error)


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
