"""A real Kubernetes control plane for tests: etcd, kube-apiserver, controller-manager, scheduler.

The binaries are upstream's, built from the Go modules pinned in `tests/controlplane/` by
`make tools` into `.tools/controlplane/bin`. One control plane serves the whole pytest session
on 127.0.0.1 (free ports, PKI and data in a temp folder); each test gets a namespace of its own
(`cluster` fixture), so tests stay independent without paying the ~10 s start again.

What runs, and why:
- kube-apiserver with RBAC authorization and the default admission plugins plus
  `OwnerReferencesPermissionEnforcement` (OpenShift turns it on; it makes `blockOwnerDeletion`
  need `update` on the owner's finalizers), TokenRequest for ServiceAccount tokens.
- kube-controller-manager with only the controllers our product leans on: Job, garbage collector,
  ServiceAccount (and its token controller), namespace deletion, TTL after finished,
  Deployment/ReplicaSet (the chart's operator and Prefect server), the root CA publisher (the
  `kube-root-ca.crt` ConfigMap every ServiceAccount token volume projects) and ClusterRole
  aggregation. No node lifecycle controller: the stand-in node never heartbeats and must not
  be tainted away.
- kube-scheduler, which binds Pods to the stand-in kubelet's Node.
Nothing else is faked here; the stand-in kubelet lives in `support/kubelet.py`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support.pki import CertPair, Pki, make_pki

__all__ = [
    "CONTROL_PLANE_BIN",
    "ApiError",
    "ControlPlane",
    "ControlPlaneUnavailable",
    "free_port",
    "start_control_plane",
]

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE_BIN = REPO / ".tools" / "controlplane" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
# Controllers the product and the tests rely on (kube-controller-manager --controllers).
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
)


class ControlPlaneUnavailable(RuntimeError):
    """A binary is missing or a component did not become ready; the message says which."""


class ApiError(Exception):
    """An HTTP error answered by the API server to one of ControlPlane's helpers."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    path = CONTROL_PLANE_BIN / name
    if not path.exists():
        raise ControlPlaneUnavailable(
            f"{path} is missing: run `make tools` (it builds the control plane from "
            "tests/controlplane/*/go.mod)"
        )
    return str(path)


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    """A running control plane: its URL, PKI, admin kubeconfig and request helpers."""

    folder: Path
    pki: Pki
    url: str
    admin_kubeconfig: Path
    components: dict[str, _Component] = field(default_factory=dict)
    started_in: float = 0.0
    _discovery: dict[str, tuple[str, str, bool, str]] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        # Clients first, the store last: nothing then logs a lost connection to etcd.
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            component = self.components.pop(name, None)
            if component is None or component.process.poll() is not None:
                continue
            component.process.terminate()
            try:
                component.process.wait(15)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait(5)

    def check_alive(self) -> None:
        """Fail loudly when a component died (its log's tail says why)."""
        for component in self.components.values():
            if component.process.poll() is not None:
                raise ControlPlaneUnavailable(
                    f"{component.name} exited with {component.process.returncode}:\n"
                    + component.tail()
                )

    # -- credentials ----------------------------------------------------------------------------

    def kubeconfig(
        self,
        path: Path,
        *,
        namespace: str = "default",
        token: str | None = None,
        client: CertPair | None = None,
    ) -> Path:
        """Write a kubeconfig for this server: a bearer token, a client certificate or admin."""
        user: dict[str, Any]
        if token is not None:
            user = {"token": token}
        else:
            pair = client or self.pki.admin
            user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.pki.ca.cert),
                    },
                }
            ],
            "users": [{"name": "test", "user": user}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        seconds: int = 3600,
        bound_pod: tuple[str, str] | None = None,
    ) -> str:
        """A ServiceAccount token from the TokenRequest API (bound to a Pod when given)."""
        spec: dict[str, Any] = {
            "audiences": [SERVICE_ACCOUNT_ISSUER],
            "expirationSeconds": seconds,
        }
        if bound_pod is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": bound_pod[0],
                "uid": bound_pod[1],
            }
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def service_account_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (what its Pods would get)."""
        return self.kubeconfig(
            path, namespace=namespace, token=self.token(namespace, service_account)
        )

    # -- HTTP -----------------------------------------------------------------------------------

    def ssl_context(self, client: CertPair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        pair = client or self.pki.admin
        context.load_cert_chain(str(pair.cert), str(pair.key))
        return context

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        timeout: float = 30,
    ) -> Any:
        """One API call as admin (or with `token`); JSON in and out, ApiError on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        else:
            context = self._admin_context
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(error.code, payload) from None

    @property
    def _admin_context(self) -> ssl.SSLContext:
        context = self.__dict__.get("_admin_ssl")
        if context is None:
            context = self.ssl_context()
            self.__dict__["_admin_ssl"] = context
        return context

    def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
        stop: Callable[[], bool] | None = None,
        **params: str,
    ) -> Iterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`) on a collection path until the server ends it."""
        query = {"watch": "true", "timeoutSeconds": str(timeout_seconds), **params}
        if resource_version:
            query["resourceVersion"] = resource_version
            query["allowWatchBookmarks"] = "true"
        request = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(query)}")
        request.add_header("Accept", "application/json")
        with urllib.request.urlopen(
            request, timeout=timeout_seconds + 10, context=self._admin_context
        ) as response:
            for line in response:
                if stop is not None and stop():
                    return
                if line.strip():
                    yield json.loads(line)

    # -- discovery ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str, str, bool, str]:
        """(api prefix, plural, namespaced, kind) for a plural, kind, short name or group/plural.

        Re-reads discovery on a miss, so CRDs created during the session are found.
        """
        key = ref.lower()
        if key not in self._discovery:
            self._discover()
        try:
            return self._discovery[key]
        except KeyError:
            raise KeyError(f"the API server serves no resource called {ref!r}") from None

    def _discover(self) -> None:
        found: dict[str, tuple[str, str, bool, str]] = {}
        prefixes = ["/api/v1"]
        for group in self.request("GET", "/apis")["groups"]:
            prefixes.append(f"/apis/{group['preferredVersion']['groupVersion']}")
        # Core and preferred versions first, so `events` means core/v1 events, as for kubectl.
        for prefix in prefixes:
            try:
                resources = self.request("GET", prefix)["resources"]
            except ApiError:
                continue
            group = prefix.split("/")[2] if prefix.startswith("/apis/") else ""
            for res in resources:
                if "/" in res["name"]:
                    continue
                entry = (prefix, res["name"], bool(res["namespaced"]), res["kind"])
                names = [res["name"], res["kind"].lower(), res.get("singularName") or ""]
                names += res.get("shortNames") or []
                if group:
                    names.append(f"{res['name']}.{group}")
                    names.append(f"{prefix[len('/apis/') :]}/{res['name']}")
                else:
                    names.append(f"v1/{res['name']}")
                for name in filter(None, names):
                    found.setdefault(name.lower(), entry)
        self._discovery = found

    def path(
        self,
        ref: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        prefix, plural, namespaced, _ = self.resolve(ref)
        base = prefix
        if namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        return "/".join([base, plural, *(p for p in (name, subresource) if p)])


def _wait_ready(plane: ControlPlane, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        plane.check_alive()
        try:
            with urllib.request.urlopen(
                plane.url + "/readyz", timeout=5, context=plane.ssl_context()
            ) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.2)
    raise ControlPlaneUnavailable(
        f"kube-apiserver was not ready in time ({last}):\n"
        + plane.components["kube-apiserver"].tail()
    )


def _wait_for_controllers(plane: ControlPlane, deadline: float) -> None:
    """The ServiceAccount controller's first act proves the controller-manager is working."""
    while time.monotonic() < deadline:
        plane.check_alive()
        with contextlib.suppress(ApiError):
            plane.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return
        time.sleep(0.2)
    raise ControlPlaneUnavailable(
        "kube-controller-manager did not create the default ServiceAccount in time:\n"
        + plane.components["kube-controller-manager"].tail()
    )


def _start(name: str, args: list[str], folder: Path) -> _Component:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_binary(name), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C on pytest must not kill etcd before the rest
        )
    return _Component(name, process, log)


def start_control_plane(folder: Path | None = None, timeout: float = 90.0) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler; wait for them."""
    for name in BINARIES:
        _binary(name)
    folder = folder or Path(tempfile.mkdtemp(prefix="controlplane-"))
    started = time.monotonic()
    pki = make_pki(folder / "pki")
    etcd_client, etcd_peer, secure = free_port(), free_port(), free_port()
    plane = ControlPlane(
        folder=folder,
        pki=pki,
        url=f"https://127.0.0.1:{secure}",
        admin_kubeconfig=folder / "admin.kubeconfig",
    )
    plane.kubeconfig(plane.admin_kubeconfig)
    try:
        plane.components["etcd"] = _start(
            "etcd",
            [
                "--name=test",
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=test=http://127.0.0.1:{etcd_peer}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # Test data is thrown away: no fsync makes every write ~10x cheaper.
                "--unsafe-no-fsync",
            ],
            folder,
        )
        plane.components["kube-apiserver"] = _start(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={secure}",
                f"--cert-dir={folder / 'apiserver'}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                # The only "node" is the stand-in kubelet on loopback: no endpoints to publish.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
            folder,
        )
        _wait_ready(plane, started + timeout)
        for name, user in (
            ("kube-controller-manager", pki.controller_manager),
            ("kube-scheduler", pki.scheduler),
        ):
            plane.kubeconfig(folder / f"{name}.kubeconfig", client=user)
        plane.components["kube-controller-manager"] = _start(
            "kube-controller-manager",
            [
                f"--kubeconfig={folder / 'kube-controller-manager.kubeconfig'}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={folder / 'kube-controller-manager'}",
                "--v=1",
            ],
            folder,
        )
        plane.components["kube-scheduler"] = _start(
            "kube-scheduler",
            [
                f"--kubeconfig={folder / 'kube-scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={folder / 'kube-scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={folder / 'kube-scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={folder / 'kube-scheduler'}",
                "--v=1",
            ],
            folder,
        )
        _wait_for_controllers(plane, started + timeout)
    except BaseException:
        plane.stop()
        raise
    plane.started_in = time.monotonic() - started
    return plane


def kubectl_env(kubeconfig: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which kubectl and helm talk to the test control plane."""
    path = os.pathsep.join([str(CONTROL_PLANE_BIN), os.environ.get("PATH", "")])
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": path, **(extra or {})}


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()
