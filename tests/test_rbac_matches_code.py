"""The chart's operator RBAC grants exactly what the operator's code calls, and nothing more.

How: in each mode the chart's RBAC is applied to a control plane of the test's own, and the
real operator process (the console script the chart runs, kopf included), logged in as the
chart's operator ServiceAccount, drives a scenario through a small recording reverse proxy.
Only the operator's kubeconfig points at the proxy, so every recorded request is the
operator's (the test and the stand-in kubelet talk to the API server directly).

- The real API server's RBAC authorizer decides every request: none may be refused (403).
- Each request is also mapped to the attributes an RBAC authorizer checks (verb, API group,
  resource[/subresource], namespace), and every (group, resource, verb) the chart grants must
  have been used by the scenario or be in `NEEDED_BUT_NOT_EXERCISED`, with the reason it is
  needed, so an unjustified grant fails.
- The scenario must reach every API call in the operator's code, and the chart must grant each:
  the calls are read from `k8s.py` itself (`ast`), and each is mapped to the request the
  installed kubernetes client sends for it, so no list of calls is written down here.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dioptra_api as c
import kubernetes.client
import pytest
from support.cluster import (
    Cluster,
    OperatorProcess,
    install_chart_rbac,
    install_crd,
    new_namespace,
    private_control_plane,
    render_chart,
    wait_until,
)
from support.kubelet import running_kubelet, stand_in_settings
from support.proxy import ApiProxy, Seen

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "dioptra-operator"
RELEASE_NAMESPACE = "dioptra-system"
WATCHED_NAMESPACE = "lab"

# How each mode is installed (helm --set) and how the chart then starts the operator (args).
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cluster-wide": ((), ("--all-namespaces", "--standalone")),
    "single-namespace": (
        ("watch.clusterWide=false", f"watch.namespaces={{{WATCHED_NAMESPACE}}}"),
        (f"--namespace={WATCHED_NAMESPACE}", "--standalone"),
    ),
}

Triple = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Grants the scenario cannot exercise, each with why the operator still needs it. Add an entry
# only with a reason.
NEEDED_BUT_NOT_EXERCISED: dict[Triple, str] = {
    ("dioptra.dev", "experiments/finalizers", "update"): (
        "never a request: the OwnerReferencesPermissionEnforcement admission plugin checks it "
        "when a Job with blockOwnerDeletion is created (the e2e tests run with that plugin on)"
    ),
}

K8S_PY = REPO / "operator" / "dioptra_operator" / "k8s.py"


def api_calls_of_k8s_py() -> dict[Access, str]:
    """Every API call in `k8s.py`, read from its source: the request's RBAC attributes -> the
    function making it.

    Nothing here names a resource or a verb: each `api.<method>(...)` on a
    `kubernetes.client.<SomeApi>(...)` object is looked up in the installed client, whose
    generated code says which HTTP method and path it sends; the call's own arguments fill the
    path (the `dioptra_api` constants for a custom object's group and plural), and `access_of`
    maps it as it maps a recorded request. `kopf.event(...)` is kopf posting a core Event. A
    method the client does not have fails the test.
    """
    calls: dict[Access, str] = {}
    tree = ast.parse(K8S_PY.read_text())
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        clients: dict[str, type] = {}
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and ast.unparse(node.value.func.value) == "kubernetes.client"
            ):
                api_class = getattr(kubernetes.client, node.value.func.attr)
                clients.update({t.id: api_class for t in node.targets if isinstance(t, ast.Name)})
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in clients:
                calls[_request_of(clients[owner.id], node)] = function.name
            elif ast.unparse(node.func) == "kopf.event":
                calls[Access("create", "", "events", "<namespace>", None)] = function.name
    return calls


def _request_of(api_class: type, call: ast.Call) -> Access:
    """The RBAC attributes of the request a client call sends, from the client's own code."""
    method = call.func.attr if isinstance(call.func, ast.Attribute) else ""
    serialize = getattr(api_class, f"_{method}_serialize", None)
    assert serialize is not None, f"{api_class.__name__} has no method {method}"
    source = inspect.getsource(serialize)
    http = re.search(r"method='(\w+)'", source)
    template = re.search(r"resource_path='([^']+)'", source)
    assert http and template, f"no request found in {api_class.__name__}.{method}"
    parameters = [p for p in inspect.signature(getattr(api_class, method)).parameters][1:]
    given = dict(zip(parameters, call.args, strict=False))
    given.update({kw.arg: kw.value for kw in call.keywords if kw.arg})

    def value(match: re.Match[str]) -> str:
        node = given.get(match.group(1))
        if isinstance(node, ast.Constant):
            return str(node.value)
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "c":
            return str(getattr(c, node.attr))
        return f"<{match.group(1)}>"

    path = re.sub(r"\{(\w+)\}", value, template.group(1))
    access = access_of(http.group(1), path, {})
    assert access is not None, f"{api_class.__name__}.{method} sends no resource request"
    return access


def calls_of_k8s_py() -> dict[Triple, str]:
    """(group, resource, verb) -> function, for every API call in `k8s.py`."""
    return {access.triple: function for access, function in api_calls_of_k8s_py().items()}


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


@functools.cache
def rendered(mode: str) -> list[dict[str, Any]]:
    """`helm template` of the chart in one mode (cached per session)."""
    return render_chart(RELEASE_NAMESPACE, "dioptra", MODES[mode][0])


def _experiment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": WATCHED_NAMESPACE},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, **spec},
    }


