"""Read a ``spec.entryPoint.taskGraph`` into steps and order them, without the plugin registry.

Everything here is pure so that the shape of a graph (fields, names, references, cycles) can
be checked and tested on its own; :mod:`dioptra_runner.taskgraph` adds what needs the
registry (plugins and their signatures) and builds the Flow. Every problem is a string that
starts with the path of the offending field, so a user can find it in the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dioptra_runner.taskgraph_refs import Reference, ReferenceSyntaxError, parse_string

__all__ = ["BASE", "Step", "order_steps", "parse_task_graph"]

BASE = "spec.entryPoint.taskGraph"
_STEP_FIELDS = (
    "name",
    "task",
    "args",
    "dependsOn",
    "retries",
    "retryDelaySeconds",
    "timeoutSeconds",
    "cache",
)
_STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TASK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){2,}")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# add_task() reads this keyword as ordering edges; a task graph spells that dependsOn.
_RESERVED_ARGS = {"upstream_tasks": "use dependsOn for ordering-only edges"}


@dataclass
class Step:
    """One step as written, with its string arguments parsed into literals and References."""

    index: int
    name: str
    task: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    references: list[tuple[str, Reference]] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    retries: int = 0
    retry_delay_seconds: float = 0
    timeout_seconds: float | None = None
    cache: bool = False

    @property
    def path(self) -> str:
        return f"{BASE}.steps[{self.index}]"

    @property
    def upstream(self) -> list[str]:
        """Names of the steps this one waits for: data references first, then dependsOn."""
        names = [ref.name for _, ref in self.references if ref.kind == "step"]
        return list(dict.fromkeys([*names, *self.depends_on]))


def parse_task_graph(task_graph: Any) -> tuple[list[Step], list[str]]:
    """The graph's steps (those with a usable name, first of each name) and every problem."""
    if not isinstance(task_graph, dict):
        return [], [f"{BASE}: must be a mapping with a 'steps' list, got {_kind(task_graph)}"]
    problems = [
        f"{BASE}.{key}: unknown field (a task graph has only 'steps')"
        for key in task_graph
        if key != "steps"
    ]
    raw_steps = task_graph.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(f"{BASE}.steps: must be a non-empty list of steps, got {_kind(raw_steps)}")
        return [], problems
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        step = _parse_step(index, raw, problems)
        if step is None:
            continue
        if step.name in seen:
            problems.append(
                f"{step.path}.name: duplicate step name {step.name!r} "
                f"(first used by steps[{seen[step.name]}])"
            )
            continue
        seen[step.name] = index
        steps.append(step)
    problems.extend(_unknown_step_problems(steps))
    return steps, problems


def order_steps(steps: list[Step]) -> tuple[list[Step], list[str]]:
    """Steps level by level (all steps that wait for nothing, then all that wait only for
    those, ...), or the cycles found; file order is kept within a level.

    A reference to a later step is fine; only cycles are errors. Level order matters for
    speed, not correctness: Prefect's thread pool gives a submitted task a worker thread
    even while the task still waits for its inputs, so submitting a chain's steps one after
    the other would fill ``maxParallelTasks`` threads with steps waiting on each other,
    while a level's steps are independent of each other and can all run.
    """
    by_name = {step.name: step for step in steps}
    waits_for = {s.name: [u for u in s.upstream if u in by_name] for s in steps}
    done: set[str] = set()
    ordered: list[Step] = []
    while True:
        level = [
            step
            for step in steps
            if step.name not in done and all(u in done for u in waits_for[step.name])
        ]
        if not level:
            break
        done.update(step.name for step in level)
        ordered.extend(level)
    if len(ordered) == len(steps):
        return ordered, []
    left = [s.name for s in steps if s.name not in done]
    problems = [
        f"{BASE}.steps: steps form a cycle: {' -> '.join(cycle)} (each feeds the next)"
        for cycle in _cycles(left, waits_for)
    ]
    return ordered, problems


