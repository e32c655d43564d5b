"""The flow graph: parameters, task nodes, their outcomes, and the flow being defined.

The bottom of the SDK: it imports nothing of ours. `dioptra.pyplugs` records nodes into the
graph of the ``with Flow(...)`` block being run, `dioptra._prefect_engine` runs a graph, and
`dioptra.flow.Flow` puts the two together.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import inspect
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "CACHED",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINAL_STATES",
    "NOT_RUN",
    "PENDING",
    "RUNNING",
    "CacheLookup",
    "Cancellation",
    "FlowDefinitionError",
    "FlowGraph",
    "FlowRunResult",
    "FlowValidationError",
    "ItemRef",
    "OutputStore",
    "Parameter",
    "TaskListener",
    "TaskNode",
    "TaskOptions",
    "TaskOutcome",
    "cancel_outcome",
    "cancelled_run_message",
    "current_flow",
    "describe_error",
    "pick",
    "substitute",
]

_ACTIVE_FLOW: contextvars.ContextVar[FlowGraph | None] = contextvars.ContextVar(
    "dioptra_active_flow", default=None
)
_NO_DEFAULT: Any = object()

# Task states as users see them in progress views and in the Experiment status.
PENDING, RUNNING, COMPLETED, FAILED, NOT_RUN = "Pending", "Running", "Completed", "Failed", "NotRun"
# A task the run stopped waiting for (the run was cancelled): never started, or abandoned
# while running. A flow run's state is Cancelled too when it was stopped.
CANCELLED = "Cancelled"
# The states a task does not leave any more within its run.
FINAL_STATES = frozenset({COMPLETED, FAILED, NOT_RUN, CANCELLED})
# How a Completed task that reused a stored output (a cache hit) is shown: Prefect's own name
# for that state (``Completed(name="Cached")``). Its ``state`` stays Completed.
CACHED = "Cached"


class FlowDefinitionError(TypeError):
    """The flow is being defined in a way that cannot work (e.g. unpacking a single output)."""


class FlowValidationError(ValueError):
    """The flow cannot start: parameters or plugins are wrong. Lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def current_flow() -> FlowGraph | None:
    """The flow whose ``with`` block is being executed, if any."""
    return _ACTIVE_FLOW.get()


class Parameter:
    """A named flow input, filled from ``flow.run(parameters=...)``."""

    def __init__(self, name: str, default: Any = _NO_DEFAULT, required: bool | None = None) -> None:
        if not name or not isinstance(name, str):
            raise FlowDefinitionError(f"a Parameter needs a non-empty name, got {name!r}")
        self.name = name
        self.default = default
        self.required = (default is _NO_DEFAULT) if required is None else required
        flow = current_flow()
        if flow is not None:
            flow.add_parameter(self)

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def __getitem__(self, key: Any) -> ItemRef:
        return ItemRef(self, (key,))

    def __repr__(self) -> str:
        return f"<Parameter {self.name}>"


class TaskNode:
    """A recorded call of a task plugin: a placeholder for its future output."""

    def __init__(
        self,
        flow: FlowGraph,
        name: str,
        task: str,
        func: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: list[TaskNode],
        nout: int | None,
        problem: str | None,
        options: TaskOptions,
    ) -> None:
        self.flow = flow
        self.name = name
        self.task = task
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.upstream = upstream
        self.nout = nout
        self.problem = problem
        self.options = options

    @property
    def data_dependencies(self) -> list[TaskNode]:
        """Nodes whose output this node reads, in first-use order."""
        found: dict[int, TaskNode] = {}
        for value in (*self.args, *self.kwargs.values()):
            for node in _referenced_nodes(value):
                found.setdefault(id(node), node)
        return list(found.values())

    @property
    def dependencies(self) -> list[TaskNode]:
        """All nodes that must finish first: data edges then ordering edges."""
        found = {id(n): n for n in self.data_dependencies}
        for node in self.upstream:
            found.setdefault(id(node), node)
        return list(found.values())

    def __iter__(self) -> Iterator[ItemRef]:
        if self.problem:
            raise FlowDefinitionError(
                f"cannot unpack the output of task {self.name!r}: {self.problem}"
            )
        if self.nout is None:
            raise FlowDefinitionError(
                f"cannot unpack the output of task {self.name!r}: its plugin does not declare "
                "how many values it returns; decorate it with @pyplugs.task_nout(n)"
            )
        return iter([ItemRef(self, (i,)) for i in range(self.nout)])

    def __getitem__(self, key: Any) -> ItemRef:
        return ItemRef(self, (key,))

    def __repr__(self) -> str:
        return f"<TaskNode {self.name}>"


@dataclass(frozen=True)
class ItemRef:
    """An element or key of another node's output (``node[0]``, ``node["meta"]``)."""

    source: TaskNode | Parameter
    path: tuple[Any, ...]

    def __getitem__(self, key: Any) -> ItemRef:
        return ItemRef(self.source, (*self.path, key))