def _wait_phase(api: Cluster, name: str, phase: str) -> None:
    api.wait_for(
        "experiments",
        name,
        lambda e: ((e or {}).get("status") or {}).get("phase") == phase,
        what=f"{name} to reach {phase}",
    )


def run_scenario(api: Cluster) -> None:
    """Every code path of the operator that calls the API, in two Experiments run side by side.

    `quick` is created suspended, resumed (the Job is patched), runs to completion with the
    stand-in runner (status mirrored from Pod and Job watches) and posts Events; `tuned` runs,
    then a parameters change replaces its running Job (create g2, delete g1). Both are then
    deleted. `nobody` names a ServiceAccount that does not exist, so its Job never gets a
    Pod and the operator reads the Job controller's FailedCreate Events.
    """
    api.create(
        _experiment(
            "quick",
            suspend=True,
            runner={"env": [{"name": "STAND_IN_SECONDS", "value": "1"}]},
        )
    )
    api.create(_experiment("tuned", parameters={"epsilon": 0.1}))
    api.create(_experiment("nobody", serviceAccountName="absent"))
    _wait_phase(api, "quick", c.Phase.SUSPENDED)
    api.patch("experiments", "quick", {"spec": {"suspend": False}}, WATCHED_NAMESPACE)
    _wait_phase(api, "tuned", c.Phase.RUNNING)
    api.patch("experiments", "tuned", {"spec": {"parameters": {"epsilon": 0.2}}})
    api.wait_for(
        "experiments",
        "tuned",
        lambda e: ((e or {}).get("status") or {}).get("jobName") == "tuned-g2",
        what="the new generation's Job",
    )
    api.wait_for("jobs", "tuned-g1", lambda j: j is None, what="tuned-g1 deleted")
    _wait_phase(api, "quick", c.Phase.SUCCEEDED)
    wait_until(
        lambda: any(e["reason"] == c.Reason.JOB_CREATED for e in api.events_for("quick")),
        what="a JobCreated Event",
    )
    api.wait_for(
        "experiments",
        "nobody",
        lambda e: any(
            cond["reason"] == c.Reason.SERVICE_ACCOUNT_NOT_FOUND
            for cond in ((e or {}).get("status") or {}).get("conditions") or []
        ),
        timeout=60,
        what="the missing ServiceAccount to be named",
    )
    for name in ("quick", "tuned", "nobody"):
        api.delete("experiments", name)
    wait_until(lambda: not api.list("experiments"), what="the deletions")


def _observed_once(mode: str, folder: Path) -> tuple[Seen, ...]:
    """Run the scenario on a control plane of its own, the operator started as in `mode`."""
    with (
        private_control_plane(folder / "controlplane") as plane,
        running_kubelet(plane) as kubelet,
        contextlib.ExitStack() as stack,
    ):
        install_crd(plane)
        new_namespace(plane, WATCHED_NAMESPACE)
        api = Cluster(plane, WATCHED_NAMESPACE, folder / "cluster")
        api.wait_for("serviceaccounts", "default", bool)
        values = [*MODES[mode][0], f"runner.namespaces={{{WATCHED_NAMESPACE}}}"]
        rbac = install_chart_rbac(api, values, release_namespace=RELEASE_NAMESPACE)
        kubelet.configure(WATCHED_NAMESPACE, stand_in_settings(30))
        proxy = ApiProxy(plane).start()
        stack.callback(proxy.stop)
        operator = OperatorProcess(
            rbac,
            {"DIOPTRA_RUNNER_IMAGE": "dioptra-runner:test"},
            folder / "operator.log",
            args=MODES[mode][1],
            proxy=proxy,
        ).start()
        stack.callback(operator.stop)
        run_scenario(api)
        operator.stop()  # before reading: its last requests (Events) are in the record
        assert "Traceback" not in operator.log, operator.log
        return tuple(proxy.seen)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`observed(mode)`: the operator's requests in that mode (the scenario runs once a mode)."""
    seen: dict[str, tuple[Seen, ...]] = {}

    def get(mode: str) -> tuple[Seen, ...]:
        if mode not in seen:
            seen[mode] = _observed_once(mode, tmp_path_factory.mktemp(f"rbac-{mode}"))
        return seen[mode]

    yield get


