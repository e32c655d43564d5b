"""Ctrl-C and SIGTERM stop `dioptra run` cleanly: the flow run ends Cancelled, the exit is quick.

The CLI tests run the real ``dioptra`` console script in its default embedded-Prefect mode
(no ``PREFECT_API_URL``, a ``PREFECT_HOME`` of their own), as a laptop or a Job's pod would.
A terminal's Ctrl-C is SIGINT to the whole foreground process group, so the CLI starts in
its own session and SIGINT goes to that group; Kubernetes sends SIGTERM to the process.
Every test waits for the runner to reach the point of interest by reading its output (a
plugin prints a line, then blocks), never by sleeping.
"""

from __future__ import annotations

import contextvars
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import yaml
from dioptra import pyplugs
from dioptra.flow import CANCELLED, Cancellation, Flow
from dioptra_runner.interrupts import stop_on_signals
from dioptra_runner.prefect_warmup import DATABASE_NAME, build_template
from support.mlflow import MlflowServer
from support.plugin_tree import PluginTree

pytestmark = pytest.mark.timeout(240)

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))
# Safety bounds only (a hung runner fails the test instead of hanging it), not speed claims.
READY_TIMEOUT = 150.0
EXIT_TIMEOUT = 60.0

STEPS = '''
import os
import time
from pathlib import Path

from dioptra import pyplugs

MARKS = Path(os.environ["MARKS"])


def _wait_for_release(limit: float) -> None:
    """Block until the file "release" appears (no test creates it) or ``limit`` s pass."""
    deadline = time.monotonic() + limit
    while not (MARKS / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pyplugs.register
def first() -> int:
    (MARKS / "first").touch()
    return 1


@pyplugs.register
def blocker(x: int) -> int:
    (MARKS / "blocker").touch()
    print("BLOCKER STARTED", flush=True)
    _wait_for_release(120)
    return x


@pyplugs.register
def after(x: int) -> int:
    (MARKS / "after").touch()
    return x
'''

FLOWS = """
from dioptra import pyplugs
from dioptra.flow import Flow

with Flow("Blocking") as flow:
    one = pyplugs.call_task("stoppkg.ops", "steps", "first")
    blocked = pyplugs.call_task("stoppkg.ops", "steps", "blocker", x=one)
    pyplugs.call_task("stoppkg.ops", "steps", "after", x=blocked)
"""

# An entry point that blocks while it is imported: a signal before the first task.
SLOW_FLOWS = """
import os
import time
from pathlib import Path

print("FLOW MODULE LOADING", flush=True)
_release = Path(os.environ["MARKS"]) / "release"
_deadline = time.monotonic() + 120
while not _release.exists() and time.monotonic() < _deadline:
    time.sleep(0.05)

from stoppkg.flows import flow  # noqa: E402
"""


# -- running the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-migrated Prefect database for the module: each run's server then starts faster."""
    dest = tmp_path_factory.mktemp("prefect-template") / "template"
    build_template(dest)
    return dest


def make_workspace(folder: Path) -> Path:
    """Plugins, the Experiment file, and the folder the plugins leave their marks in."""
    package = folder / "plugins" / "stoppkg"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "steps.py").write_text(STEPS)
    (package / "flows.py").write_text(FLOWS)
    (package / "slow_flows.py").write_text(SLOW_FLOWS)
    (folder / "marks").mkdir()
    return folder


