"""Benchmark: a burst of Experiments on the real control plane, ours against a minimal operator.

Starts the test suite's control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, built by `make tools`), applies the CRD and the chart's RBAC, and for each
operator in turn (in a namespace of its own, authenticated as the chart's operator
ServiceAccount) creates N Experiments (default 1,000) at once from 8 client threads. It reports
how long until every Job exists, the p50/p99 latency from an Experiment's create to its Job
appearing (seen on a watch, client-side monotonic time), the operator's peak RSS (VmHWM) and
CPU seconds. The yardstick is `bench/minimal_operator.py`: one Job with `kopf.adopt` and one
status patch per object. Goals: our burst time within 1.3x of the minimal one's, p99 under 1 s,
peak RSS under 120 MiB.

By default the Experiments are created suspended, so the Job controller creates no Pods and the
operators are measured rather than the scheduler; `--pods` lets the Pods be created (they stay
unscheduled: no node is registered).

Run: `.venv/bin/python bench/bench_operator.py [--count 1000] [--clients 8] [--repeats 1] [--pods]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cluster import Cluster, install_chart_rbac, install_crd, new_namespace  # noqa: E402
from support.controlplane import ControlPlane, start_control_plane  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"


def experiment(name: str, suspend: bool) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "entryPoint": {"module": "bench.flows:flow"},
            "parameters": {"n": 1},
            "suspend": suspend,
        },
    }


class JobWatcher:
    """Records when each Job of a namespace is first seen on a watch stream."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._version = plane.request("GET", self.path)["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> JobWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.plane.watch(
                self.path, resource_version=self._version, timeout_seconds=5, stop=self._stop.is_set
            ):
                job = event["object"]
                self._version = job["metadata"]["resourceVersion"]
                if event["type"] == "ADDED":
                    self.seen.setdefault(job["metadata"]["name"], time.monotonic())


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


COMMANDS = {
    "dioptra-operator": lambda ns: [
        str(VENV_BIN / "dioptra-operator"),
        "--standalone",
        f"--namespace={ns}",
    ],
    "minimal kopf": lambda ns: [
        str(VENV_BIN / "kopf"),
        "run",
        "--standalone",
        f"--namespace={ns}",
        str(REPO / "bench" / "minimal_operator.py"),
    ],
}


def wait_for(
    jobs: list[str],
    watcher: JobWatcher,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not all(job in watcher.seen for job in jobs):
        if process.poll() is not None:
            raise SystemExit(f"the operator exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            missing = sum(job not in watcher.seen for job in jobs)
            raise SystemExit(f"{missing} Jobs still missing after {timeout:.0f} s")
        time.sleep(0.02)


def run_one(
    plane: ControlPlane,
    label: str,
    namespace: str,
    folder: Path,
    count: int,
    clients: int,
    suspend: bool,
) -> dict[str, Any]:
    new_namespace(plane, namespace, labels={})
    cluster = Cluster(plane, namespace, folder / namespace)
    cluster.wait_for("serviceaccounts", "default", bool)
    rbac = install_chart_rbac(cluster)
    kubeconfig = rbac.operator_kubeconfig(folder / f"{namespace}.kubeconfig")
    watcher = JobWatcher(plane, namespace).start()
    log = folder / f"{namespace}.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "DIOPTRA_METRICS_PORT": "0",
        "POD_NAMESPACE": namespace,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            COMMANDS[label](namespace), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # Readiness: the first Experiment's Job proves the watches and handlers are up.
        cluster.create(experiment("warmup", suspend))
        wait_for(["warmup-g1"], watcher, process, log, 60)
        rss_idle = peak_rss_mib(process.pid)
        names = [f"exp-{i:04d}" for i in range(count)]
        created: dict[str, float] = {}

        def create(name: str) -> None:
            cluster.create(experiment(name, suspend))
            created[name] = time.monotonic()

        cpu_before = cpu_seconds(process.pid)
        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(create, names))
        created_all = time.monotonic() - start
        jobs = [f"{name}-g1" for name in names]
        wait_for(jobs, watcher, process, log, 900)
        all_jobs = max(watcher.seen[job] for job in jobs) - start
        cpu = cpu_seconds(process.pid) - cpu_before
        latencies = [watcher.seen[f"{n}-g1"] - created[n] for n in names]
        # The status writes trail the Jobs: let them finish before reading the peak.
        time.sleep(3)
        return {
            "operator": label,
            "experiments": count,
            "all_created_s": round(created_all, 2),
            "all_jobs_s": round(all_jobs, 2),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(percentile(latencies, 0.99), 3),
            "max_s": round(max(latencies), 3),
            "rss_idle_mib": round(rss_idle, 1),
            "rss_peak_mib": round(peak_rss_mib(process.pid), 1),
            "cpu_s": round(cpu, 1),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
    finally:
        process.terminate()
        process.wait(20)
        watcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="Experiments per operator")
    parser.add_argument("--clients", type=int, default=8, help="concurrent creating clients")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each operator")
    parser.add_argument("--pods", action="store_true", help="unsuspended: Pods get created")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as name:
        folder = Path(name)
        plane = start_control_plane(folder / "controlplane")
        try:
            install_crd(plane)
            print(f"control plane ready in {plane.started_in:.1f} s", file=sys.stderr)
            results = []
            for repeat in range(args.repeats):
                for index, label in enumerate(COMMANDS):
                    namespace = f"bench-{repeat}-{index}"
                    results.append(
                        run_one(
                            plane,
                            label,
                            namespace,
                            folder,
                            args.count,
                            args.clients,
                            suspend=not args.pods,
                        )
                    )
                    print(json.dumps(results[-1]), file=sys.stderr)
        finally:
            plane.stop()
    if args.json:
        for result in results:
            print(json.dumps(result))
        return
    header = ("operator", "all Jobs s", "p50 s", "p99 s", "max s", "peak RSS MiB", "CPU s", "load")
    print(
        f"{args.count} Experiments at once, {args.clients} clients, "
        f"{'Pods created' if args.pods else 'suspended (no Pods)'}, {os.cpu_count()} CPUs"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(
            f"| {r['operator']} | {r['all_jobs_s']} | {r['p50_s']} | {r['p99_s']} | "
            f"{r['max_s']} | {r['rss_peak_mib']} | {r['cpu_s']} | {r['load_average_1m']} |"
        )
    ours = [r["all_jobs_s"] for r in results if r["operator"] == "dioptra-operator"]
    minimal = [r["all_jobs_s"] for r in results if r["operator"] == "minimal kopf"]
    ratio = statistics.median(ours) / statistics.median(minimal)
    p99 = max(r["p99_s"] for r in results if r["operator"] == "dioptra-operator")
    rss = max(r["rss_peak_mib"] for r in results if r["operator"] == "dioptra-operator")
    print(
        f"burst time ratio ours/minimal: {ratio:.2f} (goal <= 1.3); "
        f"our p99 {p99} s (goal < 1 s); our peak RSS {rss} MiB (goal < 120 MiB)"
    )


if __name__ == "__main__":
    main()
