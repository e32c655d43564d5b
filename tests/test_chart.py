"""The Helm chart, rendered by the real `helm` binary and checked against Kubernetes' schemas.

Still to come: a test that the rendered operator RBAC grants nothing beyond the API calls the
operator's code makes (needs the operator's client module to list its calls).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "dioptra-operator"
CRD_PATH = REPO / "crds" / "experiments.dioptra.dev.yaml"
K8S_VERSION = kubernetes_validate.latest_version()

MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "single-namespace": {"watch": {"clusterWide": False, "namespaces": ["lab-a", "lab-b"]}},
    "release-namespace-only": {"watch": {"clusterWide": False}},
    "no-crd-no-metrics-debug": {
        "crds": {"enabled": False},
        "metrics": {"enabled": False},
        "logLevel": "debug",
    },
    "everything-set": {
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "runner": {"image": {"tag": "1.2.3"}, "namespaces": ["lab-a", "lab-b"]},
        "s3": {
            "endpoint": "http://minio.storage:9000",
            "region": "us-east-1",
            "credentialsSecret": "s3-credentials",
        },
        "prefect": {"apiUrl": "http://prefect.prefect:4200/api"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/team": "red"},
        "priorityClassName": "system-cluster-critical",
    },
}


def find_helm() -> str:
    """The real helm: on PATH, else `<repo>/.tools/bin/helm` (installed by `make tools`)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(REPO / ".tools" / "bin")])
    found = shutil.which("helm", path=search)
    if found is None:
        pytest.fail("helm is not installed: run `make tools` (it lands in .tools/bin/helm)")
    return found


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(home / name.lower())
    return env


Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(helm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = find_helm()
    folder = tmp_path_factory.mktemp("values")

    def run(command: str, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        values_file = folder / f"values-{abs(hash(repr(values)))}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        args = [binary, command]
        if command == "template":
            args += ["dioptra", str(CHART), "--namespace", "dioptra-system"]
        else:
            args += [str(CHART), "--namespace", "dioptra-system"]
        args += ["--values", str(values_file), *extra]
        return subprocess.run(args, capture_output=True, text=True, env=helm_env, check=False)

    return run


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(helm: Helm, mode: str) -> list[dict[str, Any]]:
    """Rendered manifests of one mode (cached: helm costs ~0.1 s a call)."""
    if mode not in _rendered:
        result = helm("template", MODES[mode])
        assert result.returncode == 0, result.stderr
        _rendered[mode] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[mode]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What breaks the restricted Pod Security Standard in a Pod spec (pure, the main rules)."""
    found = []
    pod_ctx = pod_spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            found.append(f"{key} is set")
    for volume in pod_spec.get("volumes", []):
        allowed = {"configMap", "emptyDir", "projected", "secret", "downwardAPI", "csi"}
        kinds = set(volume) - {"name"}
        if not kinds <= allowed | {"persistentVolumeClaim", "ephemeral"}:
            found.append(f"volume {volume['name']} uses {kinds}")
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    for container in containers:
        name = container["name"]
        ctx = container.get("securityContext", {})
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{name}: runs as UID 0")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is not RuntimeDefault/Localhost")
        if not ctx.get("readOnlyRootFilesystem"):
            found.append(f"{name}: root filesystem is writable")  # our bar, beyond restricted
        if container.get("ports") and any(p.get("hostPort") for p in container["ports"]):
            found.append(f"{name}: uses a hostPort")
    return found


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_strict_passes(helm: Helm, mode: str) -> None:
    result = helm("lint", MODES[mode], "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_every_rendered_manifest_is_valid_against_the_kubernetes_schemas(
    helm: Helm, mode: str
) -> None:
    for doc in render(helm, mode):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kubernetes_validation_rejects_an_unknown_field(helm: Helm) -> None:
    (deployment,) = of_kind(render(helm, "default"), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("mode", MODES)
def test_the_operator_and_test_pods_meet_the_restricted_pod_security_profile(
    helm: Helm, mode: str
) -> None:
    docs = render(helm, mode)
    pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
    pods += [d["spec"] for d in of_kind(docs, "Pod")]
    assert len(pods) == 2
    assert [restricted_violations(pod) for pod in pods] == [[], []]


def test_the_restricted_check_catches_a_privileged_root_container() -> None:
    pod = {"containers": [{"name": "bad", "securityContext": {"privileged": True, "runAsUser": 0}}]}
    violations = restricted_violations(pod)
    assert "bad: privileged" in violations
    assert "bad: runs as UID 0" in violations


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"metrics": {"port": "9090"}}, "metrics.port: Invalid type"),
        ({"watch": {"clusterWide": "yes"}}, "watch.clusterWide: Invalid type"),
        ({"logLevel": "loud"}, "logLevel"),
        ({"replicaCount": 2}, "Additional property replicaCount is not allowed"),
        ({"image": {"repo": "x"}}, "Additional property repo is not allowed"),
    ],
    ids=["port-as-string", "bool-as-string", "enum", "unknown-key", "unknown-nested-key"],
)
def test_the_values_schema_rejects_wrong_values(
    helm: Helm, values: dict[str, Any], complaint: str
) -> None:
    result = helm("template", values)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_the_charts_crd_file_is_a_link_to_the_repositorys_crd() -> None:
    linked = CHART / "files" / "experiments.dioptra.dev.yaml"
    assert linked.is_symlink()
    assert linked.resolve() == CRD_PATH.resolve()
    assert not (CHART / "crds").exists(), "a chart crds/ folder would install a second copy"


def test_the_rendered_crd_equals_the_repositorys_crd_apart_from_labels(helm: Helm) -> None:
    (cached,) = of_kind(render(helm, "default"), "CustomResourceDefinition")
    rendered = copy.deepcopy(cached)
    source = yaml.safe_load(CRD_PATH.read_text())
    for doc in (rendered, source):
        doc["metadata"].pop("labels")
        doc["metadata"].pop("annotations", None)
    assert rendered == source


def test_the_crd_is_kept_on_uninstall_by_default(helm: Helm) -> None:
    (crd,) = of_kind(render(helm, "default"), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_crd_is_left_out_when_disabled(helm: Helm) -> None:
    assert of_kind(render(helm, "no-crd-no-metrics-debug"), "CustomResourceDefinition") == []


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_the_operator_watches_all_namespaces_by_default(helm: Helm) -> None:
    container = operator_container(render(helm, "default"))
    assert container["command"] == ["dioptra-operator"]
    assert container["args"] == [
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--all-namespaces",
    ]


def test_the_operator_watches_only_the_listed_namespaces_in_single_namespace_mode(
    helm: Helm,
) -> None:
    args = operator_container(render(helm, "single-namespace"))["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=lab-a",
        "--namespace=lab-b",
    ]
    assert "--all-namespaces" not in args


def test_the_operator_gets_the_chart_defaults_through_env(helm: Helm) -> None:
    env = {
        e["name"]: e.get("value") for e in operator_container(render(helm, "everything-set"))["env"]
    }
    assert env["DIOPTRA_RUNNER_IMAGE"] == "ghcr.io/dioptra-operator/dioptra-runner:1.2.3"
    assert env["DIOPTRA_DEFAULT_S3_ENDPOINT"] == "http://minio.storage:9000"
    assert env["DIOPTRA_DEFAULT_S3_REGION"] == "us-east-1"
    assert env["DIOPTRA_DEFAULT_CREDENTIALS_SECRET"] == "s3-credentials"
    assert env["DIOPTRA_PREFECT_API_URL"] == "http://prefect.prefect:4200/api"
    assert env["DIOPTRA_RUNNER_SERVICE_ACCOUNT"] == "dioptra-runner"


def test_the_probes_use_kopfs_liveness_endpoint(helm: Helm) -> None:
    container = operator_container(render(helm, "default"))
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_the_metrics_service_exposes_the_metrics_port(helm: Helm) -> None:
    (service,) = of_kind(render(helm, "default"), "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "health": 8080,
        "metrics": 9090,
    }


def rbac_rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", rule)
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
    ]


@pytest.mark.parametrize("mode", MODES)
def test_no_rbac_rule_uses_a_wildcard(helm: Helm, mode: str) -> None:
    for owner, rule in rbac_rules(render(helm, mode)):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), owner


def test_cluster_wide_mode_binds_a_cluster_role_for_jobs(helm: Helm) -> None:
    docs = render(helm, "default")
    assert of_kind(docs, "ClusterRoleBinding")
    cluster_rules = [r for owner, r in rbac_rules(docs) if owner.startswith("ClusterRole/")]
    assert {"resources": ["jobs"], "apiGroups": ["batch"]}.items() <= next(
        r for r in cluster_rules if r["resources"] == ["jobs"]
    ).items()


def test_single_namespace_mode_grants_jobs_only_through_namespaced_roles(helm: Helm) -> None:
    docs = render(helm, "single-namespace")
    for owner, rule in rbac_rules(docs):
        if owner.startswith("ClusterRole/"):
            assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}
            assert set(rule["verbs"]) <= {"list", "watch"}
    operator_roles = [
        d["metadata"]["namespace"]
        for d in of_kind(docs, "Role")
        if any("jobs" in r["resources"] for r in d["rules"])
    ]
    assert operator_roles == ["lab-a", "lab-b"]


@pytest.mark.parametrize(
    ("mode", "namespaces"),
    [
        ("default", ["dioptra-system"]),
        ("single-namespace", ["lab-a", "lab-b"]),
        ("everything-set", ["lab-a", "lab-b"]),
    ],
)
def test_runners_may_only_read_experiments_and_patch_their_status(
    helm: Helm, mode: str, namespaces: list[str]
) -> None:
    docs = render(helm, mode)
    runner_roles = [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("-runner")]
    assert [r["metadata"]["namespace"] for r in runner_roles] == namespaces
    for role in runner_roles:
        assert role["rules"] == [
            {"apiGroups": ["dioptra.dev"], "resources": ["experiments"], "verbs": ["get"]},
            {
                "apiGroups": ["dioptra.dev"],
                "resources": ["experiments/status"],
                "verbs": ["get", "patch"],
            },
        ]
    runner_accounts = [
        (sa["metadata"]["namespace"], sa["metadata"]["name"])
        for sa in of_kind(docs, "ServiceAccount")
        if sa["metadata"]["name"] == "dioptra-runner"
    ]
    assert runner_accounts == [(ns, "dioptra-runner") for ns in namespaces]


def test_the_helm_test_pod_checks_the_operators_health_endpoint(helm: Helm) -> None:
    docs = render(helm, "default")
    (pod,) = of_kind(docs, "Pod")
    (service,) = of_kind(docs, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    url = f"http://{service['metadata']['name']}.dioptra-system.svc:8080/healthz"
    assert pod["spec"]["containers"][0]["command"][-1] == url


def documented_problems(values_text: str) -> list[str]:
    """Keys of values.yaml with no comment above them, nor above a parent (pure)."""
    problems = []
    lines = values_text.splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of open parent keys
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next(
            (lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), ""
        )
        documented = previous.startswith("#") or any(doc for _, doc in stack)
        has_children = match.group(3).strip() == ""
        if not documented and not has_children:
            problems.append(f"line {number + 1}: {match.group(2)}")
        stack.append((indent, documented))
    return problems


def test_every_value_is_documented_in_values_yaml() -> None:
    assert documented_problems((CHART / "values.yaml").read_text()) == []


def test_the_documentation_check_catches_an_undocumented_value() -> None:
    assert documented_problems("# a\na: 1\nb: 2\n") == ["line 3: b"]


def test_the_packaged_chart_carries_the_crds_content_not_a_link(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [find_helm(), "package", str(CHART), "--destination", str(tmp_path)],
        capture_output=True,
        text=True,
        env=helm_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("dioptra-operator-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("dioptra-operator/files/experiments.dioptra.dev.yaml")
        assert member.isfile()
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == CRD_PATH.read_bytes()
