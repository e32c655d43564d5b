"""Declarative task graphs (``spec.entryPoint.taskGraph``) built into Flows and run on Prefect 3."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from dioptra.flow import FlowValidationError
from dioptra_runner.entrypoint import EntryPointError, load_flow
from dioptra_runner.taskgraph import TaskGraphError, flow_from_task_graph
from dioptra_runner.taskgraph_refs import Reference, ReferenceSyntaxError, parse_string
from support.plugin_tree import PluginTree

STEPS = """
import threading
import time
from dioptra import pyplugs

EVENTS: list[str] = []
ATTEMPTS: dict[str, int] = {}
LOCK = threading.Lock()
ACTIVE = [0]
PEAK = [0]
BARRIER = threading.Barrier(2, timeout=5)
PAIR = threading.Barrier(2, timeout=10)
STARTED = threading.Event()

@pyplugs.register
def make_items(n: int) -> dict:
    return {"values": list(range(n)), "meta": {"n": n, "tags": ["small", "even"]}}

@pyplugs.register
def split(data: dict) -> list:
    values = data["values"]
    return [values[: len(values) // 2], values[len(values) // 2 :]]

@pyplugs.register
def report(first: list, meta: dict, label: str = "report") -> dict:
    return {"first": first, "n": meta["n"], "label": label}

@pyplugs.register
def echo(value: object = None, **extra: object) -> object:
    return value if not extra else {"value": value, **extra}

@pyplugs.register
def mark(label: str) -> str:
    STARTED.set()
    EVENTS.append(label)
    return label

@pyplugs.register
def hold(label: str) -> str:
    # Gives a step wrongly running alongside this one half a second to show itself.
    alongside = STARTED.wait(0.5)
    EVENTS.append(f"{label} (another step started meanwhile)" if alongside else label)
    return label

@pyplugs.register
def flaky(key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        raise RuntimeError("first attempt fails on purpose")
    return f"ok after {ATTEMPTS[key]} attempts"

@pyplugs.register
def slow(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "finished"

@pyplugs.register
def busy(label: str) -> str:
    with LOCK:
        ACTIVE[0] += 1
        PEAK[0] = max(PEAK[0], ACTIVE[0])
    PAIR.wait()  # returns only once another busy step runs at the same time
    with LOCK:
        ACTIVE[0] -= 1
    return label

@pyplugs.register
def rendezvous(label: str) -> str:
    BARRIER.wait()
    return label

@pyplugs.register
def only_positional(x: int, /) -> int:
    return x
"""


@pytest.fixture
def steps(plugin_tree: PluginTree) -> tuple[str, Any]:
    """A plugin ``<pkg>.steps``; returns the dotted prefix for ``task:`` and the module."""
    pkg = plugin_tree.package("graphpkg")
    plugin_tree.module(f"{pkg}.steps", STEPS)
    module = __import__(f"{pkg}.steps", fromlist=["EVENTS"])
    return f"{pkg}.steps", module


def graph(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(steps)}


def three_steps(prefix: str) -> dict[str, Any]:
    """The DESIGN.md example graph, with the report step written first (YAML order is free)."""
    return graph(
        {
            "name": "report",
            "task": f"{prefix}.report",
            "args": {"first": "$steps.halves[0]", "meta": "$steps.items.meta"},
            "dependsOn": ["items"],
        },
        {"name": "items", "task": f"{prefix}.make_items", "args": {"n": "$n"}},
        {"name": "halves", "task": f"{prefix}.split", "args": {"data": "$steps.items"}},
    )


def problems_of(task_graph: dict[str, Any]) -> list[str]:
    with pytest.raises(TaskGraphError) as caught:
        flow_from_task_graph(task_graph)
    return caught.value.problems


# -- running on Prefect --------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_server_env")
def test_a_three_step_graph_passes_outputs_elements_and_keys_between_steps(
    steps: tuple[str, Any],
) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(three_steps(prefix))

    result = flow.run({"n": 6})

    assert result.is_successful(), result.message
    assert result["items"].result["values"] == [0, 1, 2, 3, 4, 5]
    assert result["halves"].result == [[0, 1, 2], [3, 4, 5]]
    assert result["report"].result == {"first": [0, 1, 2], "n": 6, "label": "report"}


@pytest.mark.usefixtures("prefect_server_env")
def test_depends_on_makes_a_step_wait_without_passing_data(steps: tuple[str, Any]) -> None:
    prefix, module = steps
    # `second` is written first and two workers are free: only dependsOn can hold it back.
    ordered = flow_from_task_graph(
        graph(
            {
                "name": "second",
                "task": f"{prefix}.mark",
                "args": {"label": "second"},
                "dependsOn": ["first"],
            },
            {"name": "first", "task": f"{prefix}.hold", "args": {"label": "first"}},
        ),
        max_parallel_tasks=2,
    )

    result = ordered.run()

    assert result.is_successful(), result.message
    assert module.EVENTS == ["first", "second"]
    assert result["second"].result == "second"
    by_name = {task.name: task for task in ordered.tasks}
    assert by_name["second"].upstream == [by_name["first"]]


@pytest.mark.usefixtures("prefect_server_env")
def test_references_nested_in_lists_and_mappings_are_resolved(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {"name": "items", "task": f"{prefix}.make_items", "args": {"n": 4}},
            {
                "name": "bundle",
                "task": f"{prefix}.echo",
                "args": {
                    "value": ["$steps.items.meta.tags[1]", {"size": "$steps.items.meta.n"}],
                    "param": {"deep": ["$label"]},
                    "quoted": "$steps.items[\"meta\"]['n']",
                },
            },
        )
    )

    result = flow.run({"label": "x"})

    assert result.is_successful(), result.message
    assert result["bundle"].result == {
        "value": ["even", {"size": 4}],
        "param": {"deep": ["x"]},
        "quoted": 4,
    }


@pytest.mark.usefixtures("prefect_server_env")
def test_a_double_dollar_passes_a_literal_dollar_sign(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {
                "name": "money",
                "task": f"{prefix}.echo",
                "args": {"value": ["$$n", "costs 5$", "a$$b", "^x+$", "$"]},
            }
        )
    )

    result = flow.run()

    assert result.is_successful(), result.message
    assert result["money"].result == ["$n", "costs 5$", "a$b", "^x+$", "$"]
    assert flow.parameters == {}


@pytest.mark.usefixtures("prefect_server_env")
def test_a_failing_step_with_retries_is_retried_until_it_succeeds(steps: tuple[str, Any]) -> None:
    prefix, module = steps
    flow = flow_from_task_graph(
        graph(
            {
                "name": "flaky",
                "task": f"{prefix}.flaky",
                "args": {"key": "retry-test"},
                "retries": 2,
                "retryDelaySeconds": 0,
            }
        )
    )

    result = flow.run()

    assert result.is_successful(), result.message
    assert module.ATTEMPTS["retry-test"] == 2
    assert result["flaky"].result == "ok after 2 attempts"


@pytest.mark.usefixtures("prefect_server_env")
def test_a_failing_step_without_retries_fails_the_flow(steps: tuple[str, Any]) -> None:
    prefix, module = steps
    flow = flow_from_task_graph(
        graph({"name": "flaky", "task": f"{prefix}.flaky", "args": {"key": "no-retry"}})
    )

    result = flow.run()

    assert result.is_failed()
    assert module.ATTEMPTS["no-retry"] == 1
    assert "first attempt fails on purpose" in result["flaky"].message


@pytest.mark.usefixtures("prefect_server_env")
def test_a_step_running_past_its_timeout_fails_and_its_dependents_do_not_run(
    steps: tuple[str, Any],
) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {"name": "slow", "task": f"{prefix}.slow", "args": {"seconds": 5}, "timeoutSeconds": 1},
            {"name": "after", "task": f"{prefix}.echo", "args": {"value": "$steps.slow"}},
        )
    )

    result = flow.run()

    assert result.is_failed()
    assert result["slow"].state == "Failed"
    # Stopped by the timeout: a step left to finish its 5 s of work would have Completed.
    assert result["slow"].message == "timed out after 1 s (timeoutSeconds)"
    assert result["slow"].result is None
    assert result["after"].state == "NotRun"


@pytest.mark.usefixtures("prefect_server_env")
def test_independent_steps_never_exceed_max_parallel_tasks(steps: tuple[str, Any]) -> None:
    prefix, module = steps
    flow = flow_from_task_graph(
        graph(
            *(
                {"name": f"b{i}", "task": f"{prefix}.busy", "args": {"label": f"b{i}"}}
                for i in range(6)
            )
        ),
        max_parallel_tasks=2,
    )

    result = flow.run()

    # Each step returns only once a partner runs alongside it (a barrier of two), so success
    # shows two at a time; the peak count shows never more.
    assert result.is_successful(), result.message
    assert module.PEAK[0] == 2


@pytest.mark.usefixtures("prefect_server_env")
def test_a_step_waiting_for_its_input_does_not_hold_back_an_independent_step(
    steps: tuple[str, Any],
) -> None:
    """With two workers, ``a`` and ``c`` must run together (they meet at a barrier), even
    though ``b``, which waits for ``a``, is written before ``c``."""
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {"name": "a", "task": f"{prefix}.rendezvous", "args": {"label": "a"}},
            {"name": "b", "task": f"{prefix}.echo", "args": {"value": "$steps.a"}},
            {"name": "c", "task": f"{prefix}.rendezvous", "args": {"label": "c"}},
        ),
        max_parallel_tasks=2,
    )

    result = flow.run()

    assert result.is_successful(), result.message
    assert result["b"].result == "a"


@pytest.mark.usefixtures("prefect_server_env")
def test_the_runner_loads_a_task_graph_entry_point(steps: tuple[str, Any]) -> None:
    prefix, _ = steps

    flow = load_flow({"taskGraph": three_steps(prefix)})
    result = flow.run({"n": 2})

    assert [node.name for node in flow.tasks] == ["items", "halves", "report"]
    assert result["report"].result["first"] == [0]


# -- building and validating ----------------------------------------------------------------------


def test_steps_become_nodes_in_dependency_order_named_after_the_steps(
    steps: tuple[str, Any],
) -> None:
    prefix, _ = steps

    flow = flow_from_task_graph(three_steps(prefix), name="demo", max_parallel_tasks=3)

    assert [node.name for node in flow.tasks] == ["items", "halves", "report"]
    assert [node.task for node in flow.tasks] == [
        f"{prefix}.make_items",
        f"{prefix}.split",
        f"{prefix}.report",
    ]
    assert (flow.name, flow.max_parallel_tasks) == ("demo", 3)


def test_nodes_are_recorded_level_by_level_keeping_file_order_within_a_level(
    steps: tuple[str, Any],
) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {"name": "a1", "task": f"{prefix}.echo"},
            {"name": "a2", "task": f"{prefix}.echo", "args": {"value": "$steps.a1"}},
            {"name": "b1", "task": f"{prefix}.echo"},
            {"name": "b2", "task": f"{prefix}.echo", "dependsOn": ["b1"]},
        )
    )

    assert [node.name for node in flow.tasks] == ["a1", "b1", "a2", "b2"]


def test_retries_and_timeouts_become_task_options(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(
        graph(
            {
                "name": "s",
                "task": f"{prefix}.echo",
                "retries": 2,
                "retryDelaySeconds": 1,
                "timeoutSeconds": 600,
            }
        )
    )

    options = flow.tasks[0].options

    assert (options.retries, options.retry_delay_seconds, options.timeout_seconds) == (2, 1, 600)


def test_a_parameter_is_declared_by_its_first_reference(steps: tuple[str, Any]) -> None:
    prefix, _ = steps

    flow = flow_from_task_graph(three_steps(prefix))

    assert list(flow.parameters) == ["n"]
    assert flow.check({"n": 3}) == {"n": 3}


def test_a_missing_parameter_is_rejected_before_anything_runs(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(three_steps(prefix))

    with pytest.raises(FlowValidationError) as caught:
        flow.check({})

    assert caught.value.problems == ["missing parameter(s): n"]


def test_a_parameter_no_step_references_is_an_unknown_parameter(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    flow = flow_from_task_graph(three_steps(prefix))

    with pytest.raises(FlowValidationError) as caught:
        flow.check({"n": 1, "epsilon": 0.1})

    assert "unknown parameter(s): epsilon" in caught.value.problems[0]


def test_a_task_graph_error_is_an_entry_point_error_with_one_problem_per_line(
    steps: tuple[str, Any],
) -> None:
    prefix, _ = steps
    bad = graph(
        {"name": "a", "task": f"{prefix}.echo", "args": {"value": "$steps.nope"}},
        {"name": "a", "task": "nodots"},
    )

    with pytest.raises(EntryPointError) as caught:
        load_flow({"taskGraph": bad})

    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("spec.entryPoint.taskGraph.steps[") for line in lines)


def _case(prefix: str, name: str) -> tuple[dict[str, Any], str]:
    """A graph with one kind of mistake, and the problem line it must produce."""
    ok = three_steps(prefix)
    p = "spec.entryPoint.taskGraph"
    items, report = ok["steps"][1], ok["steps"][0]
    if name == "unknown step reference":
        ok["steps"][2]["args"]["data"] = "$steps.itms"
        line = f"{p}.steps[2].args.data: unknown step 'itms' (steps: report, items, halves)"
    elif name == "unknown dependsOn":
        report["dependsOn"] = ["itms"]
        line = f"{p}.steps[0].dependsOn[0]: unknown step 'itms' (steps: report, items, halves)"
    elif name == "duplicate name":
        ok["steps"][2]["name"] = "items"
        line = f"{p}.steps[2].name: duplicate step name 'items' (first used by steps[1])"
    elif name == "malformed task":
        items["task"] = "make_items"
        line = f"{p}.steps[1].task: 'make_items' is malformed; write 'package.module.function'"
    elif name == "unknown plugin module":
        items["task"] = prefix.rsplit(".", 1)[0] + ".nosuch.make_items"
        line = f"{p}.steps[1].task: no plugin 'nosuch' in package"
    elif name == "unknown function":
        items["task"] = f"{prefix}.make_itms"
        line = f"{p}.steps[1].task: plugin '{prefix}' registers no function 'make_itms'"
    elif name == "unknown argument":
        items["args"]["count"] = 3
        line = (
            f"{p}.steps[1].args.count: {prefix}.make_items has no argument 'count' (it accepts: n)"
        )
    elif name == "missing argument":
        del report["args"]["meta"]
        line = f"{p}.steps[0].args: missing required argument(s) meta of {prefix}.report("
    elif name == "positional-only argument":
        items.update(task=f"{prefix}.only_positional", args={"x": 1})
        line = f"{p}.steps[1].args.x: {prefix}.only_positional(x: int, /) -> int takes 'x' only"
    elif name == "interpolation":
        items["args"]["n"] = "count-$n"
        line = f"{p}.steps[1].args.n: 'count-$n' has a reference inside other text ('$n')"
    elif name == "malformed reference":
        report["args"]["first"] = "$steps.halves[0"
        line = f"{p}.steps[0].args.first: '$steps.halves[0': unexpected '[0' at character 14"
    elif name == "steps without a name":
        report["args"]["first"] = "$steps"
        line = f"{p}.steps[0].args.first: '$steps': '$steps' must be followed by a step name"
    elif name == "unknown step field":
        items["depends_on"] = ["x"]
        line = f"{p}.steps[1].depends_on: unknown field (a step has: name, task, args, dependsOn"
    elif name == "bad retries":
        items["retries"] = -1
        line = f"{p}.steps[1].retries: must be an integer >= 0, got -1"
    elif name == "bad timeout":
        items["timeoutSeconds"] = 0
        line = f"{p}.steps[1].timeoutSeconds: must be a number > 0, got 0"
    elif name == "bad step name":
        items["name"] = "9 items"
        line = f"{p}.steps[1].name: '9 items' is not a valid step name"
    elif name == "args not a mapping":
        items["args"] = [3]
        line = f"{p}.steps[1].args: must be a mapping of argument names, got list [3]"
    elif name == "reserved argument":
        items["args"]["upstream_tasks"] = []
        line = f"{p}.steps[1].args.upstream_tasks: 'upstream_tasks' is reserved; use dependsOn"
    else:
        raise AssertionError(name)
    return ok, line


CASES = [
    "unknown step reference",
    "unknown dependsOn",
    "duplicate name",
    "malformed task",
    "unknown plugin module",
    "unknown function",
    "unknown argument",
    "missing argument",
    "positional-only argument",
    "interpolation",
    "malformed reference",
    "steps without a name",
    "unknown step field",
    "bad retries",
    "bad timeout",
    "bad step name",
    "args not a mapping",
    "reserved argument",
]


@pytest.mark.parametrize("case", CASES)
def test_each_kind_of_mistake_is_reported_with_its_path(steps: tuple[str, Any], case: str) -> None:
    prefix, _ = steps
    bad, expected = _case(prefix, case)

    problems = problems_of(bad)

    assert any(problem.startswith(expected) for problem in problems), problems


def test_every_problem_is_listed_at_once(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    bad = three_steps(prefix)
    bad["steps"][1]["task"] = f"{prefix}.make_itms"
    bad["steps"][2]["args"]["data"] = "$steps.itms"
    bad["steps"][0]["retries"] = "two"

    problems = problems_of(bad)

    assert len(problems) == 3, problems


def test_a_cycle_is_named_in_data_flow_order(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    cyclic = graph(
        {"name": "a", "task": f"{prefix}.echo", "args": {"value": "$steps.b"}},
        {"name": "b", "task": f"{prefix}.echo", "args": {"value": "$steps.c"}},
        {"name": "c", "task": f"{prefix}.echo", "dependsOn": ["a"]},
        {"name": "d", "task": f"{prefix}.echo", "args": {"value": "$steps.a"}},
    )

    assert problems_of(cyclic) == [
        "spec.entryPoint.taskGraph.steps: steps form a cycle: a -> c -> b -> a "
        "(each feeds the next)"
    ]


def test_a_step_depending_on_itself_is_a_cycle(steps: tuple[str, Any]) -> None:
    prefix, _ = steps

    problems = problems_of(graph({"name": "a", "task": f"{prefix}.echo", "dependsOn": ["a"]}))

    assert problems == [
        "spec.entryPoint.taskGraph.steps: steps form a cycle: a -> a (each feeds the next)"
    ]


def test_separate_cycles_are_each_named(steps: tuple[str, Any]) -> None:
    prefix, _ = steps
    cyclic = graph(
        {"name": "a", "task": f"{prefix}.echo", "dependsOn": ["b"]},
        {"name": "b", "task": f"{prefix}.echo", "dependsOn": ["a"]},
        {"name": "x", "task": f"{prefix}.echo", "dependsOn": ["y"]},
        {"name": "y", "task": f"{prefix}.echo", "dependsOn": ["x"]},
    )

    problems = problems_of(cyclic)

    assert [p.split("cycle: ")[1].split(" (")[0] for p in problems] == [
        "a -> b -> a",
        "x -> y -> x",
    ]


@pytest.mark.parametrize(
    ("task_graph", "expected"),
    [
        ([], "spec.entryPoint.taskGraph: must be a mapping with a 'steps' list, got list []"),
        ({"steps": []}, "spec.entryPoint.taskGraph.steps: must be a non-empty list of steps"),
        ({"steps": ["x"]}, "spec.entryPoint.taskGraph.steps[0]: must be a mapping"),
        ({"steps": [{"name": "a", "task": "a.b.c"}], "step": 1}, "spec.entryPoint.taskGraph.step:"),
    ],
)
def test_a_malformed_graph_is_rejected_with_its_path(task_graph: Any, expected: str) -> None:
    problems = problems_of(copy.deepcopy(task_graph))

    assert any(problem.startswith(expected) for problem in problems), problems


# -- reference syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$n", Reference("parameter", "n", (), "$n")),
        ("$cfg.lr", Reference("parameter", "cfg", ("lr",), "$cfg.lr")),
        ("$steps.items", Reference("step", "items", (), "$steps.items")),
        ("$steps.my-step[0]", Reference("step", "my-step", (0,), "$steps.my-step[0]")),
        ("$steps.x[-1].k", Reference("step", "x", (-1, "k"), "$steps.x[-1].k")),
        ('$steps.x["a b"]', Reference("step", "x", ("a b",), '$steps.x["a b"]')),
        ("$$n", "$n"),
        ("plain", "plain"),
        ("5$", "5$"),
    ],
)
def test_strings_parse_into_references_or_literals(text: str, expected: object) -> None:
    assert parse_string(text) == expected


@pytest.mark.parametrize("text", ["hi $n", "$n-suffix", "$steps.", "$steps.x[", "$$$n"])
def test_malformed_or_embedded_references_are_rejected(text: str) -> None:
    with pytest.raises(ReferenceSyntaxError):
        parse_string(text)
