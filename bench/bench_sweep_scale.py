"""Benchmark: a 1,000-point sweep on the real control plane, one Indexed Job vs one Job per point.

Starts the test suite's control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, built by `make tools`), applies the CRD and the chart's RBAC, and for each
design in turn (in a namespace of its own, the operator authenticated as the chart's operator
ServiceAccount) applies one Experiment whose `spec.sweep` has N points (default 1,000, a grid
over one parameter of a trivial flow) with `maxConcurrent: N`, so that neither design paces the
points and both create every point at once. It reports:

- **points' Jobs**: seconds from the create of the Experiment until every Job the design needs
  exists (the one Indexed Job; or the N point Jobs), seen on a watch, client-side monotonic
  time;
- **all points created**: seconds from the create until a Pod exists for every point (the Job
  controller created them; seen on a watch). No kubelet is registered, so the Pods stay
  unscheduled: nothing runs, the runner is not involved, and the numbers are the operator's,
  the API server's and the Job controller's work only;
- **API objects** the operator created: Jobs and Events (the kinds it creates), counted in the
  namespace once the Experiment's status stopped changing, and its status writes (the
  Experiment's MODIFIED events on a watch);
- the operator's peak RSS (VmHWM) and CPU seconds until then.

"one Job per point" is the design this tree replaced, run as it was: the operator's and the API
package's sources at commit 5775854 (the last commit with it), exported with `git show` into a
temp folder and run with that folder first on PYTHONPATH (same kopf, same client, same chart
RBAC, same control plane). "Indexed Job" is this tree's operator (`dioptra-operator`).

Run: `.venv/bin/python bench/bench_sweep_scale.py [--points 1000] [--timeout 900]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cluster import (  # noqa: E402
    Cluster,
    install_chart_rbac,
    install_crd,
    new_namespace,
    wait_for_crd,
)
from support.controlplane import ApiError, ControlPlane, start_control_plane  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
# The last commit whose operator ran one Job per sweep point.
ONE_JOB_PER_POINT = "577585484705043c713432ce74106a4d9fc3d010"
EXPORTED = ("operator/dioptra_operator", "crds")


def sweep_experiment(name: str, points: int) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "entryPoint": {"module": "bench.flows:flow"},
            "parameters": {"n": 1},
            "sweep": {"grid": {"x": list(range(points))}, "maxConcurrent": points},
        },
    }


def export_old_design(folder: Path) -> Path:
    """The one-Job-per-point sources (operator + API package + CRD) at ONE_JOB_PER_POINT."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", ONE_JOB_PER_POINT, *EXPORTED],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for path in listed:
        content = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{ONE_JOB_PER_POINT}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return folder


class Counter:
    """Watches one kind in a namespace: when each object was first seen, and MODIFIED counts."""

    def __init__(self, plane: ControlPlane, path: str, selector: str = "") -> None:
        self.plane = plane
        self.path = path
        self.selector = selector
        self.seen: dict[str, float] = {}
        self.modified = 0
        self.last_change = time.monotonic()
        self._stop = threading.Event()
        self._version = _list_version(plane, path)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Counter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        params = {"labelSelector": self.selector} if self.selector else {}
        while not self._stop.is_set():
            for event in self.plane.watch(
                self.path,
                resource_version=self._version,
                timeout_seconds=5,
                stop=self._stop.is_set,
                **params,
            ):
                obj = event["object"]
                self._version = obj["metadata"]["resourceVersion"]
                if event["type"] == "ADDED":
                    self.seen.setdefault(obj["metadata"]["name"], time.monotonic())
                elif event["type"] == "MODIFIED":
                    self.modified += 1
                    self.last_change = time.monotonic()