@dataclass(frozen=True)
class TaskOptions:
    """Per-node execution options (the declarative task graph sets them per step)."""

    retries: int = 0
    retry_delay_seconds: float = 0
    timeout_seconds: float | None = None
    # Reuse a stored output when the function's source and every input are the same.
    cache: bool = False


@dataclass
class CacheLookup:
    """What an :class:`OutputStore` found for one call: a stored output (``hit``) or not.

    ``key`` is None when the call has no cache key (caching is off for it, or an input could
    not be digested); ``value`` is the stored output on a hit. ``state`` is the store's own.
    """

    key: str | None = None
    hit: bool = False
    value: Any = None
    state: Any = None


class OutputStore(Protocol):
    """Keeps task outputs and reuses them for cached tasks (the runner's artifact store).

    Injected into a run (``Flow.run(store=...)``) so that the SDK needs no storage client.
    Both methods are called in the task's thread; an exception fails the task.
    """

    def lookup(self, node: TaskNode, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CacheLookup:
        """Whether a stored output can stand in for calling ``node`` with these inputs."""
        ...

    def keep(self, node: TaskNode, lookup: CacheLookup, result: Any) -> None:
        """Store ``result``, the output of a call that ran (and record it under its key)."""
        ...


class TaskListener(Protocol):
    """Receives task state changes as they happen (the runner's progress view and status)."""

    def task_changed(self, outcome: TaskOutcome) -> None: ...


@dataclass
class TaskOutcome:
    """What happened to one node in a run."""

    name: str
    task: str
    state: str = PENDING
    result: Any = None
    error: BaseException | None = None
    message: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    traceback: str = ""
    # Completed by reusing a stored output instead of calling the plugin.
    cached: bool = False

    @property
    def shown_state(self) -> str:
        """The state as users see it: Cached for a Completed task that reused its output."""
        return CACHED if self.cached and self.state == COMPLETED else self.state

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    def is_successful(self) -> bool:
        return self.state == COMPLETED

    def is_failed(self) -> bool:
        return self.state == FAILED


@dataclass
class FlowRunResult:
    """The outcome of :meth:`Flow.run`: the flow's state and each node's state and value."""

    flow_name: str
    state: str
    tasks: dict[str, TaskOutcome] = field(default_factory=dict)
    message: str = ""
    flow_run_id: str | None = None

    def is_successful(self) -> bool:
        return self.state == COMPLETED

    def is_failed(self) -> bool:
        return self.state == FAILED

    def is_cancelled(self) -> bool:
        return self.state == CANCELLED

    def __getitem__(self, node: TaskNode | str) -> TaskOutcome:
        return self.tasks[node.name if isinstance(node, TaskNode) else node]

    @property
    def result(self) -> Mapping[TaskNode | str, TaskOutcome]:
        """Prefect 1 style access: ``state.result[node].result``."""
        return _OutcomeView(self.tasks)

    @property
    def failed_tasks(self) -> list[TaskOutcome]:
        return [t for t in self.tasks.values() if t.state == FAILED]


# The message of a node that a cancellation stopped before it started.
CANCELLED_BEFORE_START = "not run: the run was cancelled"


def cancel_outcome(outcome: TaskOutcome, reason: str) -> bool:
    """Mark a node that has not finished Cancelled, in place; True when it had started.

    One wording for a cancelled node, whether the engine cancels its run or the runner has to
    account for a run that did not come back from its cancelling.
    """
    started = outcome.state != PENDING
    outcome.state = CANCELLED
    if started:
        outcome.message = f"cancelled while running ({reason or 'cancelled'})"
    else:
        outcome.message = CANCELLED_BEFORE_START
    return started


def cancelled_run_message(reason: str) -> str:
    """The message of a flow run ended by a cancellation."""
    return f"the run was cancelled ({reason})" if reason else "the run was cancelled"


class Cancellation:
    """A request to stop running flows: made once, from any thread, seen by every run sharing it.

    The runner makes one per ``dioptra run`` and cancels it on SIGINT or SIGTERM; the engine
    checks it before it starts each task, and is woken by it while it waits for running
    tasks (a flag alone would only be seen once a running task ends, which may be never).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask every run to stop; the first call's ``reason`` is kept, later calls do nothing."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled, self.reason = True, reason
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_cancelled(self) -> bool:
        return self._cancelled

    def add_callback(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once on cancellation (at once if already cancelled).

        Returns a function that removes it again, for a run that ended first.
        """
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


class _OutcomeView(Mapping[Any, TaskOutcome]):
    def __init__(self, tasks: dict[str, TaskOutcome]) -> None:
        self._tasks = tasks

    def __getitem__(self, key: Any) -> TaskOutcome:
        return self._tasks[key.name if isinstance(key, TaskNode) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


class FlowGraph:
    """A graph of task nodes recorded in a ``with`` block, and its checks (nothing runs)."""

    def __init__(self, name: str, *, max_parallel_tasks: int | None = None) -> None:
        self.name = name
        self.max_parallel_tasks = max_parallel_tasks
        self.parameters: dict[str, Parameter] = {}
        self.tasks: list[TaskNode] = []
        self._token: contextvars.Token[FlowGraph | None] | None = None

    # -- definition ---------------------------------------------------------------------------

    def __enter__(self) -> FlowGraph:
        self._token = _ACTIVE_FLOW.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _ACTIVE_FLOW.reset(self._token)
            self._token = None

    def add_parameter(self, parameter: Parameter) -> None:
        known = self.parameters.get(parameter.name)
        if known is not None and known is not parameter:
            raise FlowDefinitionError(
                f"flow {self.name!r} declares parameter {parameter.name!r} twice"
            )
        self.parameters[parameter.name] = parameter

    def add_task(
        self,
        func: Callable[..., Any] | None,
        task: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        problem: str | None = None,
        options: TaskOptions | None = None,
    ) -> TaskNode:
        """Record a call of ``func``; ``upstream_tasks`` in kwargs becomes ordering edges."""
        kwargs = dict(kwargs or {})
        upstream = list(kwargs.pop("upstream_tasks", None) or [])
        for item in upstream:
            if not isinstance(item, TaskNode):
                raise FlowDefinitionError(
                    f"upstream_tasks of {task!r} must be task nodes, got {item!r}"
                )
        for value in (*args, *kwargs.values()):
            self._adopt_parameters(value)
        node = TaskNode(
            flow=self,
            name=self._unique_name(name or task),
            task=task,
            func=func,
            args=tuple(args),
            kwargs=kwargs,
            upstream=upstream,
            nout=getattr(func, "_task_nout", None),
            problem=problem,
            options=options or TaskOptions(),
        )
        self.tasks.append(node)
        return node

    def _adopt_parameters(self, value: Any) -> None:
        """A Parameter made outside the ``with`` block joins the flow when a node uses it."""
        for item in _walk(value):
            if isinstance(item, Parameter) and item.name not in self.parameters:
                self.add_parameter(item)
            elif isinstance(item, ItemRef) and isinstance(item.source, Parameter):
                self._adopt_parameters(item.source)

    def _unique_name(self, base: str) -> str:
        taken = {node.name for node in self.tasks}
        if base not in taken:
            return base
        suffix = 2
        while f"{base}-{suffix}" in taken:
            suffix += 1
        return f"{base}-{suffix}"

    # -- validation ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything that stops the flow from running, independent of parameter values."""
        found = [f"task {node.name}: {node.problem}" for node in self.tasks if node.problem]
        for node in self.tasks:
            if node.func is None or node.problem:
                continue
            issue = _signature_problem(node)
            if issue:
                found.append(f"task {node.name}: {issue}")
        return found

    def resolve_parameters(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Parameter values for a run, or FlowValidationError naming each missing/unknown one."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.parameters))
        missing = sorted(
            name for name, p in self.parameters.items() if name not in given and not p.has_default
        )
        problems = []
        if missing:
            problems.append(f"missing parameter(s): {', '.join(missing)}")
        if unknown:
            declared = ", ".join(sorted(self.parameters)) or "none"
            problems.append(
                f"unknown parameter(s): {', '.join(unknown)} "
                f"(flow {self.name!r} declares: {declared})"
            )
        if problems:
            raise FlowValidationError(problems)
        return {name: given.get(name, p.default) for name, p in self.parameters.items()}

    def check(self, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Validate plugins and parameters together; list every problem found."""
        problems = self.problems()
        try:
            values = self.resolve_parameters(parameters)
        except FlowValidationError as error:
            problems = error.problems + problems
            values = {}
        if problems:
            raise FlowValidationError(problems)
        return values

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {len(self.tasks)} tasks>"


# -- helpers shared with the Prefect engine and the runner ----------------------------------------


def _walk(value: Any) -> Iterator[Any]:
    """Every value nested in lists, tuples, sets and dict values (placeholders included)."""
    yield value
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def _referenced_nodes(value: Any) -> Iterator[TaskNode]:
    for item in _walk(value):
        if isinstance(item, TaskNode):
            yield item
        elif isinstance(item, ItemRef) and isinstance(item.source, TaskNode):
            yield item.source


def _signature_problem(node: TaskNode) -> str | None:
    """Whether the recorded arguments can bind to the plugin's signature."""
    assert node.func is not None
    try:
        signature = inspect.signature(node.func)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*node.args, **node.kwargs)
    except TypeError as error:
        return f"arguments do not match {node.task}{signature}: {error}"
    return None


def substitute(value: Any, replace: Callable[[Any], Any]) -> Any:
    """Rebuild ``value`` with every placeholder passed through ``replace``."""
    if isinstance(value, TaskNode | Parameter | ItemRef):
        return replace(value)
    if isinstance(value, list):
        return [substitute(v, replace) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, replace) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, replace) for k, v in value.items()}
    return value


def pick(value: Any, path: tuple[Any, ...]) -> Any:
    """Follow an ItemRef's path into a value."""
    for key in path:
        value = value[key]
    return value


def describe_error(error: BaseException) -> tuple[str, str]:
    """A one-line summary of an error and its full traceback (for logs, not summaries)."""
    summary = f"{type(error).__name__}: {error}".strip().splitlines()
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (summary[0] if summary else type(error).__name__), text