def accesses(seen: Sequence[Seen]) -> list[Access]:
    found = (access_of(s.method, s.path, s.query) for s in seen)
    return [a for a in found if a is not None]


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


def test_the_api_calls_are_read_from_the_operators_code() -> None:
    calls = calls_of_k8s_py()
    assert calls[("batch", "jobs", "create")] == "create_job"
    assert calls[("batch", "jobs", "get")] == "read_job"
    assert calls[("dioptra.dev", "experiments", "get")] == "read_experiment"
    assert calls[("dioptra.dev", "experiments/status", "patch")] == "patch_experiment_status"
    assert calls[("", "events", "list")] == "job_creation_failures"
    assert calls[("", "events", "create")] == "post_event"


def test_every_function_of_k8s_py_that_talks_to_the_api_is_found() -> None:
    # A function building a kubernetes.client API object, or posting through kopf, must show
    # up with at least one call: a call the reader missed would go unchecked.
    tree = ast.parse(K8S_PY.read_text())
    talking = {
        function.name
        for function in tree.body
        if isinstance(function, ast.FunctionDef)
        and re.search(r"kubernetes\.client\.\w+Api\(|kopf\.event\(", ast.unparse(function))
    }
    assert talking and set(calls_of_k8s_py().values()) == talking


@pytest.mark.parametrize("mode", MODES)
def test_the_chart_grants_every_api_call_in_the_operators_code(mode: str) -> None:
    grants = operator_grants(rendered(mode))
    refused = {
        function: access.triple
        for access, function in api_calls_of_k8s_py().items()
        if not allowed(grants, access._replace(namespace=WATCHED_NAMESPACE))
    }
    assert not refused, f"{mode}: the chart does not grant {refused}"


@pytest.mark.parametrize("mode", MODES)
def test_the_scenario_reaches_every_api_call_in_the_operators_code(
    observed: Any, mode: str
) -> None:
    used = {access.triple for access in accesses(observed(mode))}
    missing = {t: fn for t, fn in calls_of_k8s_py().items() if t not in used}
    assert not missing, f"the scenario never called {missing}"


@pytest.mark.parametrize("mode", MODES)
def test_the_api_server_allows_every_request_the_operator_makes(observed: Any, mode: str) -> None:
    refused = [s for s in observed(mode) if s.status in (401, 403)]
    assert not refused, f"{mode}: the chart's RBAC refused {refused}"


@pytest.mark.parametrize("mode", MODES)
def test_every_request_is_allowed_by_the_rules_as_this_test_reads_them(
    observed: Any, mode: str
) -> None:
    # The server's verdict above is the truth; this keeps `allowed` (used below) honest.
    grants = operator_grants(rendered(mode))
    denied = sorted({a for a in accesses(observed(mode)) if not allowed(grants, a)}, key=str)
    assert not denied, f"{mode}: the rules would forbid {denied}"


@pytest.mark.parametrize("mode", MODES)
def test_every_permission_the_chart_grants_the_operator_is_used_or_justified(
    observed: Any, mode: str
) -> None:
    granted = granted_triples(operator_grants(rendered(mode)))
    assert not any("*" in part for triple in granted for part in triple)
    used = {access.triple for access in accesses(observed(mode))}
    unjustified = sorted(granted - used - NEEDED_BUT_NOT_EXERCISED.keys())
    assert not unjustified, f"{mode}: granted but neither used nor justified: {unjustified}"
    stale = sorted(NEEDED_BUT_NOT_EXERCISED.keys() - granted)
    assert not stale, f"justified but no longer granted (drop them): {stale}"


def test_a_chart_without_the_job_rule_would_forbid_the_operators_job_requests(
    observed: Any,
) -> None:
    grants = operator_grants(rendered("cluster-wide"))
    without_jobs = [g for g in grants if "jobs" not in (g.rule.get("resources") or [])]
    denied = {a.triple for a in accesses(observed("cluster-wide")) if not allowed(without_jobs, a)}
    assert {("batch", "jobs", verb) for verb in ("create", "delete", "patch")} <= denied
    assert all(group == "batch" for group, _, _ in denied)