def _list_version(plane: ControlPlane, path: str) -> str:
    """The collection's resourceVersion; a new CRD's storage answers 429 for a few seconds."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return str(plane.request("GET", path)["metadata"]["resourceVersion"])
        except ApiError as error:
            if error.status != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(condition: Any, process: subprocess.Popen[bytes], log: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise SystemExit(f"the operator exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_one(
    plane: ControlPlane, label: str, namespace: str, folder: Path, points: int, timeout: float
) -> dict[str, Any]:
    new_namespace(plane, namespace, labels={})
    cluster = Cluster(plane, namespace, folder / namespace)
    cluster.wait_for("serviceaccounts", "default", bool)
    rbac = install_chart_rbac(cluster)
    kubeconfig = rbac.operator_kubeconfig(folder / f"{namespace}.kubeconfig")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "DIOPTRA_METRICS_PORT": "0",
        "POD_NAMESPACE": namespace,
    }
    command = [str(VENV_BIN / "dioptra-operator"), "--standalone", f"--namespace={namespace}"]
    if label == "one Job per point":
        old = export_old_design(folder / "old-design")
        env["PYTHONPATH"] = f"{old / 'operator'}:{old / 'crds'}"
        env["DIOPTRA_CRD_PATH"] = str(old / "crds" / "experiments.dioptra.dev.yaml")
        command = [str(VENV_BIN / "python"), "-m", "dioptra_operator", *command[1:]]
    base = f"/apis/batch/v1/namespaces/{namespace}"
    jobs = Counter(plane, f"{base}/jobs").start()
    pods = Counter(plane, f"/api/v1/namespaces/{namespace}/pods").start()
    experiments = Counter(plane, f"/apis/dioptra.dev/v1alpha1/namespaces/{namespace}/experiments")
    experiments.start()
    log = folder / f"{namespace}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # Readiness: a plain Experiment's Job proves the watches and handlers are up.
        warmup = sweep_experiment("warmup", 1)
        del warmup["spec"]["sweep"]
        cluster.create(warmup)
        if not wait(lambda: "warmup-g1" in jobs.seen, process, log, 60):
            raise SystemExit(f"{label}: the operator never created the warm-up Job")
        cluster.delete("experiments", "warmup")
        wait(lambda: not cluster.exists("jobs", "warmup-g1"), process, log, 30)
        cpu_before = cpu_seconds(process.pid)
        experiments.modified = 0
        jobs_before, pods_before = set(jobs.seen), set(pods.seen)
        start = time.monotonic()
        cluster.create(sweep_experiment("sweep", points))

        def new(counter: Counter, before: set[str]) -> list[float]:
            return [t for name, t in list(counter.seen.items()) if name not in before]

        wanted_jobs = 1 if label == "Indexed Job" else points
        jobs_done = wait(lambda: len(new(jobs, jobs_before)) >= wanted_jobs, process, log, timeout)
        jobs_s = max(new(jobs, jobs_before)) - start if jobs_done else None
        remaining = max(1.0, timeout - (time.monotonic() - start))
        pods_done = wait(lambda: len(new(pods, pods_before)) >= points, process, log, remaining)
        pods_s = max(new(pods, pods_before)) - start if pods_done else None
        # The status writes trail the creates: count them once the Experiment is quiet for 3 s.
        wait(lambda: time.monotonic() - experiments.last_change > 3, process, log, 120)
        events = cluster.list("events", fieldSelector="involvedObject.kind=Experiment")
        job_count = len(cluster.list("jobs", labelSelector="dioptra.dev/experiment=sweep"))
        return {
            "design": label,
            "points": points,
            "jobs_s": round(jobs_s, 2) if jobs_s is not None else None,
            "pods_s": round(pods_s, 2) if pods_s is not None else None,
            "pods_created": len(new(pods, pods_before)),
            "jobs_created": job_count,
            "events_posted": sum(
                1 for e in events if (e.get("involvedObject") or {}).get("name") == "sweep"
            ),
            "status_writes": experiments.modified,
            "rss_peak_mib": round(peak_rss_mib(process.pid), 1),
            "cpu_s": round(cpu_seconds(process.pid) - cpu_before, 1),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        for counter in (jobs, pods, experiments):
            counter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="points of the sweep")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per design")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as name:
        folder = Path(name)
        plane = start_control_plane(folder / "controlplane")
        try:
            install_crd(plane)
            wait_for_crd(plane)
            print(f"control plane ready in {plane.started_in:.1f} s", file=sys.stderr)
            for index, label in enumerate(("Indexed Job", "one Job per point")):
                result = run_one(plane, label, f"sweep-{index}", folder, args.points, args.timeout)
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
        finally:
            plane.stop()
    if args.json:
        for result in results:
            print(json.dumps(result))
        return
    print(
        f"a sweep of {args.points} points, maxConcurrent {args.points}, Pods created but not "
        f"scheduled (no node), {os.cpu_count()} CPUs"
    )
    header = (
        "design",
        "points' Jobs s",
        "all points' Pods s",
        "Jobs created",
        "Events",
        "status writes",
        "peak RSS MiB",
        "CPU s",
        "load",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        missing = f" ({r['pods_created']} of {r['points']} Pods)" if r["pods_s"] is None else ""
        print(
            f"| {r['design']} | {r['jobs_s'] if r['jobs_s'] is not None else 'timeout'} | "
            f"{r['pods_s'] if r['pods_s'] is not None else 'timeout'}{missing} | "
            f"{r['jobs_created']} | {r['events_posted']} | {r['status_writes']} | "
            f"{r['rss_peak_mib']} | {r['cpu_s']} | {r['load_average_1m']} |"
        )


if __name__ == "__main__":
    main()
