"""Benchmark: cold start of `dioptra run` to its first task, in each Prefect mode (issue 5).

Each run is a new process, as in a Job's pod: `dioptra run experiment.yaml` on a tiny
Experiment (module entry point in a local plugin folder, two tasks). The first task writes
`time.time()` to a file; the table shows, per mode, the median of REPEATS runs of:
  first task  seconds from spawning the process to the first task starting (target < 3 s)
  total       seconds until the process exited
  cpu         CPU seconds of the process and the children it reaped (the temporary server)
Modes (see docs/prefect-startup.md):
  import-prefect  `python -c "import prefect"`, the floor any Prefect runner pays
  a-fresh         no PREFECT_API_URL, empty PREFECT_HOME: Prefect migrates a new database
  b-template      no PREFECT_API_URL, PREFECT_HOME holding the pre-migrated template database
  c-external      PREFECT_API_URL of a `prefect server start` already running (the chart's server)
  d-thread        b-template plus quiet settings, Prefect's own SubprocessASGIServer().start()
                  called in a background thread first thing (the runner imports the server)
  d-warmup        b-template plus dioptra_runner.prefect_warmup: the server starts first thing,
                  with quiet settings, overlapping the runner's own start
Each mode gets a fresh PREFECT_HOME per run. The machine's load is printed: on a shared
2-core machine, wall times move with it; CPU seconds much less.

With --shared, a second table (issue 17): on a fresh laptop (cache folder and templated
PREFECT_HOME), a first and a second `dioptra run` of this Experiment (first task, wall) and of
examples/minimal.yaml (wall: it has no task), with the local Prefect server kept between runs
(the laptop default) beside DIOPTRA_LOCAL_SERVER=off (a server per run).

Usage: .venv/bin/python bench/bench_cold_start.py [--repeats 3] [--modes a-fresh,d-warmup]
       [--shared]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
MODES = ("import-prefect", "a-fresh", "b-template", "c-external", "d-thread", "d-warmup")

EXPERIMENT = """\
apiVersion: dioptra.dev/v1alpha1
kind: Experiment
metadata:
  name: cold-start
spec:
  entryPoint:
    module: coldstart.flows:flow
  parameters:
    n: 3
  plugins:
    sources:
      - ./plugins/
"""

FLOW = """\
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Cold start") as flow:
    n = Parameter("n")
    first = pyplugs.call_task("coldstart", "ops", "mark_start", n=n)
    pyplugs.call_task("coldstart", "ops", "double", value=first)
"""

OPS = """\
import os
import time

from dioptra import pyplugs


@pyplugs.register
def mark_start(n: int) -> int:
    with open(os.environ["BENCH_MARK_FILE"], "w") as out:
        out.write(repr(time.time()))
    return n


@pyplugs.register
def double(value: int) -> int:
    return 2 * value
"""

# What run_command will do once the lead integrates prefect_warmup: warm up first thing,
# wait for the server just before the flow runs. Here the wait wraps Flow.run.
WARMUP_LAUNCHER = """\
import sys
from dioptra_runner.prefect_warmup import start_background_warmup
warmup = start_background_warmup()
import dioptra.flow
_run = dioptra.flow.Flow.run
def run(self, *args, **kwargs):
    warmup.wait()
    return _run(self, *args, **kwargs)
dioptra.flow.Flow.run = run
from dioptra_runner.cli import main
main(sys.argv[1:])
"""

# The alternative to prefect_warmup's stdlib spawn: Prefect's own launcher in a thread.
THREAD_LAUNCHER = """\
import os, sys, threading
from dioptra_runner.prefect_warmup import prepare_prefect_home, quiet_server_settings
os.environ.update(quiet_server_settings(prepare_prefect_home()))
def start():
    from prefect.server.api.server import SubprocessASGIServer
    SubprocessASGIServer().start()
thread = threading.Thread(target=start, daemon=True)
thread.start()
# Without this join, the flow's own get_client() sees the half-started singleton
# (running=True, no process yet) and fails: Prefect's launcher is not thread-safe.
import dioptra.flow
_run = dioptra.flow.Flow.run
def run(self, *args, **kwargs):
    thread.join()
    return _run(self, *args, **kwargs)
dioptra.flow.Flow.run = run
from dioptra_runner.cli import main
main(sys.argv[1:])
"""


def write_fixture(root: Path) -> Path:
    """The Experiment file and its plugin folder; returns the file's path."""
    package = root / "plugins" / "coldstart"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "flows.py").write_text(FLOW)
    (package / "ops.py").write_text(OPS)
    path = root / "experiment.yaml"
    path.write_text(EXPERIMENT)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(extra)
    return env


