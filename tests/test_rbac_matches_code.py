"""The chart's operator RBAC grants exactly what the operator's code calls, and nothing more.

How: the real operator process (the console script the chart runs, kopf included) drives a
scenario against the API emulator through a small recording reverse proxy. Only the operator's
kubeconfig points at the proxy, so every recorded request is the operator's (the test and the
test kubelet talk to the emulator directly). Each request is mapped to the attributes an RBAC
authorizer checks (verb, API group, resource[/subresource], namespace), then checked against
the rules that `helm template` binds to the operator's ServiceAccount:

- every request must be allowed (cluster-wide mode: the ClusterRole; single-namespace mode:
  the per-namespace Role plus the observer ClusterRole);
- every (group, resource, verb) the chart grants must have been used by the scenario or be in
  `NEEDED_BUT_NOT_EXERCISED`, with the reason it is needed, so an unjustified grant fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import aiohttp.web
import pytest
import yaml
from dioptra_operator import constants as c
from support.k8s_emulator import K8sApi, running_k8s_api, wait_until
from support.kubelet import OperatorProcess, stand_in_kubelet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "dioptra-operator"
RELEASE_NAMESPACE = "dioptra-system"
WATCHED_NAMESPACE = "default"

# How each mode is installed (helm --set) and how the chart then starts the operator (args).
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cluster-wide": ((), ("--all-namespaces", "--standalone")),
    "single-namespace": (
        ("watch.clusterWide=false", f"watch.namespaces={{{WATCHED_NAMESPACE}}}"),
        (f"--namespace={WATCHED_NAMESPACE}", "--standalone"),
    ),
}

Triple = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Grants the scenario cannot exercise, each with why the operator still needs it. Empty today:
# every grant is used by the scenario below. Add an entry only with a reason.
NEEDED_BUT_NOT_EXERCISED: dict[Triple, str] = {}

# What the operator's own code (k8s.py) calls; the scenario must reach every one of these, or
# the checks above would pass on a scenario that skipped code paths.
CALLS_OF_K8S_PY: dict[Triple, str] = {
    ("batch", "jobs", "create"): "create_job",
    ("batch", "jobs", "get"): "read_job",
    ("batch", "jobs", "patch"): "set_job_suspend",
    ("batch", "jobs", "delete"): "delete_job",
    ("dioptra.dev", "experiments", "get"): "read_experiment",
    ("dioptra.dev", "experiments/status", "patch"): "patch_experiment_status",
    ("", "events", "create"): "post_event (kopf posts core/v1 Events)",
}

# Paths anyone may read (system:discovery / system:public-info-viewer): no RBAC rule needed.
_DISCOVERY_PREFIXES = ("/version", "/openapi/")


# ---------------------------------------------------------------------------------------------
# Requests as an RBAC authorizer sees them (pure)
# ---------------------------------------------------------------------------------------------


class Access(NamedTuple):
    """The attributes of one resource request that RBAC decides on."""

    verb: str
    group: str
    resource: str  # "experiments" or "experiments/status"
    namespace: str | None  # None: cluster-scoped, or a namespaced resource across all namespaces
    name: str | None

    @property
    def triple(self) -> Triple:
        return (self.group, self.resource, self.verb)


def access_of(method: str, path: str, query: Mapping[str, str]) -> Access | None:
    """Map a request to RBAC attributes like the API server does; None for discovery.

    Raises ValueError for a non-resource path that is not discovery: RBAC would need a
    `nonResourceURLs` rule for it, which the chart does not have.
    """
    parts = [p for p in path.split("/") if p]
    if path in ("/api", "/apis") or path.startswith(_DISCOVERY_PREFIXES):
        return None
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 2:
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f"non-resource request {method} {path} needs a nonResourceURLs rule")
    if not rest:
        return None  # /api/v1, /apis/<group>, /apis/<group>/<version>: discovery
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        # /namespaces/<ns>/<resource>...; but /namespaces/<ns>/status is the Namespace's own.
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    verb = _verb(method.upper(), name, query)
    return Access(verb, group, resource, namespace, name)


def _verb(method: str, name: str | None, query: Mapping[str, str]) -> str:
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "DELETE":
        return "delete" if name is not None else "deletecollection"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch"}
    if method not in verbs:
        raise ValueError(f"no RBAC verb for HTTP method {method}")
    return verbs[method]


class Grant(NamedTuple):
    """A rule bound to the operator: everywhere (ClusterRoleBinding) or in one namespace."""

    namespace: str | None
    rule: Mapping[str, Any]


def rule_allows(rule: Mapping[str, Any], access: Access) -> bool:
    names = rule.get("resourceNames") or []
    return (
        access.group in (rule.get("apiGroups") or [])
        and access.resource in (rule.get("resources") or [])
        and access.verb in (rule.get("verbs") or [])
        and (not names or access.name in names)
    )


def allowed(grants: Sequence[Grant], access: Access) -> bool:
    """RBAC's decision: some rule allows it, in scope (a Role never covers cluster scope)."""
    return any(
        (grant.namespace is None or grant.namespace == access.namespace)
        and rule_allows(grant.rule, access)
        for grant in grants
    )


