"""Benchmark: the epsilon sweep (examples/epsilon-sweep.yaml, 5 points) with and without
``spec.cache: true``, and the same cached sweep again with a warm artifact store.

Each row is one ``dioptra run`` (a new process, as a user runs it; the points one after the
other) of the example with its plugin source removed (the runner's installed
``dioptra_builtins`` serve it), against one ``prefect server start`` on 127.0.0.1 shared by
the rows so that no row pays a server start. Rows:

- no cache: nothing is stored, every task of every point runs (30 tasks);
- cache, cold store: every output is stored in a fresh local store; the points after the first
  reuse the dataset, the classifier and its clean accuracy (the classifier is trained once);
- cache, warm store: the same sweep again on that store: every task is Cached.

Columns: wall time of the process (median of REPEATS; the cold row gets a fresh store each
time), tasks run, tasks cached (from ``--output json``: the points' ``tasksCached``).

What to expect: the example's tasks are cheap (the digits set, a logistic regression on 1,347
samples, FGSM: about a second of compute in all per point), so each process spends most of its
~12 s importing Prefect, scikit-learn and ART and running five Prefect flow runs; the rows
differ by the tasks' own time, which the "tasks run" column shows is what caching removes.

Usage: .venv/bin/python bench/bench_cache.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_taskgraph import prefect_server  # the benches' one Prefect server

ROOT = Path(__file__).resolve().parent.parent
DIOPTRA = str(Path(sys.executable).with_name("dioptra"))


def sweep_file(folder: Path, *, cache: bool) -> Path:
    document = yaml.safe_load((ROOT / "examples" / "epsilon-sweep.yaml").read_text())
    document["spec"].pop("plugins", None)  # the installed dioptra_builtins
    if cache:
        document["spec"]["cache"] = True
    path = folder / ("cached.yaml" if cache else "plain.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run(path: Path, cache_dir: Path, api_url: str) -> tuple[float, int, int]:
    """(wall seconds, tasks run, tasks cached) of one ``dioptra run``."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "DIOPTRA_LOCAL_SERVER": "off"}
    started = time.perf_counter()
    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(cache_dir), "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dioptra run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    points = document["points"]
    cached = sum(point.get("tasksCached", 0) for point in points)
    total = 6 * len(points)  # the example's six steps per point
    return wall, total - cached, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    rows: list[tuple[str, list[float], int, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as temp:
        folder = Path(temp)
        plain, cached = sweep_file(folder, cache=False), sweep_file(folder, cache=True)
        with prefect_server(folder / "prefect") as api_url:
            run(plain, folder / "warm-up", api_url)  # the server's first flow runs, imports
            measured: dict[str, list[tuple[float, int, int]]] = {"plain": [], "cold": []}
            warm: list[tuple[float, int, int]] = []
            for repeat in range(options.repeats):
                measured["plain"].append(run(plain, folder / f"plain-{repeat}", api_url))
                store = folder / f"cached-{repeat}"
                measured["cold"].append(run(cached, store, api_url))
                warm.append(run(cached, store, api_url))
        for label, samples in (
            ("no cache", measured["plain"]),
            ("cache, cold store", measured["cold"]),
            ("cache, warm store", warm),
        ):
            rows.append((label, [s[0] for s in samples], samples[-1][1], samples[-1][2]))
    load = os.getloadavg()[0]
    print(f"epsilon sweep, 5 points x 6 tasks, {options.repeats} repeats (load {load:.1f})")
    print(f"{'run':<20} {'wall s (median)':>16} {'min..max':>14} {'tasks run':>10} {'cached':>7}")
    for label, walls, ran, hit in rows:
        spread = f"{min(walls):.2f}..{max(walls):.2f}"
        print(f"{label:<20} {statistics.median(walls):>16.2f} {spread:>14} {ran:>10} {hit:>7}")


if __name__ == "__main__":
    main()
