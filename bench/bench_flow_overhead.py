"""Benchmark: per-task overhead of `dioptra.flow` against a bare Prefect 3 flow (issue 3).

Both run the same 200 no-op functions with the same dependency shape, in one process,
against one `prefect server start` (temp PREFECT_HOME, 127.0.0.1, free port):
  chain    task i takes task i-1's output (200 sequential tasks)
  fan-out  one root task, 199 tasks that each take its output (run in parallel)
The bare flow is what a Prefect user would write: one `@task` (NO_CACHE, no result
persistence) submitted to a `ThreadPoolTaskRunner`, futures passed as arguments, `wait()`.
The dioptra flow is `with Flow(...)` + `pyplugs.call_task` on a registered plugin, run with
`Flow.run` (which adds per-task state tracking for the progress view and status).
Each engine runs once to warm up, then REPEATS times interleaved; the table shows medians
and dioptra / bare (target <= 1.1). Between runs the bench waits until the server has
recorded every task run of the previous one: with SQLite, a server still writing the last
run's events answers 503 ("database is locked") and Prefect's client backs off 2, 4, 8 s,
which would measure the server's backlog instead of the engine. Requests that were retried
anyway during timed runs are counted in the table.
It then times a new process (the same server) from spawn to its first task starting, for
each engine: interpreter start, imports, flow definition and flow-run creation included.

Usage: .venv/bin/python bench/bench_flow_overhead.py [--repeats 5] [--tasks 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent

PLUGIN = """\
import os
import time

from dioptra import pyplugs


@pyplugs.register
def noop(x: object = None) -> int:
    mark = os.environ.get("BENCH_MARK_FILE")
    if mark and not os.path.exists(mark):
        with open(mark, "w") as out:
            out.write(repr(time.time()))
    return 1