def granted_triples(grants: Sequence[Grant]) -> set[Triple]:
    return {
        (group, resource, verb)
        for grant in grants
        for group in grant.rule.get("apiGroups") or []
        for resource in grant.rule.get("resources") or []
        for verb in grant.rule.get("verbs") or []
    }


def operator_grants(docs: Sequence[Mapping[str, Any]]) -> list[Grant]:
    """The rules bound to the ServiceAccount the chart's operator Deployment runs as."""
    (deployment,) = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and any(ct["name"] == "operator" for ct in d["spec"]["template"]["spec"]["containers"])
    ]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    subject = ("ServiceAccount", account, deployment["metadata"].get("namespace"))
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    grants: list[Grant] = []
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
        if subject not in subjects:
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        grants.extend(Grant(scope, rule) for rule in role["rules"])
    return grants


# ---------------------------------------------------------------------------------------------
# The chart, rendered by the real helm
# ---------------------------------------------------------------------------------------------


def _helm() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), str(REPO / ".tools" / "bin")])
    found = shutil.which("helm", path=search)
    if found is None:
        pytest.fail("helm is not installed: run `make tools` (it lands in .tools/bin/helm)")
    return found


@functools.cache
def rendered(mode: str, home: Path) -> list[dict[str, Any]]:
    """`helm template` of the chart in one mode (cached per session)."""
    sets = [arg for value in MODES[mode][0] for arg in ("--set", value)]
    env = dict(os.environ)
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(home / name.lower())
    result = subprocess.run(
        [_helm(), "template", "dioptra", str(CHART), "--namespace", RELEASE_NAMESPACE, *sets],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


# ---------------------------------------------------------------------------------------------
# The recording proxy: the operator's only way to the API
# ---------------------------------------------------------------------------------------------


class Seen(NamedTuple):
    method: str
    path: str
    query: dict[str, str]


class RecordingProxy:
    """Forwards HTTP (watch streams included) to `upstream` and records every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rbac-proxy", daemon=True)

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def start(self) -> RecordingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording proxy did not start")
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            self._session = session
            # handler_cancellation: a watch ends here when the operator hangs up.
            server = aiohttp.web.Server(self._forward, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stopping.wait()
            await runner.cleanup()

    async def _forward(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        with self._lock:
            self._seen.append(Seen(request.method, request.path, dict(request.query)))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k in ("Content-Type", "Accept")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status)
            for name in ("Content-Type", "Content-Encoding"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def _kubeconfig_for(api: K8sApi, url: str, path: Path) -> Path:
    config = yaml.safe_load(api.kubeconfig_path.read_text())
    config["clusters"][0]["cluster"]["server"] = url
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------


def _experiment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": WATCHED_NAMESPACE},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, **spec},
    }


def _status(api: K8sApi, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name, WATCHED_NAMESPACE).get("status") or {})


def _wait_phase(api: K8sApi, name: str, phase: str) -> None:
    wait_until(
        lambda: _status(api, name).get("phase") == phase,
        timeout=30,
        what=f"{name} to reach {phase} (status now: {_status(api, name)})",
    )


def run_scenario(api: K8sApi) -> None:
    """Every code path of the operator that calls the API, in two Experiments run side by side.

    `quick` is created suspended, resumed (the Job is patched), runs to completion with the
    stand-in runner (status mirrored from Pod and Job watches) and posts Events; `tuned` runs,
    then a parameters change replaces its running Job (create g2, delete g1). Both are then
    deleted.
    """
    api.create(
        _experiment(
            "quick",
            suspend=True,
            runner={"env": [{"name": "STAND_IN_SECONDS", "value": "1"}]},
        )
    )
    api.create(_experiment("tuned", parameters={"epsilon": 0.1}))
    _wait_phase(api, "quick", c.Phase.SUSPENDED)
    api.patch("experiments", "quick", {"spec": {"suspend": False}}, WATCHED_NAMESPACE)
    _wait_phase(api, "tuned", c.Phase.RUNNING)
    api.patch("experiments", "tuned", {"spec": {"parameters": {"epsilon": 0.2}}})
    wait_until(
        lambda: _status(api, "tuned").get("jobName") == "tuned-g2",
        timeout=30,
        what="the new generation's Job",
    )
    wait_until(lambda: not api.exists("jobs", "tuned-g1"), timeout=30, what="tuned-g1 deleted")
    _wait_phase(api, "quick", c.Phase.SUCCEEDED)
    wait_until(
        lambda: any(
            (e.get("involvedObject") or {}).get("name") == "quick"
            and e["reason"] == c.Reason.JOB_CREATED
            for e in api.list("events", WATCHED_NAMESPACE)
        ),
        timeout=30,
        what="a JobCreated Event",
    )
    for name in ("quick", "tuned"):
        api.delete("experiments", name)
    wait_until(
        lambda: not api.list("experiments", WATCHED_NAMESPACE), timeout=30, what="the deletions"
    )


@functools.cache
def _observed_once(mode: str, folder: Path) -> tuple[Access, ...]:
    """Run the scenario with the operator started as the chart starts it in `mode`."""
    with (
        running_k8s_api(folder, record_requests=False) as api,
        contextlib.ExitStack() as stack,
    ):
        proxy = RecordingProxy(api.url).start()
        stack.callback(proxy.stop)
        kubeconfig = _kubeconfig_for(api, proxy.url, folder / "operator-kubeconfig")
        operator = OperatorProcess(
            api,
            {"DIOPTRA_RUNNER_IMAGE": "dioptra-runner:test", "KUBECONFIG": str(kubeconfig)},
            folder / "operator.log",
            args=MODES[mode][1],
        ).start()
        stack.callback(operator.stop)
        stack.enter_context(stand_in_kubelet(api, folder / "kubelet", 30))
        run_scenario(api)
        operator.stop()  # before reading: its last requests (Events) are in the record
        assert "Traceback" not in operator.log, operator.log
        seen = proxy.seen
    accesses = (access_of(s.method, s.path, s.query) for s in seen)
    return tuple(a for a in accesses if a is not None)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`observed(mode)`: the operator's requests in that mode (the scenario runs once a mode)."""
    folders: dict[str, Path] = {}

    def get(mode: str) -> tuple[Access, ...]:
        if mode not in folders:
            folders[mode] = tmp_path_factory.mktemp(f"rbac-{mode}")
        return _observed_once(mode, folders[mode])

    yield get


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_requests_map_to_the_rbac_verbs_the_api_server_checks() -> None:
    cases = {
        ("GET", "/apis/batch/v1/namespaces/ns/jobs/j", ""): ("get", "batch", "jobs", "ns"),
        ("GET", "/apis/batch/v1/jobs", ""): ("list", "batch", "jobs", None),
        ("GET", "/apis/batch/v1/jobs", "watch=true"): ("watch", "batch", "jobs", None),
        ("POST", "/api/v1/namespaces/ns/events", ""): ("create", "", "events", "ns"),
        ("PUT", "/api/v1/namespaces/ns/pods/p", ""): ("update", "", "pods", "ns"),
        ("DELETE", "/api/v1/namespaces/ns/pods", ""): ("deletecollection", "", "pods", "ns"),
        ("GET", "/api/v1/namespaces", "watch=1"): ("watch", "", "namespaces", None),
        ("PATCH", "/apis/dioptra.dev/v1alpha1/namespaces/ns/experiments/e/status", ""): (
            "patch",
            "dioptra.dev",
            "experiments/status",
            "ns",
        ),
    }
    for (method, path, query), wanted in cases.items():
        access = access_of(method, path, dict(urllib.parse.parse_qsl(query)))
        assert access is not None
        assert (access.verb, access.group, access.resource, access.namespace) == wanted, path
    for discovery in ("/api", "/api/v1", "/apis", "/apis/batch/v1", "/version", "/openapi/v2"):
        assert access_of("GET", discovery, {}) is None
    with pytest.raises(ValueError, match="nonResourceURLs"):
        access_of("GET", "/healthz", {})


def test_a_role_allows_requests_only_in_its_own_namespace() -> None:
    rule = {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]}
    in_lab = Access("list", "batch", "jobs", "lab", None)
    across_all = Access("list", "batch", "jobs", None, None)
    assert allowed([Grant("lab", rule)], in_lab)
    assert not allowed([Grant("lab", rule)], across_all)
    assert not allowed([Grant("other", rule)], in_lab)
    assert allowed([Grant(None, rule)], across_all)
    assert not allowed([Grant(None, rule)], in_lab._replace(verb="watch"))


