"""Fixtures on the real control plane: the session's cluster, a namespace per test, the RBAC.

- `control_plane` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
- `cluster` (per test): a fresh namespace, labelled to enforce the restricted Pod Security
  Standard, and a `Cluster` handle whose helpers default to it. It is deleted at teardown;
  the namespace controller and the garbage collector clean up the rest, as on any cluster.
- `experiment_crd` (session): `crds/` applied with kubectl and Established.
- `chart_rbac` (per test): the chart's ServiceAccounts, Roles and bindings for the test's
  namespace, rendered by the real `helm template` in single-namespace mode and applied with
  kubectl. The operator and the runner authenticate as those ServiceAccounts, so what the
  chart grants is exactly what they may do.
- `operator_process`: the real operator (`dioptra-operator`, as the chart's Deployment runs it)
  authenticated as the chart's operator ServiceAccount.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.controlplane import (
    CONTROL_PLANE_BIN,
    ApiError,
    ControlPlane,
    kubectl_env,
    start_control_plane,
)
from support.proxy import ApiProxy

__all__ = [
    "CHART",
    "CRD_PATH",
    "ApiError",
    "ChartRbac",
    "Cluster",
    "OperatorProcess",
    "chart_rbac",
    "cluster",
    "control_plane",
    "experiment_crd",
    "helm",
    "install_chart_rbac",
    "install_crd",
    "kubectl_binary",
    "operator_process",
    "private_control_plane",
    "render_chart",
    "runner_operator",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TOOLS_BIN = REPO / ".tools" / "bin"
CHART = REPO / "charts" / "dioptra-operator"
CRD_PATH = REPO / "crds" / "experiments.dioptra.dev.yaml"
OPERATOR_SA = "dioptra-operator"
RUNNER_SA = "dioptra-runner"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def kubectl_binary() -> str:
    """The kubectl built with the control plane; a test without it fails, saying how to fix it."""
    path = CONTROL_PLANE_BIN / "kubectl"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (it builds kubectl with the cluster)")
    return str(path)


def helm(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real helm (from `make tools`), with its caches in a private folder."""
    binary = TOOLS_BIN / "helm"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `make tools`")
    home = REPO / ".tools" / "helm-home"
    full_env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        **(env or {}),
    }
    result = subprocess.run(
        [str(binary), *args],
        env=full_env,
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


class Cluster:
    """What a test gets: the control plane, a namespace of its own, and request helpers.

    Every helper takes `namespace=None` to mean the test's namespace. Requests are made as the
    cluster admin; the components under test use their own ServiceAccounts.
    """

    def __init__(self, plane: ControlPlane, namespace: str, folder: Path) -> None:
        self.plane = plane
        self.namespace = namespace
        self.folder = folder
        self.url = plane.url
        self.kubeconfig_path = plane.kubeconfig(folder / "admin.kubeconfig", namespace=namespace)

    # -- access for subprocesses and clients ---------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables that point kubectl, helm and the kubernetes client here, as admin."""
        return {"KUBECONFIG": str(self.kubeconfig_path)}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl (built with the control plane), as admin, in the test's namespace."""
        result = subprocess.run(
            [kubectl_binary(), *args],
            env=kubectl_env(
                self.kubeconfig_path, {"KUBECACHEDIR": str(self.folder / "kube-cache")}
            ),
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` logged in as admin."""
        import kubernetes

        return kubernetes.config.new_client_from_config(str(self.kubeconfig_path))

    # -- REST helpers ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.plane.request(method, path, body, **kwargs)

    def path(
        self,
        ref: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        return self.plane.path(ref, namespace or self.namespace, name, subresource)

    def _ref_for(self, body: Mapping[str, Any]) -> str:
        group, _, version = str(body["apiVersion"]).rpartition("/")
        kind = str(body["kind"]).lower()
        if not group:
            return kind
        self.plane.resolve(kind)  # refresh discovery for a CRD installed mid-session
        return next(
            name
            for name, entry in self.plane._discovery.items()
            if entry[0] == f"/apis/{group}/{version}" and entry[3].lower() == kind
        )

    def create(self, body: Mapping[str, Any], namespace: str | None = None) -> Any:
        """POST an object; a `status` in `body` is then written through `/status`."""
        ref = self._ref_for(body)
        namespace = (body.get("metadata") or {}).get("namespace") or namespace or self.namespace
        created = self.request("POST", self.path(ref, namespace), dict(body))
        if "status" in body:
            with contextlib.suppress(ApiError):
                created = self.patch(
                    ref,
                    created["metadata"]["name"],
                    {"status": body["status"]},
                    namespace=namespace,
                    subresource="status",
                )
        return created

    def get(self, ref: str, name: str, namespace: str | None = None) -> Any:
        return self.request("GET", self.path(ref, namespace, name))

    def list(self, ref: str, namespace: str | None = None, **params: str) -> list[Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        items: list[Any] = self.request("GET", self.path(ref, namespace) + query)["items"]
        return items

    def patch(
        self,
        ref: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Any:
        """JSON merge patch for a dict, JSON patch for a list."""
        content_type = (
            "application/json-patch+json"
            if isinstance(patch, list)
            else "application/merge-patch+json"
        )
        return self.request(
            "PATCH",
            self.path(ref, namespace, name, subresource),
            patch,
            content_type=content_type,
        )

    def delete(
        self, ref: str, name: str, namespace: str | None = None, propagation: str = "Background"
    ) -> Any:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        return self.request("DELETE", self.path(ref, namespace, name), body)

    def exists(self, ref: str, name: str, namespace: str | None = None) -> bool:
        try:
            self.get(ref, name, namespace)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def events_for(self, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Core Events about an object of the test's namespace, oldest first."""
        selector = f"involvedObject.name={name}"
        if kind:
            selector += f",involvedObject.kind={kind}"
        return self.list("events", fieldSelector=selector)

    def wait_for(
        self,
        ref: str,
        name: str,
        predicate: Callable[[dict[str, Any] | None], Any],
        *,
        timeout: float = 30.0,
        what: str = "",
        namespace: str | None = None,
    ) -> Any:
        """Watch one object until `predicate(object)` (None once deleted) holds; return the object.

        Event-driven: the test wakes on the change that satisfies it, not on a poll interval.
        """
        deadline = time.monotonic() + timeout
        collection = self.path(ref, namespace)
        selector = f"metadata.name={name}"
        last: dict[str, Any] | None = None
        while True:
            listed = self.request(
                "GET", f"{collection}?fieldSelector={urllib.parse.quote(selector)}"
            )
            last = (listed.get("items") or [None])[0]
            if predicate(last):
                return last
            version = listed["metadata"]["resourceVersion"]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(OSError, ValueError):
                for event in self.plane.watch(
                    collection,
                    resource_version=version,
                    timeout_seconds=max(1, int(remaining)),
                    fieldSelector=selector,
                ):
                    if event["type"] in ("BOOKMARK",):
                        continue
                    if event["type"] == "ERROR":
                        break  # too old a version: list again
                    last = None if event["type"] == "DELETED" else event["object"]
                    if predicate(last):
                        return last
                    if time.monotonic() > deadline:
                        break
            if time.monotonic() > deadline:
                break
        pytest.fail(
            f"timed out after {timeout}s waiting for {what or ref + '/' + name}; last seen: "
            f"{json.dumps((last or {}).get('status'), default=str)[:2000]}"
        )


def _short_name(node_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", node_name.lower().removeprefix("test_"))[:40].strip("-")
    return f"{stem or 't'}-{uuid.uuid4().hex[:5]}"


def new_namespace(plane: ControlPlane, name: str, labels: Mapping[str, str] | None = None) -> str:
    plane.request(
        "POST",
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {**RESTRICTED, **(labels or {})}},
        },
    )
    return name


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane (about 10 s to start; the time is printed)."""
    plane = start_control_plane(tmp_path_factory.mktemp("controlplane"))
    print(f"\ncontrol plane ready in {plane.started_in:.1f} s at {plane.url}")
    try:
        yield plane
    finally:
        plane.stop()


def install_crd(plane: ControlPlane) -> dict[str, Any]:
    """Apply `crds/` with kubectl and wait for the CRD to be Established; return it."""
    result = subprocess.run(
        [kubectl_binary(), "apply", "-f", str(CRD_PATH)],
        env=kubectl_env(plane.admin_kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"the API server refused crds/: {result.stderr}")
    return wait_for_crd(plane)


def wait_for_crd(plane: ControlPlane) -> dict[str, Any]:
    name = yaml.safe_load(CRD_PATH.read_text())["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"

    def established() -> dict[str, Any] | None:
        try:
            crd = plane.request("GET", path)
        except ApiError:
            return None
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        return crd if conditions.get("Established") == "True" else None

    return dict(wait_until(established, what="the CRD to be Established"))


@pytest.fixture(scope="session")
def experiment_crd(control_plane: ControlPlane) -> dict[str, Any]:
    """The Experiment CRD from `crds/`, applied with kubectl and Established."""
    return install_crd(control_plane)


@contextlib.contextmanager
def private_control_plane(folder: Path) -> Iterator[ControlPlane]:
    """A control plane of one's own, for tests that need the whole cluster to themselves
    (cluster-wide operators, a chart that installs the CRD)."""
    plane = start_control_plane(folder)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture()
def cluster(
    control_plane: ControlPlane, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Cluster]:
    """A namespace of the test's own on the session's control plane, deleted afterwards."""
    namespace = new_namespace(control_plane, _short_name(request.node.name))
    handle = Cluster(control_plane, namespace, tmp_path / "cluster")
    # Pods need the namespace's default ServiceAccount, which its controller adds in a moment.
    handle.wait_for("serviceaccounts", "default", bool, what="the default ServiceAccount")
    try:
        yield handle
    finally:
        control_plane.check_alive()
        with contextlib.suppress(ApiError):
            control_plane.request("DELETE", f"/api/v1/namespaces/{namespace}")


class ChartRbac:
    """The chart's identities, applied for real: the operator's and the runners'."""

    def __init__(
        self, cluster: Cluster, release: str, namespace: str, manifests: list[dict[str, Any]]
    ) -> None:
        self.cluster = cluster
        self.release = release
        self.namespace = namespace  # the release's namespace, where the operator's account is
        self.manifests = manifests
        self.operator_sa = release
        self.runner_sa = RUNNER_SA

    def operator_token(self) -> str:
        return self.cluster.plane.token(self.namespace, self.operator_sa)

    def operator_kubeconfig(self, path: Path) -> Path:
        return self.cluster.plane.kubeconfig(
            path, namespace=self.cluster.namespace, token=self.operator_token()
        )

    def remove_cluster_scoped(self) -> None:
        for manifest in self.manifests:
            if manifest["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                with contextlib.suppress(ApiError):
                    self.cluster.delete(manifest["kind"].lower(), manifest["metadata"]["name"])


def render_chart(
    namespace: str, release: str, values: Sequence[str] = (), show_only: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` values (only the named templates, if any)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for value in values:
        args += ["--set", value]
    for template in show_only:
        args += ["--show-only", template]
    rendered = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


RBAC_TEMPLATES = (
    "templates/serviceaccount.yaml",
    "templates/rbac.yaml",
    "templates/runner-rbac.yaml",
)


def install_chart_rbac(
    cluster: Cluster,
    values: Sequence[str] | None = None,
    *,
    release_namespace: str | None = None,
) -> ChartRbac:
    """Apply the chart's ServiceAccounts and RBAC (no Deployment), rendered by `helm template`.

    By default in single-namespace mode for the test's namespace, the release in it too.
    """
    namespace = release_namespace or cluster.namespace
    release = f"dioptra-{cluster.namespace}"[:53]
    if values is None:
        values = ["watch.clusterWide=false", f"watch.namespaces={{{cluster.namespace}}}"]
    manifests = render_chart(
        namespace,
        release,
        [f"fullnameOverride={release}", "crds.enabled=false", *values],
        RBAC_TEMPLATES,
    )
    if not cluster.exists("namespaces", namespace):
        new_namespace(cluster.plane, namespace)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    return ChartRbac(cluster, release, namespace, manifests)


@pytest.fixture()
def chart_rbac(cluster: Cluster, experiment_crd: dict[str, Any]) -> Iterator[ChartRbac]:
    rbac = install_chart_rbac(cluster)
    try:
        yield rbac
    finally:
        rbac.remove_cluster_scoped()


class OperatorProcess:
    """The operator under test, started as the chart's Deployment runs it.

    `dioptra-operator --standalone --namespace=<test namespace>` from the virtualenv, logged in
    as the chart's operator ServiceAccount, with the chart's `DIOPTRA_*` variables.
    `restart()` kills it hard (SIGKILL, like a crashed pod) and starts a new one.
    """

    def __init__(
        self,
        rbac: ChartRbac,
        env: Mapping[str, str],
        log_path: Path,
        args: Sequence[str] | None = None,
        proxy: ApiProxy | None = None,
    ) -> None:
        self.rbac = rbac
        namespace = rbac.cluster.namespace
        self.args = list(args) if args is not None else ["--standalone", f"--namespace={namespace}"]
        kubeconfig = log_path.parent / "operator.kubeconfig"
        if proxy is None:
            self.kubeconfig = rbac.operator_kubeconfig(kubeconfig)
        else:  # every request goes through the test's proxy (recorded, faults injected)
            self.kubeconfig = proxy.kubeconfig(rbac.operator_token(), kubeconfig, namespace)
        self.env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "KUBECONFIG": str(self.kubeconfig),
            "DIOPTRA_METRICS_PORT": "0",
            "POD_NAMESPACE": namespace,
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_start = 0
        self._lock = threading.Lock()

    def start(self) -> OperatorProcess:
        # Where this process's log begins: the former one's lines (before a restart) never
        # count for the new one, even before the new one has written anything.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "dioptra-operator"), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
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

    @property
    def log_since_start(self) -> str:
        """The log of the current process only (after the last `restart()`)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self._log_start :].decode(errors="replace")


@contextlib.contextmanager
def operator_running(
    chart_rbac: ChartRbac, env: Mapping[str, str], tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The real operator with `env`, stopped on the way out; its log's end is printed, which
    pytest shows only when the test failed."""
    process = OperatorProcess(chart_rbac, dict(env), tmp_path / "operator.log").start()
    try:
        yield process
    finally:
        process.stop()
        print("--- operator log (last 60 lines) ---\n" + "\n".join(process.log.splitlines()[-60:]))


@pytest.fixture()
def operator_process(chart_rbac: ChartRbac, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The real operator watching the test's namespace; stopped at teardown."""
    with operator_running(
        chart_rbac, {"DIOPTRA_RUNNER_IMAGE": "dioptra-runner:test"}, tmp_path
    ) as process:
        yield process


@pytest.fixture()
def runner_operator(
    chart_rbac: ChartRbac, prefect_api_url: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The real operator, its Jobs' runners pointed at the session's Prefect server."""
    with operator_running(
        chart_rbac, {"DIOPTRA_PREFECT_API_URL": prefect_api_url}, tmp_path
    ) as process:
        yield process
