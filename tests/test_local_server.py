"""The local Prefect server that `dioptra run` keeps between runs on a laptop (issue 17).

Real ``dioptra`` processes and real Prefect, no mocks. tests/conftest.py turns the shared
server off for the rest of the suite; each test here turns it on in its children's
environment, on a "laptop" of its own (a cache folder and a ``PREFECT_HOME`` under a temp
folder), and the ``laptop`` fixture stops every server its test started. Tests wait on
events (a process exit, a recorded PID, ``/health``, a line of output), never on fixed
sleeps; the timeouts are safety bounds, not speed claims.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from dioptra_runner.local_server import (
    FOLDER_NAME,
    Paths,
    ServerRecord,
    live_leases,
    pid_alive,
    read_record,
    stop_server,
    wait_gone,
)
from dioptra_runner.prefect_warmup import DATABASE_NAME, build_template, healthy
from dioptra_runner.warm_runner import read_state

pytestmark = pytest.mark.timeout(300)

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))
RUN_TIMEOUT = 240.0
EXIT_TIMEOUT = 60.0

OPS = '''
import os
import time
from pathlib import Path

from dioptra import pyplugs

MARKS = Path(os.environ["MARKS"])


@pyplugs.register
def first() -> int:
    """Record when the first task started (for the printed timings)."""
    (MARKS / f"first-{os.getpid()}").write_text(repr(time.time()))
    return 1


@pyplugs.register
def blocker(x: int) -> int:
    print("BLOCKER STARTED", flush=True)
    deadline = time.monotonic() + 120
    while not (MARKS / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return x


@pyplugs.register
def fails(x: int) -> int:
    raise ValueError(f"refusing {x}")
'''

FLOWS = """
from dioptra import pyplugs
from dioptra.flow import Flow

with Flow("Quick") as flow:
    pyplugs.call_task("lspkg", "ops", "first")

with Flow("Blocking") as blocking:
    one = pyplugs.call_task("lspkg", "ops", "first")
    pyplugs.call_task("lspkg", "ops", "blocker", x=one)

with Flow("Failing") as failing:
    pyplugs.call_task("lspkg", "ops", "fails", x=pyplugs.call_task("lspkg", "ops", "first"))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-migrated Prefect database: each new server then starts in seconds."""
    dest = tmp_path_factory.mktemp("prefect-template") / "template"
    build_template(dest)
    return dest


@dataclass
class Ran:
    """A finished `dioptra run`: its outcome and, for the printed timings, how long it took."""

    done: subprocess.CompletedProcess[str]
    wall: float
    first_task: float | None


class Laptop:
    """One user's machine: a cache folder, a PREFECT_HOME and an Experiment with local plugins."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.home = root / "prefect-home"
        self.marks = root / "marks"
        self.marks.mkdir(parents=True)
        package = root / "plugins" / "lspkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "ops.py").write_text(OPS)
        (package / "flows.py").write_text(FLOWS)
        self.template = template

    @property
    def paths(self) -> Paths:
        return Paths(self.cache / FOLDER_NAME)

    def write_stale_record(
        self, token: str, pid: int, *, server_pid: int | None = None, prefect: str = ""
    ) -> None:
        """A state file as a server an hour old would have left it; nothing answers at its
        address (port 9)."""
        record = ServerRecord(
            token=token,
            pid=pid,
            server_pid=server_pid,
            api_url="http://127.0.0.1:9/api",
            prefect=prefect or version("prefect"),
            prefect_home=str(self.home.resolve()),
            started_at=time.time() - 3600,
            idle_seconds=600,
            log=str(self.paths.log),
            ready=True,
        )
        self.paths.folder.mkdir(parents=True)
        self.paths.state.write_text(json.dumps(asdict(record)))

    def record(self) -> ServerRecord | None:
        return read_record(self.paths)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            DIOPTRA_CACHE_DIR=str(self.cache),
            DIOPTRA_PREFECT_TEMPLATE=str(self.template),
            DIOPTRA_LOCAL_SERVER="on",
            DIOPTRA_SERVER_IDLE_SECONDS="600",
            MARKS=str(self.marks),
        )
        env.update(extra)
        return env

    def experiment(self, flow: str = "flow") -> Path:
        document = {
            "apiVersion": "dioptra.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": f"shared-{flow}"},
            "spec": {
                "entryPoint": {"module": f"lspkg.flows:{flow}"},
                "plugins": {"sources": ["./plugins/"]},
            },
        }
        path = self.root / f"{flow}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def start(self, flow: str = "flow", **extra: str) -> subprocess.Popen[str]:
        """A `dioptra run` in its own session (a terminal's Ctrl-C goes to its group)."""
        return subprocess.Popen(
            [DIOPTRA, "run", str(self.experiment(flow))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**extra),
            cwd=self.root,
            start_new_session=True,
        )

    def run(self, **extra: str) -> Ran:
        began = time.time()
        process = self.start(**extra)
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        wall = time.time() - began
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        mark = self.marks / f"first-{process.pid}"
        first_task = float(mark.read_text()) - began if mark.exists() else None
        return Ran(done, wall, first_task)

    def dioptra(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DIOPTRA, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=EXIT_TIMEOUT,
            check=False,
        )

    def run_logs(self) -> str:
        return "".join(p.read_text() for p in sorted((self.cache / "logs").glob("*.log")))


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not this one) whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes() and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def clean_up(laptop: Laptop) -> None:
    """Stop the laptop's server and any stray process of its; fail if one survives."""
    record = laptop.record()
    if record is not None:
        stop_server(laptop.paths, record)
    strays = processes_mentioning(str(laptop.root))
    for pid in strays:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert wait_gone(list(strays), EXIT_TIMEOUT), f"processes left running: {strays}"
    assert record is None or not pid_alive(record.server_pid), "a Prefect server outlived a test"


