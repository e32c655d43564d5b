"""Benchmark: a runner container's start to its first task, in the runner image (issue 17).

The runner image (built by `make image-tier`) runs under a restricted Pod's settings with
podman: UID 65532, read-only root, capabilities dropped, and the Job's two emptyDirs (`/tmp`,
the plugin folder) as fresh host folders. The Experiment is bench_cold_start's (a local plugin
folder, two tasks; the first writes `time.time()` to a file). Per mode, the median of REPEATS
runs of:
  first task  seconds from `podman run` being spawned to the first task starting
  total       seconds until `podman run` returned
Modes:
  container   `podman run ... true`: the floor of starting a container here
  import      `python -c "import prefect"` in the image: the floor of any Prefect runner
  embedded    the default install: the runner starts its temporary Prefect server in-process
              (pre-migrated template database, started first thing)
  external    PREFECT_API_URL of a `prefect server start` already running (the chart's optional
              server), reached over the host network
  sidecar-0s  the Job's `prefect-api` native sidecar (`prefect_warmup serve`, its own /tmp)
              started together with `dioptra run --in-cluster` (no plugin sync to overlap)
  sidecar-3s  the same, the runner started 3 s after the sidecar, as after a 3 s plugin sync;
              "first task" counts from the runner's start, like the other rows
Goal (DESIGN.md, issue 17): embedded at most 1.2x external and under 3 s.

Usage: .venv/bin/python bench/bench_pod_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yaml
from bench_cold_start import EXPERIMENT, ExternalServer, free_port, write_fixture
from support.podman import RESTRICTED_FLAGS, RUNNER_IMAGE, environment, image_present

MODES = ("container", "import", "embedded", "external", "sidecar-0s", "sidecar-3s")


def run_once(mode: str, root: Path, fixture: Path, api_url: str) -> dict[str, float]:
    if mode.startswith("sidecar-"):
        return run_with_sidecar(root, fixture, float(mode.removeprefix("sidecar-")[:-1]))
    work = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    for folder in ("tmp", "plugins"):
        (work / folder).mkdir()
        (work / folder).chmod(0o777)  # as a kubelet makes an emptyDir
    volumes = [
        f"--volume={work / 'tmp'}:/tmp",
        f"--volume={work / 'plugins'}:/var/lib/dioptra/plugins",
        f"--volume={fixture}:/work:ro",
        "--env=BENCH_MARK_FILE=/tmp/mark",
    ]
    if mode == "external":
        volumes.append(f"--env=PREFECT_API_URL={api_url}")
    command = {
        "container": ["--entrypoint=true", RUNNER_IMAGE],
        "import": ["--entrypoint=/opt/venv/bin/python", RUNNER_IMAGE, "-c", "import prefect"],
    }.get(mode, [RUNNER_IMAGE, "run", "/work/experiment.yaml", "--output", "json"])
    start = time.time()
    done = subprocess.run(
        ["podman", "run", "--rm", *RESTRICTED_FLAGS, *volumes, *command],
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.time() - start
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"{mode}: podman run failed ({done.returncode}):\n{tail}")
    mark = work / "tmp" / "mark"
    first = float(mark.read_text()) - start if mark.exists() else total
    return {"first": first, "total": total}


def run_with_sidecar(root: Path, fixture: Path, sync_seconds: float) -> dict[str, float]:
    """The Job's two containers: the sidecar, then (after the sync's time) the runner."""
    work = Path(tempfile.mkdtemp(prefix=f"sidecar-{sync_seconds:g}s-", dir=root))
    for folder in ("tmp", "sidecar-tmp"):
        (work / folder).mkdir()
        (work / folder).chmod(0o777)
    port = free_port()
    name = f"bench-prefect-api-{port}"
    sidecar = subprocess.Popen(
        ["podman", "run", "--rm", f"--name={name}", *RESTRICTED_FLAGS,
         f"--volume={work / 'sidecar-tmp'}:/tmp", "--env=PREFECT_HOME=/tmp/prefect",
         "--entrypoint=/opt/venv/bin/python", RUNNER_IMAGE,
         "-m", "dioptra_runner.prefect_warmup", "serve", "--listen", f"127.0.0.1:{port}"],
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(sync_seconds)  # the plugin sync, which the sidecar's start overlaps
        experiment = yaml.safe_load(EXPERIMENT)
        experiment["metadata"].update(namespace="bench", generation=1, uid="bench")
        env = {
            "DIOPTRA_EXPERIMENT": json.dumps(experiment),
            "DIOPTRA_PLUGIN_DIR": "/var/lib/dioptra/plugins",
            "PREFECT_HOME": "/tmp/prefect",
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "DIOPTRA_PREFECT_SIDECAR": "1",
            "BENCH_MARK_FILE": "/tmp/mark",
        }
        start = time.time()
        done = subprocess.run(
            ["podman", "run", "--rm", *RESTRICTED_FLAGS, f"--volume={work / 'tmp'}:/tmp",
             f"--volume={fixture / 'plugins'}:/var/lib/dioptra/plugins:ro",
             *(f"--env={k}={v}" for k, v in env.items()),
             RUNNER_IMAGE, "run", "--in-cluster", "--output", "json"],
            env=environment(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        total = time.time() - start
    finally:
        subprocess.run(["podman", "stop", "--time=10", name], env=environment(),
                       capture_output=True, check=False)  # fmt: skip
        sidecar.wait(30)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"sidecar: the runner failed ({done.returncode}):\n{tail}")
    mark = work / "tmp" / "mark"
    first = float(mark.read_text()) - start if mark.exists() else total
    return {"first": first, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not image_present(RUNNER_IMAGE):
        raise SystemExit(f"{RUNNER_IMAGE} is not built: run make image-tier")
    root = Path(tempfile.mkdtemp(prefix="bench-pod-start-"))
    root.chmod(0o755)
    server = None
    try:
        fixture = write_fixture(root / "fixture").parent
        for path in fixture.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        server = ExternalServer(root)
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for _ in range(args.repeats):  # interleaved: load changes hit every mode alike
            for mode in MODES:
                samples[mode].append(run_once(mode, root, fixture, server.api_url))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\nrunner container start to first task, in {RUNNER_IMAGE} (medians of {args.repeats}; "
          f"load avg {load:.1f})")  # fmt: skip
    print(f"{'mode':<11} {'first task s':>13} {'total s':>8}")
    for mode, runs in samples.items():
        first = statistics.median(r["first"] for r in runs)
        total = statistics.median(r["total"] for r in runs)
        print(f"{mode:<11} {first:>13.2f} {total:>8.2f}")
    embedded = statistics.median(r["first"] for r in samples["embedded"])
    external = statistics.median(r["first"] for r in samples["external"])
    print(f"embedded / external: {embedded / external:.2f}x (goal <= 1.2x, and under 3 s)")


if __name__ == "__main__":
    main()