def write_experiment(folder: Path, module: str) -> Path:
    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "blocking"},
        "spec": {"entryPoint": {"module": module}, "plugins": {"sources": ["./plugins/"]}},
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Run:
    """A `dioptra run` in its own session, with its output collected as it comes."""

    def __init__(
        self, folder: Path, module: str, template: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.home = folder / "prefect-home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            DIOPTRA_CACHE_DIR=str(folder / "cache"),
            DIOPTRA_PREFECT_TEMPLATE=str(template),
            MARKS=str(folder / "marks"),
            **(extra_env or {}),
        )
        self.process = subprocess.Popen(
            [DIOPTRA, "run", str(write_experiment(folder, module))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._lock:
                lines.append(line)
                for text, event in self._seen.items():
                    if text in line:
                        event.set()

    def wait_for_line(self, text: str) -> None:
        """Block until the runner prints a line containing ``text`` on stdout."""
        with self._lock:
            event = self._seen.setdefault(text, threading.Event())
            if any(text in line for line in self.stdout):
                event.set()
        if not event.wait(READY_TIMEOUT):
            self.process.kill()
            pytest.fail(f"the runner never printed {text!r}; stderr: {''.join(self.stderr)}")

    def finish(self) -> int:
        """Wait for the runner to exit (killing it past EXIT_TIMEOUT) and for its output."""
        try:
            code = self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"the runner was still running {EXIT_TIMEOUT:g} s after the signal")
        for reader in self._readers:
            reader.join()
        return code

    @property
    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def server_pid(self) -> int:
        """The embedded Prefect server: the runner's child process running uvicorn."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
            if int(parent.split()[1]) == self.process.pid and b"uvicorn" in command:
                return int(entry.name)
        raise AssertionError("the runner has no Prefect server child")

    def flow_run_states(self) -> list[str]:
        return [row[0] for row in self._query("select state_name from flow_run")]

    def task_run_states(self) -> dict[str, str]:
        rows = self._query("select name, state_name from task_run")
        return {name.rsplit("-", 1)[0]: state for name, state in rows}

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / DATABASE_NAME) as db:
            return db.execute(sql).fetchall()


@dataclass
class Outcome:
    """A run stopped by a signal, as the tests look at it afterwards."""

    run: Run
    code: int
    server_pid: int


def stopped_during_a_task(folder: Path, template: Path, signum: int, *, group: bool) -> Outcome:
    run = Run(make_workspace(folder), "stoppkg.flows:flow", template)
    run.wait_for_line("BLOCKER STARTED")
    server = run.server_pid()
    if group:
        os.killpg(run.process.pid, signum)  # what a terminal's Ctrl-C does
    else:
        run.process.send_signal(signum)  # what Kubernetes does
    return Outcome(run, run.finish(), server)


@pytest.fixture(scope="module")
def ctrl_c_during_a_task(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Outcome:
    folder = tmp_path_factory.mktemp("ctrl-c")
    return stopped_during_a_task(folder, template, signal.SIGINT, group=True)


@pytest.fixture(scope="module")
def sigterm_during_a_task(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Outcome:
    folder = tmp_path_factory.mktemp("sigterm")
    return stopped_during_a_task(folder, template, signal.SIGTERM, group=False)


def stopped_while_loading(folder: Path, template: Path, signum: int, *, group: bool) -> Outcome:
    run = Run(make_workspace(folder), "stoppkg.slow_flows:flow", template)
    run.wait_for_line("FLOW MODULE LOADING")
    server = run.server_pid()
    if group:
        os.killpg(run.process.pid, signum)
    else:
        run.process.send_signal(signum)
    return Outcome(run, run.finish(), server)


# -- a signal during a task -----------------------------------------------------------------------


def test_a_tracked_run_stopped_by_sigterm_is_a_killed_mlflow_run(
    tmp_path: Path, template: Path, mlflow_server: MlflowServer
) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    run = Run(make_workspace(tmp_path), "stoppkg.flows:flow", template, extra_env=env)
    run.wait_for_line("BLOCKER STARTED")
    run.process.send_signal(signal.SIGTERM)  # what Kubernetes does
    assert run.finish() == 128 + signal.SIGTERM, run.output

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("blocking")
    assert experiment is not None, run.output
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.status == "KILLED"
    assert tracked.data.tags["dioptra.phase"] == "Cancelled"
    assert "Traceback" not in run.output


def test_ctrl_c_during_a_task_exits_130_without_a_traceback(ctrl_c_during_a_task: Outcome) -> None:
    assert ctrl_c_during_a_task.code == 130, ctrl_c_during_a_task.run.output
    assert "Traceback" not in ctrl_c_during_a_task.run.output


def test_ctrl_c_during_a_task_ends_the_flow_run_cancelled_in_prefect(
    ctrl_c_during_a_task: Outcome,
) -> None:
    assert ctrl_c_during_a_task.run.flow_run_states() == ["Cancelled"]


def test_ctrl_c_during_a_task_cancels_the_running_task_run_and_keeps_the_completed_one(
    ctrl_c_during_a_task: Outcome,
) -> None:
    assert ctrl_c_during_a_task.run.task_run_states() == {
        "stoppkg.ops.steps.first": "Completed",
        "stoppkg.ops.steps.blocker": "Cancelled",
    }


def test_ctrl_c_during_a_task_starts_no_further_task(ctrl_c_during_a_task: Outcome) -> None:
    marks = ctrl_c_during_a_task.run.folder / "marks"
    assert (marks / "blocker").exists()
    assert not (marks / "after").exists()


def test_ctrl_c_during_a_task_shows_the_tasks_cancelled(ctrl_c_during_a_task: Outcome) -> None:
    stdout = "".join(ctrl_c_during_a_task.run.stdout)
    assert "Cancelled stoppkg.ops.steps.blocker" in stdout
    assert "Cancelled stoppkg.ops.steps.after" in stdout


def test_sigterm_during_a_task_exits_143_without_a_traceback(
    sigterm_during_a_task: Outcome,
) -> None:
    assert sigterm_during_a_task.code == 143, sigterm_during_a_task.run.output
    assert "Traceback" not in sigterm_during_a_task.run.output


def test_sigterm_during_a_task_ends_the_flow_run_cancelled_in_prefect(
    sigterm_during_a_task: Outcome,
) -> None:
    assert sigterm_during_a_task.run.flow_run_states() == ["Cancelled"]


def test_sigterm_leaves_no_prefect_server_behind(sigterm_during_a_task: Outcome) -> None:
    # The runner stops and reaps its server before it exits; only a zombie could remain.
    status = Path(f"/proc/{sigterm_during_a_task.server_pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


# -- a signal before the first task -------------------------------------------------------------


def test_ctrl_c_while_the_flow_loads_exits_130_with_one_line(
    tmp_path: Path, template: Path
) -> None:
    stopped = stopped_while_loading(tmp_path, template, signal.SIGINT, group=True)

    assert stopped.code == 130, stopped.run.output
    assert "Traceback" not in stopped.run.output
    named = [line for line in stopped.run.stderr if "SIGINT" in line]
    assert len(named) == 1 and "stopped by SIGINT before the first task" in named[0]


def test_sigterm_while_the_flow_loads_exits_143_with_one_line(
    tmp_path: Path, template: Path
) -> None:
    stopped = stopped_while_loading(tmp_path, template, signal.SIGTERM, group=False)

    assert stopped.code == 143, stopped.run.output
    assert "Traceback" not in stopped.run.output
    named = [line for line in stopped.run.stderr if "SIGTERM" in line]
    assert len(named) == 1 and "stopped by SIGTERM before the first task" in named[0]


# -- the signal machinery -----------------------------------------------------------------------

SECOND_SIGNAL = textwrap.dedent(
    """
    import threading
    from dioptra_runner.interrupts import StopRequested, stop_on_signals

    with stop_on_signals() as stop:
        stop.on_exit(lambda hurry: print(f"exit callback, hurry={hurry}", flush=True))
        try:
            print("WAITING", flush=True)
            threading.Event().wait(120)
        except StopRequested:
            print("CLEANING UP", flush=True)
            threading.Event().wait(120)  # a clean-up that does not end by itself
    print("NOT REACHED", flush=True)
    """
)


def test_a_second_signal_while_cleaning_up_exits_at_once_without_a_traceback() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SECOND_SIGNAL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == "WAITING\n"
    os.killpg(process.pid, signal.SIGINT)
    assert process.stdout.readline() == "CLEANING UP\n"
    os.killpg(process.pid, signal.SIGINT)

    code = process.wait(timeout=EXIT_TIMEOUT)

    assert code == 130
    assert process.stdout.read() == "exit callback, hurry=True\n"
    assert process.stderr.read() == ""


def test_the_previous_handlers_are_back_after_a_run_without_a_signal() -> None:
    def previous(signum: int, frame: Any) -> None:
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop.handle
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


# -- the engine's cancellation --------------------------------------------------------------------

GATED_STEPS = """
import threading

from dioptra import pyplugs

started = threading.Event()
release = threading.Event()
ran: list[str] = []


@pyplugs.register
def gated() -> int:
    ran.append("gated")
    started.set()
    release.wait(60)
    return 1


@pyplugs.register
def later(x: int) -> int:
    ran.append("later")
    return x
"""


@pytest.fixture
def gated_flow(plugin_tree: PluginTree, prefect_server_env: str) -> Iterator[tuple[Flow, Any]]:
    """A two-task flow whose first task runs until the test releases it; and its module."""
    package = plugin_tree.package("gate")
    plugin_tree.module(f"{package}.steps", GATED_STEPS)
    flow = Flow("Gated")
    with flow:
        first = pyplugs.call_task(package, "steps", "gated")
        pyplugs.call_task(package, "steps", "later", x=first)
    steps = import_module(f"{package}.steps")
    yield flow, steps
    steps.release.set()


def run_in_thread(target: Callable[[], None]) -> threading.Thread:
    """Start ``target`` in a thread that sees this test's Prefect settings (context variables)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,))
    thread.start()
    return thread


def run_then_cancel(flow: Flow, steps: Any) -> tuple[threading.Thread, list[Any]]:
    """Run the gated flow in a thread; cancel it once its first task has started."""
    cancellation = Cancellation()
    results: list[Any] = []
    runner = run_in_thread(lambda: results.append(flow.run(cancellation=cancellation)))
    assert steps.started.wait(60)
    cancellation.cancel("a test")
    return runner, results


def test_a_cancelled_run_starts_no_task_after_the_cancellation(
    gated_flow: tuple[Flow, Any],
) -> None:
    flow, steps = gated_flow

    runner, results = run_then_cancel(flow, steps)
    steps.release.set()  # the task ends now, after the cancellation: nothing may follow it
    runner.join(60)

    assert steps.ran == ["gated"]
    assert results[0].state == CANCELLED
    assert results[0][flow.tasks[1]].state == CANCELLED


def test_a_cancelled_run_ends_its_flow_run_cancelled_without_waiting_for_its_task(
    gated_flow: tuple[Flow, Any],
) -> None:
    from prefect import get_client

    flow, steps = gated_flow

    runner, results = run_then_cancel(flow, steps)
    runner.join(60)  # the task is still blocked: the run returned without it

    assert not runner.is_alive()
    assert not steps.release.is_set()
    assert results[0][flow.tasks[0]].state == CANCELLED
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(results[0].flow_run_id).state_name == "Cancelled"


def test_a_run_cancelled_before_it_starts_creates_no_flow_run(
    gated_flow: tuple[Flow, Any],
) -> None:
    flow, steps = gated_flow
    cancellation = Cancellation()
    cancellation.cancel("a test")

    result = flow.run(cancellation=cancellation)

    assert result.state == CANCELLED and result.flow_run_id is None
    assert [outcome.state for outcome in result.tasks.values()] == [CANCELLED, CANCELLED]
    assert steps.ran == []


def test_a_cancellation_wakes_a_callback_added_after_it() -> None:
    cancellation = Cancellation()
    cancellation.cancel("first reason")
    woken: list[str] = []

    cancellation.add_callback(lambda: woken.append(cancellation.reason))
    cancellation.cancel("second reason")

    assert woken == ["first reason"]