def _parse_step(index: int, raw: Any, problems: list[str]) -> Step | None:
    path = f"{BASE}.steps[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping with 'name' and 'task', got {_kind(raw)}")
        return None
    for key in raw:
        if key not in _STEP_FIELDS:
            problems.append(f"{path}.{key}: unknown field (a step has: {', '.join(_STEP_FIELDS)})")
    name = raw.get("name")
    valid_name = isinstance(name, str) and _STEP_NAME.fullmatch(name) is not None
    if not valid_name:
        what = "is missing" if name is None else f"{name!r} is not a valid step name"
        problems.append(f"{path}.name: {what} (a letter or '_' then letters, digits, '_' or '-')")
    step = Step(index=index, name=name if isinstance(name, str) and valid_name else "")
    task = raw.get("task")
    if not isinstance(task, str) or _TASK.fullmatch(task) is None:
        what = "is missing" if task is None else f"{task!r} is malformed"
        problems.append(f"{path}.task: {what}; write 'package.module.function'")
    else:
        step.task = task
    args = raw.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        problems.append(f"{path}.args: must be a mapping of argument names, got {_kind(args)}")
        args = {}
    for key, value in args.items():
        arg_path = f"{path}.args{_key_path(key)}"
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(f"{arg_path}: argument name {key!r} is not a Python identifier")
            continue
        if key in _RESERVED_ARGS:
            problems.append(f"{arg_path}: {key!r} is reserved; {_RESERVED_ARGS[key]}")
            continue
        step.args[key] = _template(value, arg_path, step.references, problems)
    step.depends_on = _depends_on(raw.get("dependsOn"), path, problems)
    step.retries = int(_number(raw, "retries", path, problems, integer=True, minimum=0) or 0)
    step.retry_delay_seconds = _number(raw, "retryDelaySeconds", path, problems, minimum=0) or 0
    step.timeout_seconds = _number(raw, "timeoutSeconds", path, problems, minimum=0, strict=True)
    cache = raw.get("cache", False)
    if not isinstance(cache, bool):
        problems.append(f"{path}.cache: must be true or false, got {_kind(cache)}")
    step.cache = cache is True
    return step if valid_name else None


def _template(value: Any, path: str, refs: list[tuple[str, Reference]], problems: list[str]) -> Any:
    """``value`` with each string parsed; References are also collected with their paths."""
    if isinstance(value, str):
        try:
            parsed = parse_string(value)
        except ReferenceSyntaxError as error:
            problems.append(f"{path}: {error}")
            return value
        if isinstance(parsed, Reference):
            refs.append((path, parsed))
        return parsed
    if isinstance(value, list):
        return [_template(v, f"{path}[{i}]", refs, problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _template(v, f"{path}{_key_path(k)}", refs, problems) for k, v in value.items()}
    return value


def _depends_on(raw: Any, path: str, problems: list[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        problems.append(f"{path}.dependsOn: must be a list of step names, got {_kind(raw)}")
        return []
    return list(dict.fromkeys(raw))


def _number(
    raw: dict[str, Any],
    key: str,
    path: str,
    problems: list[str],
    *,
    minimum: float,
    integer: bool = False,
    strict: bool = False,
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        whole = isinstance(value, int)
        if (whole or not integer) and (number > minimum if strict else number >= minimum):
            return value if integer else number
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    noun = "an integer" if integer else "a number"
    problems.append(f"{path}.{key}: must be {noun} {bound}, got {value!r}")
    return None


def _unknown_step_problems(steps: list[Step]) -> Iterator[str]:
    known = [s.name for s in steps]
    listing = ", ".join(known)
    for step in steps:
        for path, ref in step.references:
            if ref.kind == "step" and ref.name not in known:
                yield f"{path}: unknown step {ref.name!r} (steps: {listing})"
        for position, name in enumerate(step.depends_on):
            if name not in known:
                yield f"{step.path}.dependsOn[{position}]: unknown step {name!r} (steps: {listing})"


def _cycles(left: list[str], waits_for: dict[str, list[str]]) -> list[list[str]]:
    """One named cycle per strongly connected group of the steps that could not be ordered.

    Each cycle is written in data-flow order (a step, then a step that waits for it, ...) and
    starts from the group's earliest step in the file.
    """
    feeds: dict[str, list[str]] = {name: [] for name in left}
    for name in left:
        for upstream in waits_for[name]:
            if upstream in feeds:
                feeds[upstream].append(name)
    cycles = []
    for group in _strongly_connected(left, feeds):
        start = min(group, key=left.index)
        if len(group) == 1 and start not in feeds[start]:
            continue
        cycles.append(_walk_cycle(start, feeds, set(group)))
    return sorted(cycles, key=lambda cycle: left.index(cycle[0]))


def _walk_cycle(start: str, feeds: dict[str, list[str]], group: set[str]) -> list[str]:
    """A shortest path from ``start`` back to itself inside its group (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for successor in feeds[name]:
                if successor not in group:
                    continue
                if successor == start:
                    path = [name]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if successor not in previous:
                    previous[successor] = name
                    following.append(successor)
        frontier = following
    return [start, start]


def _strongly_connected(names: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm; graphs have at most a few hundred steps, so recursion is fine."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for successor in edges[name]:
            if successor not in index:
                visit(successor)
                low[name] = min(low[name], low[successor])
            elif successor in on_stack:
                low[name] = min(low[name], index[successor])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == name:
                    break
            groups.append(group)

    for name in names:
        if name not in index:
            visit(name)
    return groups


def _key_path(key: Any) -> str:
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f".{key}"
    return f"[{key!r}]"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
