"""Seed-style flows (``with Flow(...)``, ``Parameter``, ``call_task``) run on real Prefect 3."""

from __future__ import annotations

from pathlib import Path

import pytest
from dioptra import pyplugs
from dioptra.flow import Flow, FlowDefinitionError, FlowValidationError, Parameter, TaskOutcome
from dioptra.sdk.utilities.contexts import plugin_dirs
from support.cluster import wait_until
from support.plugin_tree import PluginTree

pytestmark = pytest.mark.usefixtures("prefect_server_env")

OPS = '''
import threading
import time
from pathlib import Path
from dioptra import pyplugs

EVENTS: list[str] = []
BARRIER = threading.Barrier(2, timeout=20)

@pyplugs.register
def make(n: int) -> list[int]:
    """Make a list of n integers."""
    EVENTS.append("make")
    return list(range(n))

@pyplugs.register
@pyplugs.task_nout(2)
def split(data: list[int]) -> tuple[list[int], list[int]]:
    half = len(data) // 2
    return data[:half], data[half:]

@pyplugs.register
def total(a: list[int], b: list[int] | None = None) -> int:
    EVENTS.append("total")
    return sum(a) + sum(b or [])

@pyplugs.register
def touch(path: str, label: str) -> str:
    Path(path).write_text(label)
    EVENTS.append(label)
    return label

@pyplugs.register
def read(path: str) -> str:
    EVENTS.append("read")
    return Path(path).read_text()

@pyplugs.register
def rendezvous(label: str) -> str:
    BARRIER.wait()
    return label

@pyplugs.register
def fail(x: object = None) -> None:
    raise ValueError("the plugin failed on purpose")

@pyplugs.register
def record(x: object = None, **kwargs: object) -> dict:
    EVENTS.append("record")
    return {"x": x, "kwargs": sorted(kwargs)}

@pyplugs.register
def nap(seconds: float) -> None:
    time.sleep(seconds)

@pyplugs.register
def meta() -> dict:
    return {"values": [10, 20, 30], "name": "meta"}
'''


@pytest.fixture
def ops(plugin_tree: PluginTree) -> tuple[str, object]:
    pkg = plugin_tree.package("flowpkg")
    plugin_tree.module(f"{pkg}.ops", OPS)
    module = __import__(f"{pkg}.ops", fromlist=["EVENTS"])
    return pkg, module


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def task_changed(self, outcome: TaskOutcome) -> None:
        self.changes.append((outcome.name, outcome.state))


def test_nothing_runs_while_the_flow_is_defined(ops: tuple[str, object]) -> None:
    pkg, module = ops
    with Flow("define only") as flow:
        pyplugs.call_task(pkg, "ops", "make", n=3)

    assert module.EVENTS == []  # type: ignore[attr-defined]
    assert [node.name for node in flow.tasks] == [f"{pkg}.ops.make"]


