"""Build a :class:`dioptra.flow.Flow` from a declarative ``spec.entryPoint.taskGraph``.

The task graph is the no-Python entry point (DESIGN.md section 4)::

    steps:
      - name: items
        task: acme.ops.steps.make_items        # package.module.function, a registered plugin
        args: {n: $n}                          # "$n": the flow parameter n
      - name: report
        task: acme.ops.steps.report
        args: {first: "$steps.items[0]", meta: $steps.items.meta}
        dependsOn: [items]                     # ordering only, like upstream_tasks
        retries: 2
        retryDelaySeconds: 1
        timeoutSeconds: 600
        cache: true                            # reuse a stored output (README, "Cached tasks")

Each step becomes one node of the same Flow a Python entry point records, so the runner,
the progress view, retries, timeouts and ``maxParallelTasks`` work the same way. A
parameter is declared by its first reference (``$name``); a value given for a parameter no
step references is rejected later by ``Flow.check``. The reference syntax, including why
``"prefix-$n"`` is rejected, is in :mod:`dioptra_runner.taskgraph_refs`.

All problems are found before anything runs and reported together in one
:class:`TaskGraphError`, one line each, starting with the path of the field at fault:
malformed fields and references, duplicate or unknown step names, cycles, unknown plugins or
functions, and arguments the plugin's signature does not accept or requires.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from dioptra import pyplugs
from dioptra.flow import Flow, ItemRef, Parameter, TaskNode, TaskOptions

from dioptra_runner.errors import EntryPointError
from dioptra_runner.taskgraph_refs import Reference
from dioptra_runner.taskgraph_spec import BASE, Step, order_steps, parse_task_graph

__all__ = ["TaskGraphError", "flow_from_task_graph"]

_STEP_PATH = re.compile(re.escape(BASE) + r"\.steps\[(\d+)\]")


class TaskGraphError(EntryPointError):
    """The task graph cannot run; ``problems`` holds one line per problem, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def flow_from_task_graph(
    task_graph: dict[str, Any], *, name: str = "task-graph", max_parallel_tasks: int | None = None
) -> Flow:
    """The Flow that runs ``task_graph``, or TaskGraphError listing everything that is wrong."""
    steps, problems = parse_task_graph(task_graph)
    functions: dict[str, Callable[..., Any]] = {}
    for step in steps:
        func = _plugin_function(step, problems)
        if func is not None:
            functions[step.name] = func
            problems.extend(_signature_problems(step, func))
    ordered, cycle_problems = order_steps(steps)
    problems.extend(cycle_problems)
    if problems:
        raise TaskGraphError(sorted(problems, key=_position))
    return _build(ordered, name, max_parallel_tasks)


def _position(problem: str) -> tuple[int, int]:
    """Sort key: graph-level problems, then each step's in file order, then cycles."""
    step = _STEP_PATH.match(problem)
    if step is not None:
        return 1, int(step.group(1))
    return (2, 0) if problem.startswith(f"{BASE}.steps:") else (0, 0)


def _plugin_function(step: Step, problems: list[str]) -> Callable[..., Any] | None:
    if not step.task:
        return None
    package, plugin, func = step.task.rsplit(".", 2)
    try:
        return pyplugs.info(package, plugin, func).func
    except pyplugs.PyplugsError as error:
        problems.append(f"{step.path}.task: {error}")
    except Exception as error:  # a plugin module that fails to import: name its error
        summary = (str(error).strip().splitlines() or [""])[0]
        problems.append(
            f"{step.path}.task: plugin module '{package}.{plugin}' failed to import: "
            f"{type(error).__name__}: {summary}".rstrip(": ")
        )
    return None


def _signature_problems(step: Step, func: Callable[..., Any]) -> list[str]:
    """Arguments the plugin does not accept, and required ones the step does not give."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    params = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    by_name = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    shown = f"{step.task}{signature}"
    problems = []
    for arg in step.args:
        param = by_name.get(arg)
        if param is not None and param.kind is param.POSITIONAL_ONLY:
            problems.append(f"{step.path}.args.{arg}: {shown} takes {arg!r} only by position")
        elif param is None and not accepts_any:
            problems.append(
                f"{step.path}.args.{arg}: {step.task} has no argument {arg!r} "
                f"(it accepts: {', '.join(by_name) or 'none'})"
            )
    missing = [n for n, p in by_name.items() if p.default is p.empty and n not in step.args]
    if missing:
        problems.append(
            f"{step.path}.args: missing required argument(s) {', '.join(missing)} of {shown}"
        )
    return problems


def _build(steps: list[Step], name: str, max_parallel_tasks: int | None) -> Flow:
    """Record the nodes in dependency order, so each node's inputs exist before it does."""
    flow = Flow(name, max_parallel_tasks=max_parallel_tasks)
    nodes: dict[str, TaskNode] = {}
    parameters: dict[str, Parameter] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, Reference):
            source: TaskNode | Parameter
            if value.kind == "step":
                source = nodes[value.name]
            else:
                source = parameters.setdefault(value.name, Parameter(value.name))
            return ItemRef(source, value.path) if value.path else source
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    for step in steps:
        package, plugin, func = step.task.rsplit(".", 2)
        kwargs = {arg: resolve(value) for arg, value in step.args.items()}
        if step.depends_on:
            kwargs["upstream_tasks"] = [nodes[upstream] for upstream in step.depends_on]
        nodes[step.name] = pyplugs.add_plugin_task(
            flow,
            package,
            plugin,
            func,
            args=(),
            kwargs=kwargs,
            options=TaskOptions(
                retries=step.retries,
                retry_delay_seconds=step.retry_delay_seconds,
                timeout_seconds=step.timeout_seconds,
                cache=step.cache,
            ),
            name=step.name,
        )
    return flow
