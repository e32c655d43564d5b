"""Benchmark: a 50-step task graph on our runner, against the sum of its step times and
against Dioptra 1.x's task engine running the same graph.

The graph: 5 independent chains of 10 steps; each step sleeps DELAY seconds (0.1 by default)
and returns its predecessor's value + 1, so every chain ends with 10. The sum of step times
(50 x DELAY) is what a one-step-at-a-time engine needs at least; the critical path
(10 x DELAY) is what a fully parallel one needs at least.

Rows:
- ours, maxParallelTasks=5 and =1: ``flow_from_task_graph(...).run()`` on Prefect 3, against a
  ``prefect server start`` on 127.0.0.1 (a free port, stopped at the end) as a runner pointed
  at a shared server would; a 1-step run first warms the client up and is reported separately;
- Dioptra 1.x (PyPI ``dioptra-platform``): its ``task_engine`` runs the same graph written in
  its own format (``tasks`` + ``graph``), in a separate virtualenv so that its ``dioptra``
  package does not shadow ours. Create it with
  ``python3 -m venv /tmp/dpvenv && /tmp/dpvenv/bin/pip install --no-deps dioptra-platform``
  ``&& /tmp/dpvenv/bin/pip install jsonschema pyyaml structlog``; the row is skipped if absent.

Each engine runs REPEATS times; the table shows the median wall time of the run itself
(interpreter start-up excluded) and whether every step's output matches ours.

Usage: .venv/bin/python bench/bench_taskgraph.py [--delay 0.1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BRANCHES, LENGTH = 5, 10
PACKAGE = "bench_taskgraph_plugins"
PLUGIN = textwrap.dedent(
    '''
    import time
    from dioptra import pyplugs

    @pyplugs.register
    def nap(seconds: float, after: int = 0) -> int:
        """Sleep, then count one more step than the step before."""
        time.sleep(seconds)
        return after + 1
    '''
)
DIOPTRA1_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from dioptra.task_engine import task_engine, validation
    from dioptra.sdk.utilities.contexts import sys_path_dirs

    desc, plugins, repeats = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    issues = validation.validate(desc)
    times, outputs = [], {}
    for _ in range(repeats):
        context = task_engine.EngineContext(desc, {}, {}, {})
        with sys_path_dirs(dirs=(plugins,)):
            start = time.perf_counter()
            task_engine._run_steps(context)
            times.append(time.perf_counter() - start)
        outputs = {step: value["out"] for step, value in context.step_outputs.items()}
    print(json.dumps({"issues": [str(i) for i in issues], "times": times, "outputs": outputs}))
    """
)


def step_name(branch: int, position: int) -> str:
    return f"b{branch}s{position}"


def our_graph() -> dict[str, Any]:
    steps = []
    for branch in range(BRANCHES):
        for position in range(LENGTH):
            args: dict[str, Any] = {"seconds": "$delay"}
            if position:
                args["after"] = f"$steps.{step_name(branch, position - 1)}"
            steps.append(
                {"name": step_name(branch, position), "task": f"{PACKAGE}.steps.nap", "args": args}
            )
    return {"steps": steps}


def dioptra1_graph(delay: float) -> dict[str, Any]:
    graph: dict[str, Any] = {}
    for branch in range(BRANCHES):
        for position in range(LENGTH):
            kwargs: dict[str, Any] = {"seconds": "$delay"}
            if position:
                kwargs["after"] = f"${step_name(branch, position - 1)}.out"
            graph[step_name(branch, position)] = {"nap": kwargs}
    return {
        "parameters": {"delay": delay},
        "tasks": {
            "nap": {
                "plugin": f"{PACKAGE}.steps.nap",
                "inputs": [
                    {"name": "seconds", "type": "number"},
                    {"name": "after", "type": "integer", "required": False},
                ],
                "outputs": {"out": "integer"},
            }
        },
        "graph": graph,
    }


def write_plugins(root: Path) -> None:
    package = root / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text(PLUGIN)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A ``prefect server start`` on a free 127.0.0.1 port, healthy before yielding its API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    with open(home.parent / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"prefect server did not start; see {log.name}"
                        ) from None
                    time.sleep(0.3)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def run_ours(delay: float, repeats: int) -> tuple[float, dict[int, tuple[list[float], Any]]]:
    from dioptra_runner.taskgraph import flow_from_task_graph

    warm = {"name": "warm", "task": f"{PACKAGE}.steps.nap", "args": {"seconds": 0}}
    start = time.perf_counter()
    flow_from_task_graph({"steps": [warm]}).run()
    startup = time.perf_counter() - start
    rows: dict[int, tuple[list[float], Any]] = {}
    for parallel in (BRANCHES, 1):
        flow = flow_from_task_graph(our_graph(), max_parallel_tasks=parallel)
        times, outputs = [], {}
        for _ in range(repeats):
            start = time.perf_counter()
            result = flow.run({"delay": delay})
            times.append(time.perf_counter() - start)
            assert result.is_successful(), result.message
            outputs = {name: outcome.result for name, outcome in result.tasks.items()}
        rows[parallel] = (times, outputs)
    return startup, rows


def run_dioptra1(python: str, plugins: Path, delay: float, repeats: int) -> dict[str, Any] | None:
    if not Path(python).exists():
        return None
    completed = subprocess.run(
        [
            python,
            "-c",
            DIOPTRA1_DRIVER,
            json.dumps(dioptra1_graph(delay)),
            str(plugins),
            str(repeats),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        print(f"Dioptra 1.x run failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    data: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dioptra1-python", default="/tmp/dpvenv/bin/python")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-taskgraph-"))
    home = work / "prefect"
    home.mkdir()
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    plugins = work / "plugins"
    write_plugins(plugins)
    sys.path.insert(0, str(plugins))

    steps = BRANCHES * LENGTH
    total, critical = steps * args.delay, LENGTH * args.delay
    with prefect_server(home) as url:
        os.environ["PREFECT_API_URL"] = url
        startup, ours = run_ours(args.delay, args.repeats)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    theirs = run_dioptra1(args.dioptra1_python, plugins, args.delay, args.repeats)

    print(f"\n{steps} steps = {BRANCHES} chains x {LENGTH}, {args.delay:g} s each; ")
    print(
        f"sum of step times {total:.2f} s, critical path {critical:.2f} s; median of {args.repeats}"
    )
    print(f"(first 1-step run, client warm-up, not included below: {startup:.2f} s)\n")
    print(f"{'engine':<34} {'wall s':>7} {'sum/wall':>9} {'overhead/step ms':>17}  outputs")
    reference = ours[BRANCHES][1]
    rows: list[tuple[str, list[float], Any]] = [
        (f"ours, maxParallelTasks={BRANCHES}", *ours[BRANCHES]),
        ("ours, maxParallelTasks=1", *ours[1]),
    ]
    if theirs is not None:
        rows.append(("Dioptra 1.x task_engine (serial)", theirs["times"], theirs["outputs"]))
    for label, times, outputs in rows:
        wall = statistics.median(times)
        floor = critical if label.endswith(f"={BRANCHES}") else total
        overhead = (wall - floor) / steps * 1000
        same = "same" if outputs == reference else "DIFFERENT"
        print(f"{label:<34} {wall:>7.2f} {total / wall:>9.2f} {overhead:>17.1f}  {same}")
    if theirs is None:
        print("Dioptra 1.x: skipped (no virtualenv at --dioptra1-python)")
    elif theirs["issues"]:
        print(f"Dioptra 1.x validation issues: {theirs['issues']}")


if __name__ == "__main__":
    main()