class ExternalServer:
    """`prefect server start` in its own PREFECT_HOME, as the chart's server would be."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        home = root / "server-home"
        env = clean_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
             str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the external Prefect server did not start in 180 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def timed(command: list[str], env: dict[str, str], mark: Path | None) -> dict[str, float]:
    """Run one process; seconds to its first task, to its exit, and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    total = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command[:3])} failed ({done.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first = float(mark.read_text()) - start if mark is not None else total
    return {"first": first, "total": total, "cpu": cpu}


def run_mode(
    mode: str, root: Path, experiment: Path, template: Path, api_url: str | None
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    home = work / "prefect-home"
    mark = work / "mark"
    env = clean_env(
        PREFECT_HOME=str(home),
        DIOPTRA_CACHE_DIR=str(work / "cache"),
        BENCH_MARK_FILE=str(mark),
        DIOPTRA_PREFECT_TEMPLATE=str(template),
    )
    run_args = ["run", str(experiment), "--output", "json"]
    if mode == "import-prefect":
        return timed([sys.executable, "-c", "import prefect"], env, None)
    if mode == "b-template":
        home.mkdir()
        shutil.copyfile(template / "prefect.db", home / "prefect.db")
    if mode == "c-external":
        assert api_url is not None
        env["PREFECT_API_URL"] = api_url
    if mode == "d-thread":
        return timed([sys.executable, "-c", THREAD_LAUNCHER, *run_args], env, mark)
    if mode == "d-warmup":
        return timed([sys.executable, "-c", WARMUP_LAUNCHER, *run_args], env, mark)
    return timed([str(BIN / "dioptra"), *run_args], env, mark)


MINIMAL = Path(__file__).resolve().parent.parent / "examples" / "minimal.yaml"
# (DIOPTRA_LOCAL_SERVER, DIOPTRA_WARM_RUNNER) of each column.
SHARED_CONFIGS = {"warm": ("on", "on"), "shared": ("on", "off"), "per-run": ("off", "off")}


def warm_runner_ready(cache: Path, timeout: float = 120.0) -> None:
    """Wait until the warm runner a first run left behind listens (it imports for ~2 s)."""
    from dioptra_runner.warm_runner import read_state

    deadline = time.monotonic() + timeout
    while read_state(cache / "prefect-server") is None and time.monotonic() < deadline:
        time.sleep(0.05)


def shared_server_runs(
    root: Path, experiment: Path, template: Path, switches: tuple[str, str]
) -> dict[str, float]:
    """One fresh laptop: first and second run of each Experiment; the server stopped after."""
    switch, warm = switches
    work = Path(tempfile.mkdtemp(prefix=f"shared-{switch}-{warm}-", dir=root))
    mark = work / "mark"
    env = clean_env(
        PREFECT_HOME=str(work / "prefect-home"),
        DIOPTRA_CACHE_DIR=str(work / "cache"),
        BENCH_MARK_FILE=str(mark),
        DIOPTRA_PREFECT_TEMPLATE=str(template),
        DIOPTRA_LOCAL_SERVER=switch,
        DIOPTRA_WARM_RUNNER=warm,
    )
    dioptra = str(BIN / "dioptra")
    sample: dict[str, float] = {}
    try:
        for run in ("1st", "2nd"):
            if warm == "on" and run == "2nd":
                warm_runner_ready(work / "cache")
            timing = timed([dioptra, "run", str(experiment), "--output", "json"], env, mark)
            sample[f"{run} first task"] = timing["first"]
            sample[f"{run} wall"] = timing["total"]
        for run in ("1st", "2nd"):
            timing = timed([dioptra, "run", str(MINIMAL), "--output", "json"], env, None)
            sample[f"{run} minimal wall"] = timing["total"]
    finally:
        subprocess.run([dioptra, "server", "stop"], env=env, capture_output=True, check=False)
    return sample


def print_shared_table(samples: dict[str, list[dict[str, float]]]) -> None:
    load = os.getloadavg()[0]
    print(f"\nshared local Prefect server vs a server per run (medians, seconds; load avg "
          f"{load:.1f}; each sample a fresh laptop)")  # fmt: skip
    keys = list(next(iter(samples.values()))[0])
    print(f"{'':<20}" + "".join(f"{config:>10}" for config in samples))
    for key in keys:
        cells = "".join(
            f"{statistics.median(s[key] for s in runs):>10.2f}" for runs in samples.values()
        )
        print(f"{key:<20}{cells}")
    print("(first task: from spawning `dioptra run` to its first task; minimal.yaml has none)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--shared", action="store_true", help="also: the local server kept between runs"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")

    root = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    server: ExternalServer | None = None
    try:
        experiment = write_fixture(root / "fixture")
        template = root / "template"
        from dioptra_runner.prefect_warmup import build_template

        build_template(template)
        if "c-external" in modes:
            server = ExternalServer(root)
        api_url = server.api_url if server else None
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(args.repeats):  # interleaved: load changes hit every mode alike
            for mode in modes:
                samples[mode].append(run_mode(mode, root, experiment, template, api_url))
        print_table(samples)
        if args.shared:
            shared: dict[str, list[dict[str, float]]] = {c: [] for c in SHARED_CONFIGS}
            for _ in range(args.repeats):
                for config, switch in SHARED_CONFIGS.items():
                    shared[config].append(shared_server_runs(root, experiment, template, switch))
            print_shared_table(shared)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def print_table(samples: dict[str, list[dict[str, float]]]) -> None:
    median: Callable[[str, str], float] = lambda mode, key: statistics.median(  # noqa: E731
        s[key] for s in samples[mode]
    )
    load = os.getloadavg()[0]
    print(f"\ncold start of `dioptra run` to its first task (medians; load avg {load:.1f}, "
          f"{os.cpu_count()} CPUs)")  # fmt: skip
    print(f"{'mode':<16} {'runs':>4} {'first task s':>13} {'total s':>8} {'cpu s':>6}  target")
    for mode, runs in samples.items():
        first = median(mode, "first")
        target = "" if mode == "import-prefect" else ("ok" if first < 3 else "> 3 s")
        print(
            f"{mode:<16} {len(runs):>4} {first:>13.2f} {median(mode, 'total'):>8.2f} "
            f"{median(mode, 'cpu'):>6.2f}  {target}"
        )
    print("(import-prefect: 'first task' is the whole `python -c \"import prefect\"`)")


if __name__ == "__main__":
    main()