@pytest.fixture
def laptop(tmp_path: Path, template: Path) -> Iterator[Callable[[str], Laptop]]:
    """Make laptops for the test; stop every server they started when it ends."""
    made: list[Laptop] = []

    def make(name: str = "laptop") -> Laptop:
        made.append(Laptop(tmp_path / name, template))
        return made[-1]

    yield make
    for each in made:
        clean_up(each)


def assert_succeeded(ran: Ran) -> None:
    assert ran.done.returncode == 0, ran.done.stdout + ran.done.stderr
    assert "Traceback" not in ran.done.stderr


# -- the first run and the next ---------------------------------------------------------------


def test_a_first_run_starts_a_server_and_records_it(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")

    assert_succeeded(machine.run())

    record = machine.record()
    assert record is not None
    assert pid_alive(record.pid) and pid_alive(record.server_pid)
    assert healthy(record.api_url)
    assert record.prefect == version("prefect")
    assert record.prefect_home == str(machine.home.resolve())
    assert Path(record.log) == machine.paths.log and machine.paths.log.is_file()


def test_a_finished_run_gives_its_lease_back_and_the_server_runs_on(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")

    assert_succeeded(machine.run())

    record = machine.record()
    assert record is not None
    assert live_leases(machine.paths, record.token) == []
    assert list(machine.paths.leases.iterdir()) == []
    assert healthy(record.api_url)


def test_a_second_run_reuses_the_same_server(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")
    first = machine.run()
    before = machine.record()

    second = machine.run()

    assert_succeeded(first)
    assert_succeeded(second)
    after = machine.record()
    assert before is not None and after is not None
    assert (after.token, after.pid, after.server_pid) == (
        before.token,
        before.pid,
        before.server_pid,
    )
    logs = machine.run_logs()
    assert logs.count("started the local Prefect server") == 1
    assert logs.count("reusing the local Prefect server") == 1
    # Timings are printed, never asserted: they move with the machine's load.
    for name, ran in (("first", first), ("second", second)):
        task = f"{ran.first_task:.2f} s" if ran.first_task is not None else "?"
        print(f"{name} run: {ran.wall:.2f} s wall, first task after {task}")


def test_two_concurrent_first_runs_start_one_server(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")

    runs = [machine.start(), machine.start()]
    outputs = [run.communicate(timeout=RUN_TIMEOUT) for run in runs]

    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stdout + stderr
    record = machine.record()
    assert record is not None
    supervisors = processes_mentioning(  # the warm runner (warm_runner.py) aside
        f"dioptra_runner.local_server\0serve\0--state-dir={machine.paths.folder}"
    )
    assert supervisors == [record.pid]
    logs = machine.run_logs()
    assert logs.count("started the local Prefect server") == 1
    assert logs.count("reusing the local Prefect server") == 1


def test_a_state_file_naming_a_dead_process_is_replaced_silently(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    gone = subprocess.Popen(["true"])
    gone.wait()
    machine.write_stale_record("crashed", gone.pid, server_pid=gone.pid)

    ran = machine.run()

    assert_succeeded(ran)
    assert ran.done.stderr == ""
    record = machine.record()
    assert record is not None and record.token != "crashed"
    assert pid_alive(record.pid) and healthy(record.api_url)


def test_an_interrupted_run_gives_its_lease_back_and_the_server_survives(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    run = machine.start("blocking")
    assert run.stdout is not None
    for line in run.stdout:
        if "BLOCKER STARTED" in line:
            break
    record = machine.record()
    assert record is not None
    assert live_leases(machine.paths, record.token) == [run.pid]

    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code = run.wait(timeout=EXIT_TIMEOUT)
    run.communicate()

    assert code == 130
    assert list(machine.paths.leases.iterdir()) == []
    assert healthy(record.api_url)


# -- the commands -----------------------------------------------------------------------------


def test_server_status_shows_the_address_pid_idle_timeout_and_log(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    record = machine.record()
    assert record is not None

    status = machine.dioptra("server", "status")

    assert status.returncode == 0, status.stderr
    assert f"local Prefect server at {record.api_url} (answering)" in status.stdout
    assert f"PID:           {record.server_pid} (supervisor {record.pid})" in status.stdout
    assert "uptime:" in status.stdout
    assert "idle timeout:  600 s" in status.stdout
    assert f"log:           {machine.paths.log}" in status.stdout


def test_server_stop_stops_it_and_status_then_says_none_runs(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    record = machine.record()
    assert record is not None

    stopped = machine.dioptra("server", "stop")
    status = machine.dioptra("server", "status")

    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"stopped the local Prefect server at {record.api_url}")
    assert not pid_alive(record.pid) and not pid_alive(record.server_pid)
    assert machine.record() is None
    assert status.returncode == 0
    assert status.stdout.startswith("no local Prefect server is running")


def test_server_stop_with_no_server_says_there_is_nothing_to_stop(
    laptop: Callable[[str], Laptop],
) -> None:
    stopped = laptop("laptop").dioptra("server", "stop")

    assert (stopped.returncode, stopped.stdout) == (
        0,
        "no local Prefect server is running: nothing to stop\n",
    )


# -- when it stops, and when it is not used ---------------------------------------------------


def test_the_idle_timeout_stops_the_server(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")

    assert_succeeded(machine.run(DIOPTRA_SERVER_IDLE_SECONDS="1"))

    # The server may be gone already: its PIDs come from the logs, not from its record.
    supervisor = re.search(
        r"local Prefect server at \S+ \(supervisor PID (\d+)", machine.run_logs()
    )
    assert supervisor is not None
    assert wait_gone([int(supervisor[1])], EXIT_TIMEOUT), machine.paths.log.read_text()
    log = machine.paths.log.read_text()
    server = re.search(r"server answering \(PID (\d+)\)", log)
    assert server is not None and not pid_alive(int(server[1]))
    assert "no run used it for 1 s; server stopped" in log
    assert machine.record() is None


def test_with_prefect_api_url_set_nothing_is_started_and_no_state_is_written(
    laptop: Callable[[str], Laptop], prefect_api_url: str
) -> None:
    machine = laptop("laptop")

    assert_succeeded(machine.run(PREFECT_API_URL=prefect_api_url))

    assert not machine.paths.folder.exists()
    assert processes_mentioning(str(machine.paths.folder)) == []


def test_the_off_switch_gives_the_run_a_server_of_its_own(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")

    assert_succeeded(machine.run(DIOPTRA_LOCAL_SERVER="off"))

    assert not machine.paths.folder.exists()
    assert processes_mentioning(str(machine.paths.folder)) == []


def test_a_server_for_another_prefect_home_is_neither_reused_nor_stopped(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    before = machine.record()
    other_home = machine.root / "other-prefect-home"

    assert_succeeded(machine.run(PREFECT_HOME=str(other_home)))

    after = machine.record()
    assert before is not None and after is not None
    assert (after.token, after.pid, after.prefect_home) == (
        before.token,
        before.pid,
        before.prefect_home,
    )
    assert pid_alive(before.server_pid) and healthy(before.api_url)
    assert "a Prefect server for this run only" in machine.run_logs()
    with sqlite3.connect(other_home / DATABASE_NAME) as db:
        assert db.execute("select count(*) from flow_run").fetchone()[0] == 1


@pytest.mark.parametrize(
    ("prefect", "why"), [("2.0.0", "another Prefect version"), (None, "not answering")]
)
def test_an_unused_server_that_cannot_serve_the_run_is_replaced(
    laptop: Callable[[str], Laptop], prefect: str | None, why: str
) -> None:
    machine = laptop("laptop")
    token = "unusable"
    # A live process standing in for its supervisor (its command line names the token).
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", token, why])
    try:
        machine.write_stale_record(token, stand_in.pid, prefect=prefect or version("prefect"))

        ran = machine.run()

        assert_succeeded(ran)
        assert stand_in.wait(timeout=EXIT_TIMEOUT) == -signal.SIGTERM
        replaced = machine.record()
        assert replaced is not None and replaced.token != token
        assert healthy(replaced.api_url)
    finally:
        stand_in.kill()
        stand_in.wait()


def test_an_unwritable_prefect_home_is_still_one_line_before_anything_runs(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    blocker = machine.root / "a-file"
    blocker.write_text("not a folder")

    ran = machine.run(PREFECT_HOME=str(blocker / "prefect"))

    assert ran.done.returncode == 2
    assert ran.done.stderr.startswith(
        f"dioptra run: cannot start the local Prefect server: {blocker / 'prefect'} is not "
        "writable (Not a directory); set PREFECT_HOME"
    )
    assert ran.done.stderr.count("\n") == 1
    assert not machine.paths.state.exists()


# -- the warm runner: later runs forked from a process with Prefect imported ------------------


def warm_runner_ready(machine: Laptop) -> dict[str, Any]:
    """Wait until the warm runner the last run left behind listens; its state."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while (state := read_state(machine.paths.folder)) is None:
        assert time.monotonic() < deadline, (machine.paths.folder / "runner.log").read_text()
        time.sleep(0.05)
    return state


def runner_log(machine: Laptop) -> str:
    return (machine.paths.folder / "runner.log").read_text()


def served_run(machine: Laptop, client: int) -> int | None:
    """The PID the warm runner forked for the `dioptra run` of PID ``client``, if it did."""
    found = re.search(rf"run \d+: PID (\d+) for client PID {client}\n", runner_log(machine))
    return int(found[1]) if found else None


def test_a_run_after_the_first_is_forked_by_the_warm_runner(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    first = machine.run()
    state = warm_runner_ready(machine)

    process = machine.start()
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)

    assert_succeeded(first)
    assert process.returncode == 0, stdout + stderr
    assert "Succeeded shared-flow: 1 task" in stdout
    run = served_run(machine, process.pid)
    assert run is not None, runner_log(machine)
    assert (machine.marks / f"first-{run}").exists(), "the first task ran in the forked run"
    assert read_state(machine.paths.folder) == {**state, "served": 1}


def test_a_warm_run_answers_as_a_cold_one_in_the_callers_streams_and_folder(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    machine.experiment("failing")

    def run_failing() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DIOPTRA, "run", "--output", "json", "failing.yaml"],  # relative to the caller
            capture_output=True,
            text=True,
            env=machine.env(),
            cwd=machine.root,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    cold = run_failing()
    warm_runner_ready(machine)
    warm = run_failing()

    assert "run 1: PID" in runner_log(machine), "the second run was forked"
    assert (cold.returncode, warm.returncode) == (1, 1), warm.stdout + warm.stderr
    outcomes = [json.loads(done.stdout) for done in (cold, warm)]
    for outcome in outcomes:
        assert outcome["phase"] == "Failed"
        assert "refusing 1" in outcome["message"]
    assert outcomes[0]["message"] == outcomes[1]["message"]
    assert cold.stderr.count("Traceback") == warm.stderr.count("Traceback")


def test_ctrl_c_stops_a_warm_run_as_it_stops_a_cold_one(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    warm_runner_ready(machine)
    process = machine.start("blocking")
    assert process.stdout is not None
    for line in process.stdout:
        if "BLOCKER STARTED" in line:
            break
    run = served_run(machine, process.pid)
    assert run is not None, runner_log(machine)

    os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the client's group only
    code = process.wait(timeout=EXIT_TIMEOUT)
    _, stderr = process.communicate()

    assert code == 130, stderr
    assert wait_gone([run], EXIT_TIMEOUT)
    assert list(machine.paths.leases.iterdir()) == []


def test_a_warm_run_whose_caller_was_killed_stops(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    warm_runner_ready(machine)
    process = machine.start("blocking")
    assert process.stdout is not None
    for line in process.stdout:
        if "BLOCKER STARTED" in line:
            break
    run = served_run(machine, process.pid)
    assert run is not None, runner_log(machine)

    process.kill()
    process.communicate()

    assert wait_gone([run], EXIT_TIMEOUT), "the forked run outlived its caller"
    assert list(machine.paths.leases.iterdir()) == []


def test_a_run_with_other_prefect_settings_runs_cold_and_the_stale_warm_runner_goes(
    laptop: Callable[[str], Laptop],
) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    stale = warm_runner_ready(machine)

    other = machine.run(PREFECT_LOGGING_LEVEL="WARNING")

    assert_succeeded(other)
    assert "stopping: the client's environment or our sources changed" in runner_log(machine)
    assert wait_gone([stale["pid"]], EXIT_TIMEOUT)
    assert "run 1: PID" not in runner_log(machine), "it ran cold"
    fresh = warm_runner_ready(machine)  # the cold run left one for its own settings
    assert fresh["pid"] != stale["pid"] and fresh["served"] == 0


def test_server_stop_stops_the_warm_runner_too(laptop: Callable[[str], Laptop]) -> None:
    machine = laptop("laptop")
    assert_succeeded(machine.run())
    state = warm_runner_ready(machine)

    stopped = machine.dioptra("server", "stop")

    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(state["pid"])
    assert read_state(machine.paths.folder) is None