"""

# A new process running one chain of N tasks with the given engine; the first task marks time.
FIRST_TASK_CHILD = """\
import sys
sys.path.insert(0, sys.argv[2])
import bench_flows
bench_flows.ENGINES[sys.argv[1]]("chain", int(sys.argv[3]))
"""

FLOWS = '''\
"""The two engines under test, importable by the parent and by child processes."""
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from dioptra import pyplugs
from dioptra.flow import Flow
import benchnoop.ops as ops


@task(cache_policy=NO_CACHE, persist_result=False)
def noop(x: object = None) -> int:
    return ops.noop(x)


def bare(shape: str, n: int) -> str:
    @flow(name=f"bare-{shape}", task_runner=ThreadPoolTaskRunner(), persist_result=False)
    def run() -> None:
        first = noop.submit()
        futures = [first]
        for _ in range(n - 1):
            futures.append(noop.submit(futures[-1] if shape == "chain" else first))
        wait(futures)
        assert all(f.state.is_completed() for f in futures)

    state = run(return_state=True)
    assert state.is_completed(), state
    return str(state.state_details.flow_run_id)


def dioptra(shape: str, n: int) -> str:
    with Flow(f"dioptra-{shape}") as graph:
        first = pyplugs.call_task("benchnoop", "ops", "noop")
        previous = first
        for _ in range(n - 1):
            previous = pyplugs.call_task(
                "benchnoop", "ops", "noop", x=previous if shape == "chain" else first
            )
    result = graph.run({})
    assert result.is_successful(), result.message
    return str(result.flow_run_id)


ENGINES = {"bare": bare, "dioptra": dioptra}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(root / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return process, api_url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("prefect server start did not answer within 180 s")


def write_plugins(root: Path) -> Path:
    package = root / "plugins" / "benchnoop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text(PLUGIN)
    (root / "plugins" / "bench_flows.py").write_text(FLOWS)
    return root / "plugins"


def first_task_seconds(engine: str, plugins: Path, env: dict[str, str], n: int) -> float:
    mark = Path(tempfile.mktemp(prefix="mark-"))
    start = time.time()
    subprocess.run(
        [sys.executable, "-c", FIRST_TASK_CHILD, engine, str(plugins), str(n)],
        env={**env, "BENCH_MARK_FILE": str(mark)},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = float(mark.read_text()) - start
    mark.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-flow-overhead-"))
    server, api_url = start_server(root)
    try:
        plugins = write_plugins(root)
        # Before Prefect is imported: its settings are read once, at import.
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = str(root / "client-home")
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
        os.environ["PYTHONPATH"] = os.pathsep.join([str(plugins), *sys.path[1:]])
        sys.path.insert(0, str(plugins))
        import bench_flows

        engines: dict[str, Callable[[str, int], str]] = bench_flows.ENGINES
        retries = RetryCounter()
        times: dict[tuple[str, str], list[float]] = {}
        retried: dict[tuple[str, str], int] = {}
        for shape in ("chain", "fan-out"):
            for engine in engines.values():
                settle(engine(shape, args.tasks), args.tasks)  # warm-up
            for _ in range(args.repeats):
                for name, engine in engines.items():
                    retries.count = 0
                    start = time.perf_counter()
                    flow_run_id = engine(shape, args.tasks)
                    times.setdefault((shape, name), []).append(time.perf_counter() - start)
                    retried[(shape, name)] = retried.get((shape, name), 0) + retries.count
                    settle(flow_run_id, args.tasks)

        child_env = dict(os.environ)
        firsts: dict[str, list[float]] = {"bare": [], "dioptra": []}
        for _ in range(3):
            for name in firsts:
                firsts[name].append(first_task_seconds(name, plugins, child_env, 5))
        _drain_prefect()
        print_tables(times, retried, firsts, args.tasks, args.repeats)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


class RetryCounter(logging.Handler):
    """Counts requests Prefect's client retried (its debug log says so) while installed."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0
        client_logger = logging.getLogger("prefect.client")
        client_logger.addHandler(self)
        client_logger.setLevel(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        if "retryable" in record.getMessage():
            self.count += 1


def settle(flow_run_id: str, tasks: int, timeout: float = 60) -> None:
    """Wait until the server has recorded every task run of ``flow_run_id`` in a final state."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _drain_prefect()
    only = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            # The API returns at most 200 runs a page; for bigger flows, the first 200 will do.
            runs = client.read_task_runs(flow_run_filter=only, limit=min(tasks, 200))
            done = all(r.state and r.state.is_final() for r in runs)
            if len(runs) >= min(tasks, 200) and done:
                return
            time.sleep(0.25)


def _drain_prefect() -> None:
    """Flush Prefect's event and log workers while the server still answers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=30)


def print_tables(
    times: dict[tuple[str, str], list[float]],
    retried: dict[tuple[str, str], int],
    firsts: dict[str, list[float]],
    tasks: int,
    repeats: int,
) -> None:
    load = os.getloadavg()[0]
    print(f"\nper-task overhead, {tasks} no-op tasks per flow run, median of {repeats} "
          f"(load avg {load:.1f}, {os.cpu_count()} CPUs)")  # fmt: skip
    header = f"{'shape':<8} {'bare s':>7} {'dioptra s':>10} {'bare ms/task':>13} "
    print(header + f"{'dioptra ms/task':>16} {'ratio':>6} {'503 retries b/d':>16}  target <= 1.1")
    for shape in ("chain", "fan-out"):
        bare = statistics.median(times[(shape, "bare")])
        ours = statistics.median(times[(shape, "dioptra")])
        ratio = ours / bare
        print(
            f"{shape:<8} {bare:>7.2f} {ours:>10.2f} {1000 * bare / tasks:>13.1f} "
            f"{1000 * ours / tasks:>16.1f} {ratio:>6.2f} "
            f"{retried[(shape, 'bare')]:>8}/{retried[(shape, 'dioptra')]:<7}  "
            f"{'ok' if ratio <= 1.1 else 'over'}"
        )
    print("\nnew process to first task (same server, median of 3)")
    for name, values in firsts.items():
        print(f"{name:<8} {statistics.median(values):>6.2f} s")


if __name__ == "__main__":
    main()
