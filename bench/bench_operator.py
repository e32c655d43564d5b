"""Benchmark: a burst of Experiments against the real operator and the API emulator.

Creates N Experiments (default 1,000) at once and reports how long until every Job exists,
the p50/p99 latency from an Experiment's create to its Job appearing (seen on a watch, so
millisecond resolution), and the operator process's peak RSS (VmHWM). Targets: all Jobs in
< 60 s, peak RSS < 150 MiB.

Run: `.venv/bin/python bench/bench_operator.py [--count 1000] [--clients 8]`.
The emulator is the one the tests use (tests/support/k8s_emulator.py), whose request log is
trimmed so each request costs O(1) (TESTING-NOTES: untrimmed, 1,000 objects take ~40 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.k8s_emulator import K8sApi, running_k8s_api  # noqa: E402
from support.kubelet import OperatorProcess  # noqa: E402

NAMESPACE = "default"


def experiment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"entryPoint": {"module": "bench.flows:flow"}, "parameters": {"n": 1}},
    }


class JobWatcher:
    """Records when each Job is first seen on a watch stream (client-side monotonic time)."""

    def __init__(self, api: K8sApi) -> None:
        self.seen: dict[str, float] = {}
        self._url = f"{api.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs?watch=true"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        with urllib.request.urlopen(self._url, timeout=600) as stream:
            self.ready.set()
            for line in stream:
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                if event["type"] == "ADDED":
                    self.seen.setdefault(name, time.monotonic())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(count: int, clients: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as folder,
        running_k8s_api(Path(folder), record_requests=False) as api,
    ):
        watcher = JobWatcher(api)
        watcher.start()
        operator = OperatorProcess(api, {}, Path(folder) / "operator.log").start()
        try:
            # Readiness: the first Experiment's Job proves the watches and handlers are up.
            api.create(experiment("warmup"))
            deadline = time.monotonic() + 60
            while "warmup-g1" not in watcher.seen:
                if time.monotonic() > deadline or operator.process.poll() is not None:  # type: ignore[union-attr]
                    raise SystemExit(f"operator did not start:\n{operator.log[-2000:]}")
                time.sleep(0.05)
            rss_idle = peak_rss_mib(operator.process.pid)  # type: ignore[union-attr]

            names = [f"exp-{i:04d}" for i in range(count)]
            created: dict[str, float] = {}

            def create(name: str) -> None:
                api.create(experiment(name))
                created[name] = time.monotonic()

            pid = operator.process.pid  # type: ignore[union-attr]
            cpu_operator, cpu_here = cpu_seconds(pid), time.process_time()
            start = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(create, names))
            created_all = time.monotonic() - start
            jobs = [f"{name}-g1" for name in names]
            deadline = time.monotonic() + 600
            while not all(job in watcher.seen for job in jobs):
                if time.monotonic() > deadline:
                    missing = sum(job not in watcher.seen for job in jobs)
                    raise SystemExit(f"{missing} Jobs still missing after 600 s")
                time.sleep(0.05)
            all_jobs = max(watcher.seen[job] for job in jobs) - start
            cpu_operator = cpu_seconds(pid) - cpu_operator
            cpu_here = time.process_time() - cpu_here
            latencies = [watcher.seen[f"{n}-g1"] - created[n] for n in names]
            # Let the status writes finish, then measure the peak.
            time.sleep(2)
            return {
                "experiments": count,
                "client_threads": clients,
                "all_created_s": round(created_all, 2),
                "all_jobs_s": round(all_jobs, 2),
                "create_to_job_p50_s": round(statistics.median(latencies), 3),
                "create_to_job_p99_s": round(percentile(latencies, 0.99), 3),
                "create_to_job_max_s": round(max(latencies), 3),
                "operator_rss_idle_mib": round(rss_idle, 1),
                "operator_peak_rss_mib": round(peak_rss_mib(pid), 1),
                "operator_cpu_s": round(cpu_operator, 1),
                "emulator_and_clients_cpu_s": round(cpu_here, 1),
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 1),
            }
        finally:
            operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="Experiments to create")
    parser.add_argument("--clients", type=int, default=8, help="concurrent creating clients")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.count, args.clients)
    if args.json:
        print(json.dumps(result))
        return
    r = result
    verdict_time = "ok" if r["all_jobs_s"] < 60 else "MISSED"
    verdict_rss = "ok" if r["operator_peak_rss_mib"] < 150 else "MISSED"
    print(f"{r['experiments']} Experiments created in {r['all_created_s']} s")
    print(f"all Jobs exist after    {r['all_jobs_s']} s (target < 60 s: {verdict_time})")
    print(
        f"create -> Job latency   p50 {r['create_to_job_p50_s']} s, "
        f"p99 {r['create_to_job_p99_s']} s, max {r['create_to_job_max_s']} s"
    )
    print(
        f"CPU until all Jobs      operator {r['operator_cpu_s']} s, "
        f"emulator + clients {r['emulator_and_clients_cpu_s']} s "
        f"({r['cpus']} CPUs, load average {r['load_average_1m']})"
    )
    print(
        f"operator peak RSS       {r['operator_peak_rss_mib']} MiB "
        f"(idle {r['operator_rss_idle_mib']} MiB; target < 150 MiB: {verdict_rss})"
    )


if __name__ == "__main__":
    main()
