"""A test-only "kubelet + Job controller": runs each Job's containers as local processes.

The API emulator has no controllers, so nothing would ever run the Jobs the operator creates.
`TestKubelet` polls the emulator for Jobs and, for each one, does what the Job controller and
the kubelet would, in the same order and through the same API:

- creates a Pod (template labels, `job-name`, ownerReference to the Job) and marks the Job
  active; respects `spec.suspend` (no Pod while suspended; suspending kills a running Pod);
- resolves each container's env (`value`, `secretKeyRef` read from the emulator and
  base64-decoded, `configMapKeyRef`); a missing Secret leaves the container waiting with
  `CreateContainerConfigError`, retried until the Secret appears, as a real kubelet does;
- maps every volume to a folder under the Pod's temp dir and rewrites the container paths
  (`/var/lib/dioptra/plugins`, `/tmp`, ...) in args and env to those folders;
- runs the init containers, then the main container, as subprocesses with a clean env
  (PATH, the container env, `KUBECONFIG` pointing at the emulator so the runner's reporter
  can write status) and maps `dioptra` to the virtualenv's console script;
- reports Pod status (container states, exit codes, reasons) and Job status (active,
  succeeded, failed, conditions Complete/Failed with BackoffLimitExceeded/DeadlineExceeded);
- can kill a main process on request (exit 137, reason `OOMKilled` or `Error`), and stops
  the Pod when its Job is deleted (the emulator has no garbage collector).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.k8s_emulator import ApiError, K8sApi

__all__ = [
    "STAND_IN_RUNNER",
    "OperatorProcess",
    "TestKubelet",
    "kubelet",
    "operator_process",
    "stand_in_kubelet",
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
POLL = 0.05

# A stand-in for `dioptra run --in-cluster`, for tests about the operator's own behaviour
# (restart, suspend, kill, delete) that must not depend on the runner: it sleeps for
# $STAND_IN_SECONDS (default 30) and exits with $STAND_IN_EXIT (default 0).
STAND_IN_RUNNER: tuple[str, ...] = (
    sys.executable,
    "-c",
    "import os, sys, time; time.sleep(float(os.environ.get('STAND_IN_SECONDS', '30'))); "
    "sys.exit(int(os.environ.get('STAND_IN_EXIT', '0')))",
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ConfigError(Exception):
    """The container cannot be configured (e.g. a missing Secret): CreateContainerConfigError."""


class _PodRun:
    """One Pod of one Job: its folder, its processes and the status it reports."""

    def __init__(self, job: dict[str, Any], name: str, folder: Path) -> None:
        self.job = job
        self.name = name
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.kill_reason: str | None = None
        self.status: dict[str, Any] = {"phase": "Pending"}


class TestKubelet:
    """Runs the Jobs it finds in the emulator; start() in a fixture, stop() at teardown."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        api: K8sApi,
        *,
        extra_env: Mapping[str, str] | None = None,
        main_command: Sequence[str] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.api = api
        self.extra_env = dict(extra_env or {})
        # Replaces the main container's command (STAND_IN_RUNNER) when the runner is not the
        # subject of the test; None runs the Job's own command.
        self.main_command = list(main_command) if main_command else None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="kubelet-"))
        self._own_folder = folder is None
        self._stop = threading.Event()
        self._threads: dict[tuple[str, str], threading.Thread] = {}
        self._pods: dict[tuple[str, str], _PodRun] = {}
        self._lock = threading.Lock()
        self._loop = threading.Thread(target=self._watch_jobs, name="kubelet", daemon=True)
        self.logs: dict[str, str] = {}  # "<pod>/<container>" -> combined output

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TestKubelet:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            self._terminate(pod)
        self._loop.join(10)
        for thread in list(self._threads.values()):
            thread.join(10)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- test controls --------------------------------------------------------------------------

    def kill(self, job_name: str, namespace: str = "default", *, reason: str = "OOMKilled") -> None:
        """SIGKILL the Job's running main container; it reports exit 137 with `reason`."""
        pod = self._pods.get((namespace, job_name))
        if pod is None or pod.process is None:
            raise AssertionError(f"no running main container for Job {job_name}")
        pod.kill_reason = reason
        pod.process.send_signal(signal.SIGKILL)

    def main_running(self, job_name: str, namespace: str = "default") -> bool:
        pod = self._pods.get((namespace, job_name))
        return bool(pod and pod.process and pod.process.poll() is None and pod.kill_reason is None)

    # -- the Job controller ---------------------------------------------------------------------

    def _watch_jobs(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, OSError):
                for job in self.api.list("jobs"):
                    key = (job["metadata"]["namespace"], job["metadata"]["name"])
                    if key not in self._threads and not self._finished(job):
                        thread = threading.Thread(
                            target=self._run_job, args=(key,), name=f"job-{key[1]}", daemon=True
                        )
                        self._threads[key] = thread
                        thread.start()
            self._stop.wait(POLL)

    @staticmethod
    def _finished(job: dict[str, Any]) -> bool:
        return any(
            cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True"
            for cond in (job.get("status") or {}).get("conditions") or []
        )

    def _get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.get("jobs", name, namespace))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):
            self.api.patch("jobs", name, {"status": status}, namespace, subresource="status")

    def _run_job(self, key: tuple[str, str]) -> None:
        namespace, name = key
        failures = 0
        started = time.monotonic()
        while not self._stop.is_set():
            job = self._get_job(namespace, name)
            if job is None:
                return
            spec = job.get("spec") or {}
            if spec.get("suspend"):
                self._job_status(namespace, name, {"active": 0})
                self._stop.wait(POLL)
                continue
            if not (job.get("status") or {}).get("startTime"):
                self._job_status(namespace, name, {"startTime": _now()})
            deadline = spec.get("activeDeadlineSeconds")
            outcome = self._run_pod(job, started + deadline if deadline else None)
            if outcome in ("deleted", "stopped"):
                return
            if outcome == "suspended":
                continue
            if outcome == "succeeded":
                self._finish(namespace, name, "Complete", "CompletionsReached", succeeded=1)
                return
            failures += 1
            if outcome == "deadline":
                self._finish(namespace, name, "Failed", "DeadlineExceeded", failed=failures)
                return
            if failures > int(spec.get("backoffLimit", 6)):
                self._finish(namespace, name, "Failed", "BackoffLimitExceeded", failed=failures)
                return
            self._job_status(namespace, name, {"failed": failures, "active": 0})

    def _finish(self, namespace: str, name: str, type_: str, reason: str, **counts: int) -> None:
        now = _now()
        message = {
            "CompletionsReached": "Reached expected number of succeeded pods",
            "BackoffLimitExceeded": "Job has reached the specified backoff limit",
            "DeadlineExceeded": "Job was active longer than specified deadline",
        }[reason]
        conditions = [
            {
                "type": "SuccessCriteriaMet" if type_ == "Complete" else "FailureTarget",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            },
            {
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            },
        ]
        status: dict[str, Any] = {"active": 0, "conditions": conditions, **counts}
        if type_ == "Complete":
            status["completionTime"] = now
        self._job_status(namespace, name, status)

    # -- the kubelet ----------------------------------------------------------------------------

    def _run_pod(self, job: dict[str, Any], deadline: float | None) -> str:
        """Run one Pod to its end: succeeded, failed, deadline, suspended, deleted or stopped."""
        meta = job["metadata"]
        namespace, job_name = meta["namespace"], meta["name"]
        template = job["spec"]["template"]
        pod_name = f"{job_name}-{secrets.token_hex(3)[:5]}"
        pod = _PodRun(job, pod_name, self.folder / namespace / pod_name)
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
            "controller-uid": meta.get("uid", ""),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": meta.get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        self.api.create(body, namespace)
        self._pods[(namespace, job_name)] = pod
        self._job_status(namespace, job_name, {"active": 1})
        try:
            return self._run_containers(pod, namespace, template["spec"], deadline)
        finally:
            self._terminate(pod)
            with self._lock:
                self._pods.pop((namespace, job_name), None)

    def _pod_status(self, pod: _PodRun, namespace: str, **status: Any) -> None:
        pod.status.update(status)
        with contextlib.suppress(ApiError):
            self.api.patch(
                "pods", pod.name, {"status": pod.status}, namespace, subresource="status"
            )

    def _run_containers(
        self, pod: _PodRun, namespace: str, spec: dict[str, Any], deadline: float | None
    ) -> str:
        volumes = self._volumes(pod, namespace, spec)
        inits = list(spec.get("initContainers") or [])
        mains = list(spec.get("containers") or [])
        init_statuses = [
            _status(c["name"], {"waiting": {"reason": "PodInitializing"}}) for c in inits
        ]
        main_statuses = [
            _status(c["name"], {"waiting": {"reason": "PodInitializing"}}) for c in mains
        ]
        self._pod_status(
            pod,
            namespace,
            phase="Pending",
            initContainerStatuses=init_statuses,
            containerStatuses=main_statuses,
        )
        for index, container in enumerate(inits):
            outcome = self._run_container(
                pod, namespace, container, volumes, init_statuses, index, deadline, is_main=False
            )
            if outcome != "ok":
                return outcome
        main_outcome = "ok"
        for index, container in enumerate(mains):
            main_outcome = self._run_container(
                pod, namespace, container, volumes, main_statuses, index, deadline, is_main=True
            )
            if main_outcome != "ok":
                return main_outcome
        self._pod_status(pod, namespace, phase="Succeeded")
        return "succeeded"

    def _volumes(self, pod: _PodRun, namespace: str, spec: dict[str, Any]) -> dict[str, Path]:
        """One folder per volume; ConfigMap volumes get their keys written as files."""
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = pod.folder / "volumes" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                with contextlib.suppress(ApiError):
                    cm = self.api.get("configmaps", volume["configMap"]["name"], namespace)
                    for key, value in (cm.get("data") or {}).items():
                        (folder / key).write_text(value)
            folders[volume["name"]] = folder
        return folders

    def _run_container(
        self,
        pod: _PodRun,
        namespace: str,
        container: dict[str, Any],
        volumes: dict[str, Path],
        statuses: list[dict[str, Any]],
        index: int,
        deadline: float | None,
        *,
        is_main: bool,
    ) -> str:
        key = "containerStatuses" if is_main else "initContainerStatuses"
        mounts = {
            m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts") or []
            if m["name"] in volumes
        }
        while True:  # a kubelet retries container configuration until it works
            outcome = self._control(pod, namespace, deadline)
            if outcome:
                return outcome
            try:
                env = self._env(container, namespace, mounts)
                break
            except _ConfigError as e:
                statuses[index] = _status(
                    container["name"],
                    {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}},
                )
                self._pod_status(pod, namespace, **{key: statuses})
                time.sleep(0.2)
        command = list(container.get("command") or []) + list(container.get("args") or [])
        # The Job's paths are container paths; a stand-in command is already in host paths
        # (and the host's checkout may itself live under /tmp, a mount path).
        command = [_map_path(arg, mounts) for arg in command]
        if is_main and self.main_command:
            command = list(self.main_command)
        if command and (VENV_BIN / command[0]).exists():
            command[0] = str(VENV_BIN / command[0])
        log_path = pod.folder / f"{container['name']}.log"
        started = _now()
        with log_path.open("wb") as log:
            pod.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=pod.folder
            )
        statuses[index] = _status(container["name"], {"running": {"startedAt": started}})
        self._pod_status(
            pod, namespace, phase="Running" if is_main else "Pending", **{key: statuses}
        )
        while pod.process.poll() is None:
            outcome = self._control(pod, namespace, deadline)
            if outcome:
                self._terminate(pod)
                return outcome
            time.sleep(POLL)
        code = pod.process.returncode
        output = log_path.read_text(errors="replace")
        self.logs[f"{pod.name}/{container['name']}"] = output
        if code < 0:  # killed by a signal: report it the way the kubelet does
            code = 128 - code
        reason = pod.kill_reason or ("Completed" if code == 0 else "Error")
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": _now(),
        }
        if code != 0 and output.strip():
            # terminationMessagePolicy: FallbackToLogsOnError (the last lines of the log)
            terminated["message"] = "\n".join(output.strip().splitlines()[-5:])[-2048:]
        statuses[index] = _status(container["name"], {"terminated": terminated})
        pod.process = None
        if code != 0:
            self._pod_status(pod, namespace, phase="Failed", **{key: statuses})
            return "failed"
        self._pod_status(pod, namespace, **{key: statuses})
        return "ok"

    def _control(self, pod: _PodRun, namespace: str, deadline: float | None) -> str | None:
        """Why the Pod must stop now (stopped, deleted, suspended, deadline), or None."""
        if self._stop.is_set():
            return "stopped"
        job = self._get_job(namespace, pod.job["metadata"]["name"])
        if job is None:
            with contextlib.suppress(ApiError):
                self.api.delete("pods", pod.name, namespace)
            return "deleted"
        if (job.get("spec") or {}).get("suspend"):
            with contextlib.suppress(ApiError):
                self.api.delete("pods", pod.name, namespace)
            return "suspended"
        if deadline is not None and time.monotonic() > deadline:
            return "deadline"
        return None

    def _env(
        self, container: dict[str, Any], namespace: str, mounts: Mapping[str, Path]
    ) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "KUBECONFIG": str(self.api.kubeconfig_path),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = _map_path(str(item["value"]), mounts)
                continue
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                value = self._ref("secrets", source["secretKeyRef"], namespace, decode=True)
            elif "configMapKeyRef" in source:
                value = self._ref("configmaps", source["configMapKeyRef"], namespace)
            else:
                continue
            if value is not None:
                env[item["name"]] = value
        return env

    def _ref(
        self, kind: str, ref: dict[str, Any], namespace: str, decode: bool = False
    ) -> str | None:
        singular = "secret" if kind == "secrets" else "configmap"
        try:
            obj = self.api.get(kind, ref["name"], namespace)
        except ApiError as e:
            if e.status == 404 and ref.get("optional"):
                return None
            if e.status == 404:
                raise _ConfigError(f'{singular} "{ref["name"]}" not found') from None
            raise
        data = obj.get("data") or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise _ConfigError(
                f"couldn't find key {ref['key']} in {singular} {namespace}/{ref['name']}"
            )
        value = data[ref["key"]]
        return base64.b64decode(value).decode() if decode else str(value)

    def _terminate(self, pod: _PodRun) -> None:
        process = pod.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


