"""The one fake of the test cluster: a stand-in kubelet that runs Pods as local processes.

A real kubelet needs a container runtime, which these machines lack. Everything around it is
real: the Job controller creates the Pods, the scheduler binds them to the Node this kubelet
registers, the garbage collector deletes them. `StandInKubelet` does a kubelet's part, through
the same API a kubelet uses:

- registers a Ready Node (no taints; the control plane runs no node lifecycle controller) and
  serves its read-only log endpoint over TLS, so `kubectl logs` works;
- watches the Pods bound to that Node and runs each: volumes become folders (emptyDir,
  configMap, secret, projected), init containers run in order, then the main containers;
  native sidecars (init containers with `restartPolicy: Always`, Kubernetes 1.29+) are started
  in their turn and the next init container starts once they run (or their httpGet
  startupProbe passes); they run beside the main containers, are restarted whenever they exit
  (restartCount, lastState), and are stopped (SIGTERM, then SIGKILL after the grace period)
  once every main container has ended, whose exit codes alone decide the phase; env is
  resolved the kubelet's way (`value`, `$(VAR)`, `secretKeyRef`, `configMapKeyRef`, `fieldRef`,
  `envFrom`), and a missing Secret or ConfigMap key leaves the container waiting with
  `CreateContainerConfigError` until it appears;
- writes container states, exit codes, termination messages (per `terminationMessagePolicy`),
  conditions and phase through `pods/status`; restarts containers of `restartPolicy:
  Always/OnFailure` Pods (the chart's Deployments);
- on Pod deletion (the Job controller on suspend, deadline or backoff; the garbage collector)
  sends SIGTERM, then SIGKILL after the grace period, and confirms the deletion.

What a process cannot have, and what stands in for it:
- Images: the container's command runs from the host; a command that is one of our console
  scripts (`dioptra`, `dioptra-operator`) runs from the virtualenv.
- Paths: container paths under a mount are rewritten to the volume's folder in args and env.
- The ServiceAccount token: requested through TokenRequest bound to the Pod, as the kubelet
  does, and handed over as a kubeconfig (`KUBECONFIG`), since in-cluster config reads a fixed
  path; a Pod with `automountServiceAccountToken: false` gets nothing.
- The network: each Pod gets its own address in 127.1.0.0/16 as its Pod IP; "0.0.0.0" in args
  and env (bind everywhere) becomes that address, and so does "127.0.0.1:<port>" for a port a
  container of the Pod declares (`ports`), which stands in for the Pod's own loopback (two Pods
  may both serve 127.0.0.1:4200); a Service name (`svc.ns.svc[.cluster.local]`)
  becomes the address and target port of a running Pod it selects (what DNS plus kube-proxy
  do).
- The user: processes run as the test's own user (`runAsUser` needs images; see the podman tier).
- Memory limits: `kill(..., reason="OOMKilled")` is the test's way to have the kernel kill it.

The image tier (`NamespaceSettings(images=True)`, or `running_kubelet(plane, images=True)`)
replaces the processes with containers: each container runs in its image with podman, with its
security context, volumes and env, and logs in with its token the in-cluster way
(support/podman.py). Only the network stays shared with the host.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import itertools
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support import podman
from support.controlplane import ApiError, ControlPlane

__all__ = [
    "NODE_NAME",
    "STAND_IN_RUNNER",
    "NamespaceSettings",
    "StandInKubelet",
    "kubelet",
    "running_kubelet",
    "stand_in_settings",
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
NODE_NAME = "stand-in-node"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"

# A stand-in for `dioptra run --in-cluster`, for tests about the operator's own behaviour
# (restart, suspend, kill, delete) that must not depend on the runner: it sleeps for
# $STAND_IN_SECONDS (default 30) and exits with $STAND_IN_EXIT (default 0); with
# $STAND_IN_EXIT_INDEXES (comma-separated), only the Pods of those completion indexes of an
# Indexed Job (a sweep's points) exit with it, the others with 0.
STAND_IN_RUNNER: tuple[str, ...] = (
    sys.executable,
    "-c",
    "import os, sys, time; time.sleep(float(os.environ.get('STAND_IN_SECONDS', '30'))); "
    "only = os.environ.get('STAND_IN_EXIT_INDEXES'); "
    "mine = only is None or os.environ.get('JOB_COMPLETION_INDEX') in only.split(','); "
    "sys.exit(int(os.environ.get('STAND_IN_EXIT', '0')) if mine else 0)",
)

_SERVICE_NAME = re.compile(
    r"(?P<svc>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.svc(\.cluster\.local)?(:(?P<port>\d+))?"
)
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Waiting(Exception):
    """A container cannot start yet (missing Secret, ConfigMap, key); the kubelet retries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class NamespaceSettings:
    """How a test wants the Pods of its namespace run (the kubelet is shared by the session).

    `main_command` replaces the main containers' command (STAND_IN_RUNNER, when the runner is
    not the subject of the test); `commands` replaces the command of the containers it names
    (a broken sidecar); `env` is added to every container's environment; `images` runs each
    container in its image (support/podman.py) instead of as a host process.
    """

    main_command: list[str] | None = None
    commands: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    images: bool = False  # run the containers in their images with podman (the image tier)