def test_an_output_passed_as_argument_is_a_data_edge(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("data edge") as flow:
        n = Parameter("n")
        made = pyplugs.call_task(pkg, "ops", "make", n=n)
        summed = pyplugs.call_task(pkg, "ops", "total", a=made)

    result = flow.run(parameters={"n": 5})

    assert result.is_successful()
    assert result[summed].result == 10
    assert result.result[made].result == [0, 1, 2, 3, 4]


def test_upstream_tasks_orders_without_passing_data(
    ops: tuple[str, object], tmp_path: Path
) -> None:
    pkg, module = ops
    marker = str(tmp_path / "marker.txt")
    with Flow("ordering") as flow:
        written = pyplugs.call_task(pkg, "ops", "touch", path=marker, label="written")
        read = pyplugs.call_task(pkg, "ops", "read", path=marker, upstream_tasks=[written])

    result = flow.run()

    assert result[read].result == "written"
    assert module.EVENTS == ["written", "read"]  # type: ignore[attr-defined]


def test_upstream_tasks_never_reaches_the_plugin(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("no upstream kwarg") as flow:
        first = pyplugs.call_task(pkg, "ops", "make", n=1)
        recorded = pyplugs.call_task(pkg, "ops", "record", x=1, upstream_tasks=[first])

    result = flow.run()

    assert result[recorded].result == {"x": 1, "kwargs": []}


def test_independent_tasks_run_concurrently(ops: tuple[str, object]) -> None:
    """Both tasks wait on one barrier for two parties: run one after the other, both would fail."""
    pkg, _ = ops
    with Flow("concurrency") as flow:
        left = pyplugs.call_task(pkg, "ops", "rendezvous", label="left")
        right = pyplugs.call_task(pkg, "ops", "rendezvous", label="right")

    result = flow.run()

    assert result.is_successful(), result.message
    assert (result[left].result, result[right].result) == ("left", "right")


def test_a_task_whose_upstream_failed_is_not_run_and_the_flow_fails(
    ops: tuple[str, object],
) -> None:
    pkg, module = ops
    with Flow("failure") as flow:
        broken = pyplugs.call_task(pkg, "ops", "fail")
        after = pyplugs.call_task(pkg, "ops", "record", x=broken)
        ordered = pyplugs.call_task(pkg, "ops", "record", upstream_tasks=[broken])
        independent = pyplugs.call_task(pkg, "ops", "make", n=2)

    result = flow.run()

    assert result.is_failed()
    assert result[broken].state == "Failed"
    assert "the plugin failed on purpose" in result[broken].message
    assert result[after].state == "NotRun"
    assert result[ordered].state == "NotRun"
    assert result[independent].result == [0, 1]
    assert "record" not in module.EVENTS  # type: ignore[attr-defined]
    assert f"task {broken.name} failed: ValueError: the plugin failed on purpose" in result.message


def test_missing_and_unknown_parameters_are_rejected_before_any_task_runs(
    ops: tuple[str, object],
) -> None:
    pkg, module = ops
    with Flow("params") as flow:
        n = Parameter("n")
        size = Parameter("size")
        pyplugs.call_task(pkg, "ops", "record", x=[n, size])

    with pytest.raises(FlowValidationError) as caught:
        flow.run(parameters={"n": 1, "colour": "red"})

    assert caught.value.problems == [
        "missing parameter(s): size",
        "unknown parameter(s): colour (flow 'params' declares: n, size)",
    ]
    assert module.EVENTS == []  # type: ignore[attr-defined]


def test_parameter_defaults_fill_what_is_not_given(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("defaults") as flow:
        n = Parameter("n", default=4)
        made = pyplugs.call_task(pkg, "ops", "make", n=n)

    assert flow.run()[made].result == [0, 1, 2, 3]


def test_every_unknown_plugin_is_listed_and_nothing_runs(ops: tuple[str, object]) -> None:
    pkg, module = ops
    with Flow("unknown plugins") as flow:
        pyplugs.call_task(pkg, "ops", "make", n=1)
        pyplugs.call_task(pkg, "ops", "no_such_function")
        pyplugs.call_task(pkg, "no_such_module", "f")

    with pytest.raises(FlowValidationError) as caught:
        flow.run()

    problems = caught.value.problems
    assert len(problems) == 2
    assert "no_such_function" in problems[0]
    assert "no_such_module" in problems[1]
    assert module.EVENTS == []  # type: ignore[attr-defined]


def test_arguments_the_plugin_does_not_accept_are_reported_before_running(
    ops: tuple[str, object],
) -> None:
    pkg, _ = ops
    with Flow("bad args") as flow:
        pyplugs.call_task(pkg, "ops", "make", n=3, count=3)

    with pytest.raises(FlowValidationError, match="unexpected keyword argument 'count'"):
        flow.run()


def test_task_nout_lets_a_flow_unpack_a_node(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("unpack") as flow:
        made = pyplugs.call_task(pkg, "ops", "make", n=6)
        low, high = pyplugs.call_task(pkg, "ops", "split", data=made)
        low_sum = pyplugs.call_task(pkg, "ops", "total", a=low)
        high_sum = pyplugs.call_task(pkg, "ops", "total", a=high)

    result = flow.run()

    assert (result[low_sum].result, result[high_sum].result) == (3, 12)


def test_unpacking_a_node_without_task_nout_explains_the_fix(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("bad unpack"), pytest.raises(FlowDefinitionError, match="task_nout"):
        _a, _b = pyplugs.call_task(pkg, "ops", "make", n=2)


def test_an_element_or_key_of_an_output_can_be_passed_on(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("items") as flow:
        info = pyplugs.call_task(pkg, "ops", "meta")
        picked = pyplugs.call_task(pkg, "ops", "record", x=[info["values"][1], info["name"]])

    assert flow.run()[picked].result == {"x": [20, "meta"], "kwargs": []}


def test_repeated_plugins_get_numbered_task_names(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("names") as flow:
        for n in range(3):
            pyplugs.call_task(pkg, "ops", "make", n=n)

    assert [node.name for node in flow.tasks] == [
        f"{pkg}.ops.make",
        f"{pkg}.ops.make-2",
        f"{pkg}.ops.make-3",
    ]


def test_prefect_task_runs_carry_the_plugin_names(ops: tuple[str, object]) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    pkg, _ = ops
    with Flow("prefect names") as flow:
        made = pyplugs.call_task(pkg, "ops", "make", n=2)
        pyplugs.call_task(pkg, "ops", "total", a=made)
    result = flow.run()
    assert result.flow_run_id is not None

    async def task_run_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id]))
            )
            return sorted(run.name.rsplit("-", 1)[0] for run in runs)

    assert asyncio.run(task_run_names()) == [f"{pkg}.ops.make", f"{pkg}.ops.total"]


def test_listener_sees_each_task_start_and_finish(ops: tuple[str, object]) -> None:
    pkg, _ = ops
    with Flow("listener") as flow:
        made = pyplugs.call_task(pkg, "ops", "make", n=1)
        pyplugs.call_task(pkg, "ops", "fail", x=made)
        pyplugs.call_task(pkg, "ops", "record", x=made, upstream_tasks=[flow.tasks[-1]])
    recorder = Recorder()

    flow.run(listener=recorder)

    by_task: dict[str, list[str]] = {}
    for name, state in recorder.changes:
        by_task.setdefault(name.split(".")[-1], []).append(state)
    assert by_task == {
        "make": ["Running", "Completed"],
        "fail": ["Running", "Failed"],
        "record": ["NotRun"],
    }


def test_plugins_are_found_in_a_dioptra_plugin_dir_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_root = tmp_path / "synced"
    package = plugin_root / "envpkg_flow" / "maths"
    package.mkdir(parents=True)
    (plugin_root / "envpkg_flow" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "arith.py").write_text(
        "from dioptra import pyplugs\n"
        "@pyplugs.register\ndef double(x: int) -> int:\n    return 2 * x\n"
    )
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(plugin_root))

    try:
        with plugin_dirs([]):
            with Flow("env plugins") as flow:
                doubled = pyplugs.call_task("envpkg_flow.maths", "arith", "double", x=21)
            result = flow.run()
    finally:
        import sys

        for name in [m for m in sys.modules if m.startswith("envpkg_flow")]:
            del sys.modules[name]
        pyplugs.registry().forget("envpkg_flow")

    assert result[doubled].result == 42


def test_tasks_waiting_for_inputs_do_not_hold_the_bounded_worker_pool(
    ops: tuple[str, object],
) -> None:
    """With 2 workers, a chain waiting on its head must not keep the independent task out."""
    pkg, _ = ops
    with Flow("bounded") as flow:
        head = pyplugs.call_task(pkg, "ops", "rendezvous", label="head")
        middle = pyplugs.call_task(pkg, "ops", "record", x=head)
        pyplugs.call_task(pkg, "ops", "record", x=middle)
        independent = pyplugs.call_task(pkg, "ops", "rendezvous", label="independent")

    result = flow.run(max_parallel_tasks=2)

    assert result.is_successful(), result.message
    assert result[independent].result == "independent"


def test_a_task_stopped_at_its_timeout_says_so(ops: tuple[str, object]) -> None:
    from dioptra.flow import TaskOptions

    pkg, _ = ops
    with Flow("timeout") as flow:
        slow = pyplugs.add_plugin_task(
            flow, pkg, "ops", "nap", (), {"seconds": 5}, options=TaskOptions(timeout_seconds=1)
        )

    result = flow.run()

    assert result[slow].state == "Failed"
    assert result[slow].message == "timed out after 1 s (timeoutSeconds)"


def _events_of(flow_run_id: str | None, name: str) -> int:
    """How many events called `name` the Prefect server stored for the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    assert flow_run_id
    wanted = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        return len(client.read_events(filter=wanted, limit=50).events)


def test_heartbeats_can_be_turned_off_for_a_server_that_ends_with_the_process(
    ops: tuple[str, object],
) -> None:
    pkg, _ = ops
    with Flow("heartbeats") as flow:
        pyplugs.call_task(pkg, "ops", "make", n=2)

    beating = flow.run()
    quiet = flow.run(heartbeats=False)

    # Events reach the server asynchronously: wait for the default run's heartbeat, and for
    # the quiet run's own completion (sent after any heartbeat it would have sent).
    wait_until(lambda: _events_of(beating.flow_run_id, "prefect.flow-run.heartbeat"), 30)
    wait_until(lambda: _events_of(quiet.flow_run_id, "prefect.flow-run.Completed"), 30)
    assert _events_of(quiet.flow_run_id, "prefect.flow-run.heartbeat") == 0
    assert quiet.is_successful()