@pytest.mark.parametrize("mode", MODES)
def test_the_scenario_reaches_every_api_call_in_the_operators_code(
    observed: Any, mode: str
) -> None:
    used = {access.triple for access in observed(mode)}
    missing = {t: fn for t, fn in CALLS_OF_K8S_PY.items() if t not in used}
    assert not missing, f"the scenario never called {missing}"


@pytest.mark.parametrize("mode", MODES)
def test_every_request_the_operator_makes_is_allowed_by_the_charts_rbac(
    observed: Any, helm_home: Path, mode: str
) -> None:
    grants = operator_grants(rendered(mode, helm_home))
    denied = sorted({a for a in observed(mode) if not allowed(grants, a)}, key=str)
    assert not denied, f"{mode}: the chart's RBAC would forbid {denied}"


@pytest.mark.parametrize("mode", MODES)
def test_every_permission_the_chart_grants_the_operator_is_used_or_justified(
    observed: Any, helm_home: Path, mode: str
) -> None:
    granted = granted_triples(operator_grants(rendered(mode, helm_home)))
    assert not any("*" in part for triple in granted for part in triple)
    used = {access.triple for access in observed(mode)}
    unjustified = sorted(granted - used - NEEDED_BUT_NOT_EXERCISED.keys())
    assert not unjustified, f"{mode}: granted but neither used nor justified: {unjustified}"
    stale = sorted(NEEDED_BUT_NOT_EXERCISED.keys() - granted)
    assert not stale, f"justified but no longer granted (drop them): {stale}"


def test_a_chart_without_the_job_rule_would_forbid_the_operators_job_requests(
    observed: Any, helm_home: Path
) -> None:
    grants = operator_grants(rendered("cluster-wide", helm_home))
    without_jobs = [g for g in grants if "jobs" not in (g.rule.get("resources") or [])]
    denied = {a.triple for a in observed("cluster-wide") if not allowed(without_jobs, a)}
    assert {("batch", "jobs", verb) for verb in ("create", "delete", "patch")} <= denied
    assert all(group == "batch" for group, _, _ in denied)