class OperatorProcess:
    """The operator under test, started exactly as the chart's Deployment runs it.

    `dioptra-operator --all-namespaces --standalone` from the virtualenv, with `KUBECONFIG`
    pointing at the emulator and the chart's `DIOPTRA_*` variables. `restart()` kills it hard
    (SIGKILL, like a crashed pod) and starts a new one.
    """

    def __init__(
        self,
        api: K8sApi,
        env: Mapping[str, str],
        log_path: Path,
        args: Sequence[str] = ("--all-namespaces", "--standalone"),
    ) -> None:
        self.api = api
        self.args = list(args)
        self.env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "KUBECONFIG": str(api.kubeconfig_path),
            "DIOPTRA_METRICS_PORT": "0",
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "dioptra-operator"), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture()
def operator_process(k8s_api: K8sApi, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The real operator (console script) against the emulator; stopped at teardown."""
    process = OperatorProcess(
        k8s_api,
        {"DIOPTRA_RUNNER_IMAGE": "dioptra-runner:test"},
        tmp_path / "operator.log",
    ).start()
    try:
        yield process
    finally:
        process.stop()


def _status(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": "running" in state, "restartCount": 0}


def _map_path(value: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite a container path under a mount to the host folder (longest mount first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount) :]
    return value


@contextlib.contextmanager
def stand_in_kubelet(
    api: K8sApi, folder: Path, seconds: float, **env: str
) -> Iterator[TestKubelet]:
    """A started kubelet whose main containers are the stand-in runner, alive for `seconds`.

    Extra `env` reaches the stand-in (e.g. `STAND_IN_EXIT="3"` to fail it).
    """
    node = TestKubelet(
        api,
        main_command=STAND_IN_RUNNER,
        extra_env={"STAND_IN_SECONDS": str(seconds), **env},
        folder=folder,
    ).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture()
def kubelet(k8s_api: K8sApi, tmp_path: Path) -> Iterator[TestKubelet]:
    """A started TestKubelet running the Jobs' real commands (set `main_command` to change)."""
    node = TestKubelet(k8s_api, folder=tmp_path / "kubelet").start()
    try:
        yield node
    finally:
        node.stop()