CONTAINER_MARKER = "STAND_IN_KUBELET_CONTAINER"


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries `marker`: what a container runtime
    does to a container's processes when it ends, whichever process group they are in."""
    if not marker:
        return
    needle = f"{CONTAINER_MARKER}={marker}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if needle in environ + b"\0":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@dataclass
class _Container:
    name: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    kill_reason: str | None = None
    restarts: int = 0
    started: threading.Event = field(default_factory=threading.Event)  # ran at least once
    marker: str = ""  # in the environment of each of its processes (process mode)


class _PodWorker:
    """Runs one Pod from its binding to its deletion, on a thread of its own."""

    def __init__(self, kubelet: StandInKubelet, pod: dict[str, Any], ip: str) -> None:
        self.kubelet = kubelet
        self.plane = kubelet.plane
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.ip = ip
        self.folder = kubelet.folder / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.deleted = threading.Event()
        self.containers: dict[str, _Container] = {}
        self.status: dict[str, Any] = {}
        self.token = ""
        spec = pod["spec"]
        every = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        # Ports its containers declare: 127.0.0.1:<port> is this Pod's own loopback.
        self.local_ports = frozenset(
            int(port["containerPort"]) for each in every for port in each.get("ports") or []
        )
        self.sidecars: list[threading.Thread] = []
        self.ending = threading.Event()  # the main containers ended: sidecars are not restarted
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- control from the kubelet ---------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleted.set()

    def running_main(self) -> _Container | None:
        for spec in self.pod["spec"]["containers"]:
            container = self.containers.get(spec["name"])
            if container and container.process and container.process.poll() is None:
                return container
        return None

    # -- status ---------------------------------------------------------------------------------

    def _write_status(self, **fields: Any) -> None:
        with self._lock:
            self.status.update(fields)
            body = {"status": self.status}
        try:
            self.plane.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                body,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as error:
            if error.status != 404:  # a Pod gone is not news; a refused status is a bug here
                self.kubelet.errors.append(f"{self.namespace}/{self.name} status: {error}")

    def _conditions(self, initialized: bool, ready: bool) -> list[dict[str, Any]]:
        now = _now()

        def cond(type_: str, ok: bool) -> dict[str, Any]:
            return {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": now}

        return [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ]

    # -- the Pod's life -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as error:  # a bug here must show in the test, not vanish in a thread
            self.kubelet.errors.append(f"{self.namespace}/{self.name}: {error!r}")
            raise
        finally:
            self.ending.set()
            self._stop_all(grace=0)
            self._confirm_deletion()

    def _run_pod(self) -> None:
        spec = self.pod["spec"]
        inits = list(spec.get("initContainers") or [])
        mains = list(spec.get("containers") or [])
        waiting = {"waiting": {"reason": "PodInitializing"}}
        creating = {"waiting": {"reason": "ContainerCreating"}}
        self.status = {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": _now(),
            "conditions": self._conditions(initialized=not inits, ready=False),
            "initContainerStatuses": [
                _status(c, waiting if i else creating) for i, c in enumerate(inits)
            ],
            "containerStatuses": [_status(c, waiting if inits else creating) for c in mains],
        }
        self._write_status()
        self.folder.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes_until_ready(spec)
        if volumes is None:
            return
        restart = spec.get("restartPolicy", "Always")
        for index, container in enumerate(inits):
            if container.get("restartPolicy") == "Always":
                if not self._start_sidecar(container, index, volumes):
                    return
                continue
            code = self._run_to_end(container, "initContainerStatuses", index, volumes, restart)
            if code is None:
                return
            if code != 0:
                self._end_pod(spec, phase="Failed")
                return
        self._write_status(conditions=self._conditions(initialized=True, ready=False))
        self._run_mains(mains, volumes, restart)

    def _start_sidecar(self, spec: dict[str, Any], index: int, volumes: Mapping[str, Path]) -> bool:
        """Start a native sidecar; True once it runs (and its startupProbe passed, if any).

        Whatever the Pod's restartPolicy, it is restarted whenever it exits until the main
        containers have ended (`ending`) or the Pod is deleted.
        """

        def keep_running() -> None:
            while True:
                code = self._run_once(spec, "initContainerStatuses", index, volumes)
                if code is None or self.deleted.is_set() or self.ending.is_set():
                    return
                container = self.containers[spec["name"]]
                container.restarts += 1
                backoff = {"waiting": {"reason": "CrashLoopBackOff", "message": f"exit {code}"}}
                self._set_container("initContainerStatuses", index, spec, backoff, container)
                if self.deleted.wait(1.0) or self.ending.is_set():  # CrashLoopBackOff's step
                    return

        thread = threading.Thread(target=keep_running, name=f"sidecar-{spec['name']}", daemon=True)
        self.sidecars.append(thread)
        thread.start()
        name = spec["name"]
        while not self.deleted.is_set():
            container = self.containers.get(name)
            if container is not None and container.started.wait(0.1):
                return self._startup_probe(spec)
        return False

    def _startup_probe(self, spec: dict[str, Any]) -> bool:
        """Wait for a sidecar's httpGet startupProbe (the only kind the stand-in probes)."""
        probe = spec.get("startupProbe")
        if not probe:
            return True
        get = probe.get("httpGet")
        if get is None:
            raise AssertionError(f"the stand-in kubelet probes httpGet only ({spec['name']})")
        url = f"http://{self.ip}:{get['port']}{get.get('path', '/')}"
        period = min(float(probe.get("periodSeconds", 10)), 0.5)
        while not self.deleted.is_set():
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if 200 <= answer.status < 400:
                    return True
            self.deleted.wait(period)
        return False

    def _end_pod(self, spec: dict[str, Any], **status: Any) -> None:
        """Stop the sidecars (SIGTERM, SIGKILL after the grace period), then write the end."""
        self.ending.set()
        names = {
            c["name"]
            for c in spec.get("initContainers") or []
            if c.get("restartPolicy") == "Always"
        }
        sidecars = [c for n, c in self.containers.items() if n in names and c.process is not None]
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        if self.kubelet.settings_for(self.namespace).images:
            self._stop_in_podman(sidecars, grace)
        self._terminate([c.process for c in sidecars if c.process is not None], grace)
        for thread in self.sidecars:
            thread.join(10)  # its final status written first
        self._write_status(**status)

    def _stop_in_podman(self, containers: list[_Container], grace: float) -> None:
        """`podman stop` (SIGTERM, SIGKILL after `grace`), as a runtime's StopContainer does.

        A SIGTERM to `podman run` before its container runs is lost, which a sidecar stopped
        right after it started (a sync that failed at once) would otherwise wait out.
        """
        deadline = time.monotonic() + grace
        for container in containers:
            name = podman.container_name(self._podman_context(container), container.name)
            while container.process is not None and container.process.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                podman.podman("stop", f"--time={max(1, int(left))}", name, check=False)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    container.process.wait(0.5)

    def _volumes_until_ready(self, spec: dict[str, Any]) -> dict[str, Path] | None:
        while not self.deleted.is_set():
            try:
                return self._volumes(spec)
            except _Waiting:
                self.deleted.wait(0.5)  # like the kubelet's FailedMount retries
        return None

    def _volumes(self, spec: dict[str, Any]) -> dict[str, Path]:
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = self.folder / "volumes" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # as the kubelet makes an emptyDir: any container user writes
            if "configMap" in volume:
                self._project_keys(folder, "configmaps", volume["configMap"])
            elif "secret" in volume:
                source = dict(volume["secret"], name=volume["secret"].get("secretName"))
                self._project_keys(folder, "secrets", source)
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        path = source["serviceAccountToken"].get("path", "token")
                        (folder / path).write_text(self._token())
                    elif "configMap" in source:
                        self._project_keys(folder, "configmaps", source["configMap"])
                    elif "secret" in source:
                        self._project_keys(folder, "secrets", source["secret"])
                    elif "downwardAPI" in source:
                        for item in source["downwardAPI"].get("items") or []:
                            if "fieldRef" in item:
                                value = self._field(item["fieldRef"]["fieldPath"])
                                (folder / item["path"]).write_text(value)
            folders[volume["name"]] = folder
        return folders

    def _project_keys(self, folder: Path, kind: str, source: Mapping[str, Any]) -> None:
        try:
            obj = self.plane.request(
                "GET", f"/api/v1/namespaces/{self.namespace}/{kind}/{source['name']}"
            )
        except ApiError as error:
            if error.status == 404 and source.get("optional"):
                return
            raise _Waiting("ContainerCreating", f"{kind} {source['name']} not found") from None
        decode = kind == "secrets"
        data = dict(obj.get("data") or {})
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                continue
            value = data[item["key"]]
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(value) if decode else str(value).encode())

    def _token(self) -> str:
        account = self.pod["spec"].get("serviceAccountName") or "default"
        self.token = self.plane.token(self.namespace, account, bound_pod=(self.name, self.uid))
        return self.token

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName") or "default",
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in values:
            return values[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        return ""

    # -- containers -----------------------------------------------------------------------------

    def _run_to_end(
        self,
        spec: dict[str, Any],
        key: str,
        index: int,
        volumes: Mapping[str, Path],
        restart: str,
    ) -> int | None:
        """Run one container until it ends for good: its exit code, or None when deleted."""
        while True:
            code = self._run_once(spec, key, index, volumes)
            if code is None or self.deleted.is_set():
                return None
            if restart == "Never" or (restart == "OnFailure" and code == 0):
                return code
            if key == "initContainerStatuses" and code == 0:
                return code
            self.containers[spec["name"]].restarts += 1
            if self.deleted.wait(1.0):  # CrashLoopBackOff's first step
                return None

    def _run_mains(
        self, mains: list[dict[str, Any]], volumes: Mapping[str, Path], restart: str
    ) -> None:
        codes: dict[int, int | None] = {}

        def run(index: int, spec: dict[str, Any]) -> None:
            codes[index] = self._run_to_end(spec, "containerStatuses", index, volumes, restart)

        threads = [
            threading.Thread(target=run, args=(i, spec), daemon=True)
            for i, spec in enumerate(mains)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.deleted.is_set() or any(code is None for code in codes.values()):
            return
        failed = any(code != 0 for code in codes.values())
        ready = self._conditions(initialized=True, ready=False)
        self._end_pod(self.pod["spec"], phase="Failed" if failed else "Succeeded", conditions=ready)

    def _run_once(
        self, spec: dict[str, Any], key: str, index: int, volumes: Mapping[str, Path]
    ) -> int | None:
        name = spec["name"]
        container = self.containers.setdefault(name, _Container(name, self.folder / f"{name}.log"))
        mounts = {
            m["mountPath"]: volumes[m["name"]]
            for m in spec.get("volumeMounts") or []
            if m["name"] in volumes
        }
        images = self.kubelet.settings_for(self.namespace).images
        ctx = self._podman_context(container)
        while True:
            if self.deleted.is_set():
                return None
            try:
                env = self._env(spec, mounts, images=images)
                if images:
                    command = podman.run_command(
                        ctx, self.pod["spec"], spec, env, mounts, self._argv(spec, env)
                    )
                else:
                    command = self._command(spec, env, mounts, main=key == "containerStatuses")
                break
            except (_Waiting, podman.ConfigError) as waiting:
                self._set_container(
                    key,
                    index,
                    spec,
                    {"waiting": {"reason": waiting.reason, "message": str(waiting)}},
                    container,
                )
                self.deleted.wait(0.5)
        self.kubelet.commands[f"{self.namespace}/{self.name}/{name}"] = command
        workdir = str(self.folder)
        if not images:
            workdir = _map_path(spec.get("workingDir") or "", mounts) or workdir
        Path(workdir).mkdir(parents=True, exist_ok=True)
        started = _now()
        if not images:
            # A container's processes die with it, even those that left its process group
            # (the runner starts Prefect's server in a session of its own): all carry this.
            container.marker = f"{self.uid}/{name}"
            env = {**env, CONTAINER_MARKER: container.marker}
        with container.log.open("ab") as log:
            try:
                container.process = subprocess.Popen(
                    command,
                    env=podman.environment() if images else env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                    start_new_session=True,  # the container's processes form one group
                )
            except OSError as error:
                self._set_container(
                    key,
                    index,
                    spec,
                    {
                        "terminated": {
                            "exitCode": 128,
                            "reason": "StartError",
                            "message": str(error),
                            "startedAt": started,
                            "finishedAt": _now(),
                        }
                    },
                    container,
                )
                container.started.set()
                return 128
        self._set_container(key, index, spec, {"running": {"startedAt": started}}, container)
        container.started.set()
        if key == "containerStatuses":
            self._write_status(phase="Running", conditions=self._conditions(True, True))
        code = container.process.wait()
        if code < 0:  # killed by a signal: a container runtime reports 128 + the signal
            code = 128 - code
        # The output first, then the exit code: a reader that sees the code sees all the output.
        self.kubelet.logs[f"{self.namespace}/{self.name}/{name}"] = container.log.read_text(
            errors="replace"
        )
        self.kubelet.exit_codes[f"{self.namespace}/{self.name}/{name}"] = code
        message = ""
        if images:
            oom_killed, message = podman.finished(ctx, name)
            if oom_killed:
                container.kill_reason = container.kill_reason or "OOMKilled"
        reason = container.kill_reason or ("Completed" if code == 0 else "Error")
        container.kill_reason = None
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": _now(),
        }
        if not message.strip():
            message = self._termination_message(spec, mounts, code, container.log)
        if message:
            terminated["message"] = message
        self._set_container(key, index, spec, {"terminated": terminated}, container)
        return code

    def _termination_message(
        self, spec: dict[str, Any], mounts: Mapping[str, Path], code: int, log: Path
    ) -> str:
        path = _map_path(spec.get("terminationMessagePath") or "/dev/termination-log", mounts)
        with contextlib.suppress(OSError):
            if path != "/dev/termination-log" and Path(path).read_text().strip():
                return Path(path).read_text()[-4096:]
        if spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" and code != 0:
            lines = log.read_text(errors="replace").splitlines()[-80:]
            return "\n".join(lines)[-2048:]
        return ""

    def _set_container(
        self,
        key: str,
        index: int,
        spec: dict[str, Any],
        state: dict[str, Any],
        container: _Container,
    ) -> None:
        with self._lock:
            statuses = list(self.status.get(key) or [])
            previous = statuses[index] if index < len(statuses) else {}
        entry = _status(spec, state)
        entry["restartCount"] = container.restarts
        if previous.get("state", {}).get("terminated") and "terminated" not in state:
            entry["lastState"] = {"terminated": previous["state"]["terminated"]}
        elif previous.get("lastState"):  # as the kubelet: the last termination before this one
            entry["lastState"] = previous["lastState"]
        statuses[index] = entry
        self._write_status(**{key: statuses})

    def _env(
        self, spec: dict[str, Any], mounts: Mapping[str, Path], *, images: bool = False
    ) -> dict[str, str]:
        settings = self.kubelet.settings_for(self.namespace)
        env: dict[str, str] = {"HOSTNAME": self.name}
        if images:  # the image brings PATH and the rest; the API server is found in-cluster
            api = urllib.parse.urlsplit(self.plane.url)
            env["KUBERNETES_SERVICE_HOST"] = api.hostname or "127.0.0.1"
            env["KUBERNETES_SERVICE_PORT"] = str(api.port)
            mounts = {}  # container paths are real paths in a container
        else:
            env.update(
                PATH=f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
                LANG="C.UTF-8",
                PYTHONUNBUFFERED="1",
            )
        token = mounts.get(TOKEN_PATH)
        if token is not None:
            kubeconfig = self.plane.kubeconfig(
                self.folder / "kubeconfig",
                namespace=self.namespace,
                token=(token / "token").read_text(),
            )
            env["KUBECONFIG"] = str(kubeconfig)
        env.update(settings.env)
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (
                ("configmaps", source.get("configMapRef")),
                ("secrets", source.get("secretRef")),
            ):
                if ref:
                    for key, value in self._all_keys(kind, ref).items():
                        env[prefix + key] = value
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = _map_path(_expand(str(item["value"]), env), mounts)
                continue
            source = item.get("valueFrom") or {}
            value: str | None
            if "secretKeyRef" in source:
                value = self._key("secrets", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key("configmaps", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = self._field(source["fieldRef"]["fieldPath"])
            else:
                value = None
            if value is not None:
                env[item["name"]] = value
        return {key: self._network(value) for key, value in env.items()}

    def _all_keys(self, kind: str, ref: Mapping[str, Any]) -> dict[str, str]:
        try:
            obj = self.plane.request(
                "GET", f"/api/v1/namespaces/{self.namespace}/{kind}/{ref['name']}"
            )
        except ApiError as error:
            if error.status == 404 and ref.get("optional"):
                return {}
            singular = "secret" if kind == "secrets" else "configmap"
            raise _Waiting(
                "CreateContainerConfigError", f'{singular} "{ref["name"]}" not found'
            ) from None
        data = dict(obj.get("data") or {})
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return {k: str(v) for k, v in data.items()}

    def _key(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        singular = "secret" if kind == "secrets" else "configmap"
        data = self._all_keys(kind, ref)
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise _Waiting(
            "CreateContainerConfigError",
            f"couldn't find key {ref['key']} in {singular.capitalize()} "
            f"{self.namespace}/{ref['name']}",
        )

    def _network(self, value: str) -> str:
        return self.kubelet.network(value, self.ip, self.local_ports)

    def _argv(self, spec: dict[str, Any], env: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """A container's `command` and `args`, expanded, for a runtime that has the image."""
        command, args = (
            [self._network(_expand(arg, env)) for arg in spec.get(part) or []]
            for part in ("command", "args")
        )
        return command, args

    def _command(
        self,
        spec: dict[str, Any],
        env: Mapping[str, str],
        mounts: Mapping[str, Path],
        *,
        main: bool,
    ) -> list[str]:
        settings = self.kubelet.settings_for(self.namespace)
        if spec["name"] in settings.commands:
            return list(settings.commands[spec["name"]])
        if main and settings.main_command:
            return list(settings.main_command)
        command = [
            self._network(_map_path(_expand(arg, env), mounts))
            for arg in [*(spec.get("command") or []), *(spec.get("args") or [])]
        ]
        if not command:
            raise AssertionError(
                f"container {spec['name']} of Pod {self.name} has no command: the stand-in "
                "kubelet has no image to take an entrypoint from"
            )
        if "/" not in command[0] and (VENV_BIN / command[0]).exists():
            command[0] = str(VENV_BIN / command[0])
        return command

    # -- stopping -------------------------------------------------------------------------------

    def stop_for_deletion(self) -> None:
        """What the kubelet does when the API server marks the Pod deleted."""
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        self._stop_all(grace=float(grace))

    def _stop_all(self, grace: float) -> None:
        processes = [c.process for c in self.containers.values() if c.process is not None]
        self._terminate(processes, grace)
        for container in self.containers.values():
            _kill_marked(container.marker)
        if self.kubelet.settings_for(self.namespace).images:
            for container in self.containers.values():
                podman.remove(self._podman_context(container), container.name)

    @staticmethod
    def _terminate(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
        """SIGTERM, up to `grace` seconds to exit, then SIGKILL to the whole group."""
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # nothing of the container outlives it
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def _podman_context(self, container: _Container) -> podman.PodContext:
        return podman.PodContext(self.namespace, self.name, container.restarts, self.folder)

    def kill_main(self, container: _Container, reason: str) -> None:
        """SIGKILL a running main container, as the kernel's OOM killer or a crash would."""
        container.kill_reason = reason
        if self.kubelet.settings_for(self.namespace).images:
            podman.kill(self._podman_context(container), container.name)
        elif container.process is not None:
            os.killpg(container.process.pid, signal.SIGKILL)
            _kill_marked(container.marker)

    def _confirm_deletion(self) -> None:
        if not self.deleted.is_set():
            return
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(ApiError):
            self.plane.request(
                "DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body
            )


class StandInKubelet:
    """Registers the Node, runs the Pods bound to it; start() once, stop() at the end."""

    def __init__(
        self, plane: ControlPlane, folder: Path | None = None, *, images: bool = False
    ) -> None:
        self.plane = plane
        self.images = images  # the runtime of namespaces the tests did not configure
        self.folder = folder or Path(tempfile.mkdtemp(prefix="stand-in-kubelet-"))
        self.logs: dict[str, str] = {}  # "<namespace>/<pod>/<container>" -> output so far
        self.errors: list[str] = []
        self.commands: dict[str, list[str]] = {}  # "<namespace>/<pod>/<container>" -> argv run
        self.exit_codes: dict[str, int] = {}  # "<namespace>/<pod>/<container>" -> last exit code
        self._settings: dict[str, NamespaceSettings] = {}
        self._workers: dict[str, _PodWorker] = {}  # by Pod uid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._addresses = (f"127.1.{i // 250}.{i % 250 + 2}" for i in itertools.count())
        self._watcher = threading.Thread(target=self._watch, name="kubelet-watch", daemon=True)
        self._log_server = _LogServer(self)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> StandInKubelet:
        self._log_server.start()
        self._register_node()
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.deleted.set()
            worker._stop_all(grace=2)
        for worker in workers:
            worker.thread.join(10)
        self._log_server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"podCIDR": "127.1.0.0/16", "podCIDRs": ["127.1.0.0/16"]},
        }
        with contextlib.suppress(ApiError):
            self.plane.request("POST", "/api/v1/nodes", node)
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "100Gi"}
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self._log_server.port}},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "stand-in kubelet is posting ready status",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.36.0-stand-in",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "processes://stand-in",
                    "kernelVersion": os.uname().release,
                    "osImage": "stand-in",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }
        self.plane.request(
            "PATCH",
            f"/api/v1/nodes/{NODE_NAME}/status",
            status,
            content_type="application/merge-patch+json",
        )
        # The API server taints a new Node not-ready; the node lifecycle controller would lift
        # it once the Node reports Ready, and the test control plane does not run that one.
        self.plane.request(
            "PATCH",
            f"/api/v1/nodes/{NODE_NAME}",
            {"spec": {"taints": None}},
            content_type="application/merge-patch+json",
        )

    # -- test controls --------------------------------------------------------------------------

    def configure(self, namespace: str, settings: NamespaceSettings) -> None:
        self._settings[namespace] = settings

    def forget(self, namespace: str) -> None:
        self._settings.pop(namespace, None)

    def settings_for(self, namespace: str) -> NamespaceSettings:
        return self._settings.get(namespace) or NamespaceSettings(images=self.images)

    def workers(self, namespace: str, job_name: str | None = None) -> list[_PodWorker]:
        with self._lock:
            workers = [w for w in self._workers.values() if w.namespace == namespace]
        if job_name is not None:
            workers = [
                w
                for w in workers
                if (w.pod["metadata"].get("labels") or {}).get("job-name") == job_name
            ]
        return workers

    def kill(self, job_name: str, namespace: str, *, reason: str = "OOMKilled") -> None:
        """SIGKILL the Job's running main container; it reports exit 137 with `reason`."""
        for worker in self.workers(namespace, job_name):
            container = worker.running_main()
            if container is not None:
                worker.kill_main(container, reason)
                return
        raise AssertionError(f"no running main container for Job {namespace}/{job_name}")

    def kill_pod(self, pod_name: str, namespace: str, *, reason: str = "Error") -> None:
        """SIGKILL a Pod's running main container (a crash); restartPolicy decides what next."""
        for worker in self.workers(namespace):
            if worker.name == pod_name:
                container = worker.running_main()
                if container is not None:
                    worker.kill_main(container, reason)
                    return
        raise AssertionError(f"no running main container in Pod {namespace}/{pod_name}")

    def main_running(self, job_name: str, namespace: str) -> bool:
        return any(w.running_main() for w in self.workers(namespace, job_name))

    def logs_in(self, namespace: str) -> dict[str, str]:
        """The output of every finished container in a namespace, by "<pod>/<container>"."""
        prefix = f"{namespace}/"
        return {k[len(prefix) :]: v for k, v in self.logs.items() if k.startswith(prefix)}

    def token_of(self, namespace: str, pod_name: str) -> str:
        """The ServiceAccount token the kubelet handed to a Pod's containers."""
        for worker in self.workers(namespace):
            if worker.name == pod_name and worker.token:
                return worker.token
        raise AssertionError(f"Pod {namespace}/{pod_name} got no token")

    def log_of(self, namespace: str, pod_name: str, container: str) -> str:
        for worker in self.workers(namespace):
            if worker.name == pod_name and container in worker.containers:
                return worker.containers[container].log.read_text(errors="replace")
        return self.logs.get(f"{namespace}/{pod_name}/{container}", "")

    # -- the network stand-in -------------------------------------------------------------------

    def network(self, value: str, pod_ip: str, local_ports: frozenset[int] = frozenset()) -> str:
        """Bind-everywhere becomes the Pod's address, and so does the Pod's loopback on a port
        its containers declare; a Service name one of its endpoints."""
        value = re.sub(r"(?<![\d.])0\.0\.0\.0(?![\d.])", pod_ip, value)
        value = re.sub(
            r"(?<![\d.])127\.0\.0\.1:(\d+)(?!\d)",
            lambda m: f"{pod_ip}:{m.group(1)}" if int(m.group(1)) in local_ports else m.group(0),
            value,
        )
        return _SERVICE_NAME.sub(self._endpoint, value)

    def _endpoint(self, match: re.Match[str]) -> str:
        """`svc.ns.svc:port` -> `podIP:targetPort` of a ready Pod the Service selects.

        The Service's selector is followed here rather than its EndpointSlices: the stand-in's
        Pod IPs are loopback addresses, which EndpointSlices may not hold.
        """
        namespace, service = match.group("ns"), match.group("svc")
        try:
            svc = self.plane.request("GET", f"/api/v1/namespaces/{namespace}/services/{service}")
        except ApiError:
            return match.group(0)
        wanted = int(match.group("port") or 80)
        port = next((p for p in svc["spec"].get("ports") or [] if p["port"] == wanted), None)
        selector = svc["spec"].get("selector") or {}
        if port is None or not selector:
            return match.group(0)
        with self._lock:
            workers = [w for w in self._workers.values() if w.namespace == namespace]
        for worker in workers:
            labels = worker.pod["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()) or not worker.running_main():
                continue
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):  # a named container port
                target = next(
                    (
                        p["containerPort"]
                        for c in worker.pod["spec"]["containers"]
                        for p in c.get("ports") or []
                        if p.get("name") == target
                    ),
                    None,
                )
            if target:
                return f"{worker.ip}:{target}"
        return match.group(0)

    # -- the Pod watch --------------------------------------------------------------------------

    def _watch(self) -> None:
        selector = f"spec.nodeName={NODE_NAME}"
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.plane.request(
                        "GET", f"/api/v1/pods?fieldSelector={urllib.parse.quote(selector)}"
                    )
                    for pod in listed["items"]:
                        self._seen(pod)
                    version = listed["metadata"]["resourceVersion"]
                for event in self.plane.watch(
                    "/api/v1/pods",
                    resource_version=version,
                    timeout_seconds=30,
                    stop=self._stop.is_set,
                    fieldSelector=selector,
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone: list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        self._gone(obj)
                    else:
                        self._seen(obj)
            except (OSError, ApiError, ValueError):
                if self._stop.wait(0.2):
                    return

    def _seen(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    return
                if pod["metadata"].get("deletionTimestamp"):
                    # Deleted before it ever ran: nothing to stop, confirm at once.
                    worker = _PodWorker(self, pod, "")
                    worker.deleted.set()
                    threading.Thread(target=worker._confirm_deletion, daemon=True).start()
                    return
                worker = _PodWorker(self, pod, next(self._addresses))
                self._workers[uid] = worker
                worker.thread.start()
                return
        was_deleted = worker.deleted.is_set()
        worker.update(pod)
        if worker.deleted.is_set() and not was_deleted:
            threading.Thread(target=worker.stop_for_deletion, daemon=True).start()

    def _gone(self, pod: dict[str, Any]) -> None:
        with self._lock:
            worker = self._workers.pop(pod["metadata"]["uid"], None)
        if worker is not None:
            worker.deleted.set()
            threading.Thread(target=worker._stop_all, args=(0,), daemon=True).start()


class _LogServer:
    """The kubelet's `/containerLogs/{namespace}/{pod}/{container}` endpoint, over TLS."""

    def __init__(self, kubelet: StandInKubelet) -> None:
        self.kubelet = kubelet
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pki = kubelet.plane.pki
        context.load_cert_chain(str(pki.kubelet_serving.cert), str(pki.kubelet_serving.key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        kubelet = self.kubelet

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                _, namespace, pod, container = parts
                query = urllib.parse.parse_qs(url.query)
                text = kubelet.log_of(namespace, pod, container)
                tail = query.get("tailLines")
                if tail:
                    text = "\n".join(text.splitlines()[-int(tail[0]) :]) + "\n"
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _status(spec: Mapping[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "state": state,
        "ready": "running" in state,
        "started": "running" in state,
        "restartCount": 0,
    }


def _map_path(value: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite a container path under a mount to the host folder (longest mount first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount) :]
    return value


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables replaced, `$$` escapes, rest kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, value)


@contextlib.contextmanager
def running_kubelet(plane: ControlPlane, *, images: bool = False) -> Iterator[StandInKubelet]:
    kubelet = StandInKubelet(plane, images=images).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[StandInKubelet]:
    """The session's stand-in kubelet: one Node running every Pod the scheduler binds to it."""
    with running_kubelet(control_plane) as node:
        yield node


def stand_in_settings(seconds: float, **env: str) -> NamespaceSettings:
    """Main containers that are the stand-in runner, alive for `seconds` (then exit 0)."""
    return NamespaceSettings(
        main_command=list(STAND_IN_RUNNER),
        env={"STAND_IN_SECONDS": str(seconds), **env},
    )
