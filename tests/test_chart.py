"""The Helm chart, rendered by the real `helm` binary and checked against Kubernetes' schemas.

Still to come: a test that the rendered operator RBAC grants nothing beyond the API calls the
operator's code makes (needs the operator's client module to list its calls).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dioptra_operator.settings import Settings as OperatorSettings

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
    "prefect-server": {"prefect": {"server": {"enabled": True}}},
    "prefect-server-everything-set": {
        "prefect": {
            "server": {
                "enabled": True,
                "image": {"repository": "prefecthq/prefect", "tag": "3.9.1-python3.11"},
                "uiApiUrl": "https://prefect.example.com/api",
                "service": {"port": 8080},
                "persistence": {"enabled": True, "storageClass": "fast-ssd", "size": "5Gi"},
                "databaseUrlSecret": {"name": "prefect-db", "key": "url"},
                "podAnnotations": {"example.com/team": "red"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 1,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"app.kubernetes.io/name": "x"}
                                    },
                                },
                            }
                        ]
                    }
                },
            }
        }
    },
    "prefect-server-with-external-url": {
        "prefect": {"apiUrl": "http://prefect.shared:4200/api", "server": {"enabled": True}}
    },
    "plugin-deps": {
        "pip": {
            "indexURL": "https://pypi.internal/simple",
            "extraIndexURL": "https://a.internal/simple https://b.internal/simple",
            "trustedCA": "corp-ca",
            "trustedCAKey": "bundle.pem",
        },
        "pluginDeps": {"cache": "plugin-deps"},
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
    with_prefect_server = MODES[mode].get("prefect", {}).get("server", {}).get("enabled", False)
    assert len(pods) == (3 if with_prefect_server else 2)
    assert [restricted_violations(pod) for pod in pods] == [[] for _ in pods]


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
        ({"pip": {"indexURL": "pypi.internal/simple"}}, "pip.indexURL"),
        ({"pip": {"extraIndexURL": "https://a.internal/simple b.internal"}}, "pip.extraIndexURL"),
        ({"pip": {"trustedCA": "Corp_CA"}}, "pip.trustedCA"),
        ({"pluginDeps": {"cache": "My Claim"}}, "pluginDeps.cache"),
        ({"pluginDeps": {"size": "1Gi"}}, "Additional property size is not allowed"),
    ],
    ids=[
        "port-as-string",
        "bool-as-string",
        "enum",
        "unknown-key",
        "unknown-nested-key",
        "pip-index-without-scheme",
        "pip-extra-index-without-scheme",
        "pip-ca-not-a-name",
        "plugin-deps-claim-not-a-name",
        "plugin-deps-unknown-key",
    ],
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
    (deployment,) = [
        d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
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
def test_runners_may_only_read_and_patch_experiment_status(
    helm: Helm, mode: str, namespaces: list[str]
) -> None:
    docs = render(helm, mode)
    runner_roles = [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("-runner")]
    assert [r["metadata"]["namespace"] for r in runner_roles] == namespaces
    for role in runner_roles:
        assert role["rules"] == [
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


def test_runner_service_account_annotations_give_runner_pods_a_cloud_identity(
    helm: Helm,
) -> None:
    """IRSA and workload identity: the plugin sync needs no credentials Secret then."""
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/plugins-reader"}
    values = {"runner": {"namespaces": ["lab"], "serviceAccount": {"annotations": role}}}
    result = helm("template", values)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (runner,) = [
        sa for sa in of_kind(docs, "ServiceAccount") if sa["metadata"]["name"] == "dioptra-runner"
    ]
    assert runner["metadata"]["annotations"] == role
    assert (
        "annotations"
        not in next(
            sa
            for sa in of_kind(render(helm, "default"), "ServiceAccount")
            if sa["metadata"]["name"] == "dioptra-runner"
        )["metadata"]
    )


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


# --- The optional Prefect server (prefect.server.*) -------------------------------------------


def prefect_server(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Prefect server's Deployment and Service, found by their component label."""

    def is_prefect(doc: dict[str, Any]) -> bool:
        return bool(
            doc["metadata"]["labels"].get("app.kubernetes.io/component") == "prefect-server"
        )

    (deployment,) = [d for d in of_kind(docs, "Deployment") if is_prefect(d)]
    (service,) = [d for d in of_kind(docs, "Service") if is_prefect(d)]
    return deployment, service


def prefect_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment, _ = prefect_server(docs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in operator_container(docs)["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_default_values_render_no_prefect_server(helm: Helm) -> None:
    docs = render(helm, "default")
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs}
    assert "prefect-server" not in components
    assert of_kind(docs, "PersistentVolumeClaim") == []
    assert operator_env(docs)["DIOPTRA_PREFECT_API_URL"] == ""


def test_the_prefect_server_runs_prefect_server_start_in_the_runner_image(helm: Helm) -> None:
    docs = render(helm, "prefect-server")
    container = prefect_container(docs)
    assert container["image"] == operator_env(docs)["DIOPTRA_RUNNER_IMAGE"]
    assert container["command"] == [
        "prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"
    ]  # fmt: skip
    assert container["ports"] == [{"name": "http", "containerPort": 4200, "protocol": "TCP"}]


def test_the_operator_points_runners_at_the_prefect_service_by_its_cluster_dns_name(
    helm: Helm,
) -> None:
    for mode in ("prefect-server", "prefect-server-everything-set"):
        docs = render(helm, mode)
        _, service = prefect_server(docs)
        (port,) = service["spec"]["ports"]
        url = f"http://{service['metadata']['name']}.dioptra-system.svc:{port['port']}/api"
        assert operator_env(docs)["DIOPTRA_PREFECT_API_URL"] == url


def test_an_explicit_prefect_api_url_wins_over_the_charts_server(helm: Helm) -> None:
    env = operator_env(render(helm, "prefect-server-with-external-url"))
    assert env["DIOPTRA_PREFECT_API_URL"] == "http://prefect.shared:4200/api"


def test_the_prefect_service_routes_to_the_prefect_pod_only(helm: Helm) -> None:
    docs = render(helm, "prefect-server")
    deployment, service = prefect_server(docs)
    prefect_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (operator,) = [d for d in of_kind(docs, "Deployment") if d is not deployment]
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    (operator_service,) = [s for s in of_kind(docs, "Service") if s is not service]
    assert selects(service["spec"]["selector"], prefect_labels)
    assert selects(deployment["spec"]["selector"]["matchLabels"], prefect_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert not selects(service["spec"]["selector"], operator_labels)
    assert not selects(operator["spec"]["selector"]["matchLabels"], prefect_labels)
    assert not selects(operator_service["spec"]["selector"], prefect_labels)


def test_the_prefect_server_probes_check_its_health_endpoint(helm: Helm) -> None:
    container = prefect_container(render(helm, "prefect-server"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/health", "port": "http"}


def test_the_prefect_server_writes_only_to_its_volumes(helm: Helm) -> None:
    deployment, _ = prefect_server(render(helm, "prefect-server"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for path in (env["PREFECT_HOME"], env["PREFECT_SERVER_UI_STATIC_DIRECTORY"], env["HOME"]):
        mount = next(m for m in mounts if path == m or path.startswith(m + "/"))
        assert "emptyDir" in volumes[mounts[mount]]
    assert pod["automountServiceAccountToken"] is False


def test_persistence_keeps_prefect_home_in_a_claim(helm: Helm) -> None:
    docs = render(helm, "prefect-server-everything-set")
    deployment, _ = prefect_server(docs)
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = deployment["spec"]["template"]["spec"]
    (data,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert data["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == data["name"]]
    assert mount["mountPath"] == env["PREFECT_HOME"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_an_existing_claim_is_mounted_without_creating_one(helm: Helm) -> None:
    values = {
        "prefect": {
            "server": {"enabled": True, "persistence": {"enabled": True, "existingClaim": "old"}}
        }
    }
    result = helm("template", values)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert of_kind(docs, "PersistentVolumeClaim") == []
    deployment, _ = prefect_server(docs)
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["old"]


def test_the_database_url_comes_from_a_secret_never_from_values(helm: Helm) -> None:
    env = prefect_container(render(helm, "prefect-server-everything-set"))["env"]
    (database,) = [e for e in env if "DATABASE" in e["name"]]
    assert database == {
        "name": "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        "valueFrom": {"secretKeyRef": {"name": "prefect-db", "key": "url"}},
    }
    plain = prefect_container(render(helm, "prefect-server"))["env"]
    assert [e for e in plain if "DATABASE" in e["name"]] == []


def test_the_prefect_server_takes_its_scheduling_and_image_settings(helm: Helm) -> None:
    values = MODES["prefect-server-everything-set"]["prefect"]["server"]
    deployment, _ = prefect_server(render(helm, "prefect-server-everything-set"))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == values["podAnnotations"]
    assert pod["containers"][0]["image"] == "prefecthq/prefect:3.9.1-python3.11"


def test_the_prefect_resource_names_stay_dns_labels_for_long_release_names(helm: Helm) -> None:
    values = {
        "fullnameOverride": "x" * 63,
        "prefect": {"server": {"enabled": True, "persistence": {"enabled": True}}},
    }
    result = helm("template", values)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    names = [d["metadata"]["name"] for d in docs if "prefect" in d["metadata"]["name"]]
    assert len(names) == 3
    assert all(len(n) <= 63 and n.endswith("-prefect") for n in names)


@pytest.mark.parametrize(
    ("server", "complaint"),
    [
        ({"enabled": "yes"}, "prefect.server.enabled: Invalid type"),
        ({"service": {"port": "4200"}}, "prefect.server.service.port: Invalid type"),
        ({"persistence": {"size": 2}}, "prefect.server.persistence.size: Invalid type"),
        ({"persistence": {"size": "2 GB"}}, "prefect.server.persistence.size: Does not match"),
        ({"persistence": {"accessModes": ["ReadOnlyMany"]}}, "accessModes.0"),
        ({"uiApiUrl": "localhost:4200"}, "prefect.server.uiApiUrl: Does not match pattern"),
        (
            {"databaseUrl": "postgresql+asyncpg://u:p@db/prefect"},
            "Additional property databaseUrl is not allowed",
        ),
    ],
    ids=[
        "bool-as-string",
        "port-as-string",
        "size-as-number",
        "size-unit",
        "access-mode",
        "url",
        "literal-db",
    ],
)
def test_the_values_schema_rejects_wrong_prefect_server_values(
    helm: Helm, server: dict[str, Any], complaint: str
) -> None:
    result = helm("template", {"prefect": {"server": server}})
    assert result.returncode != 0
    assert complaint in result.stderr


def container_settings(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal env values (Secret references left out)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_prefect_reads_every_setting_the_chart_gives_its_server(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import Settings

    env = container_settings(prefect_container(render(helm, "prefect-server-everything-set")))
    for name in [n for n in os.environ if n.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.home == Path(env["PREFECT_HOME"])
    assert settings.server.analytics_enabled is False
    assert settings.server.ui.enabled is True
    assert settings.server.ui.api_url == "https://prefect.example.com/api"
    assert settings.server.ui.static_directory == env["PREFECT_SERVER_UI_STATIC_DIRECTORY"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_command(container: dict[str, Any], port: int) -> list[str]:
    """The container's command, bound to 127.0.0.1:<port> instead of 0.0.0.0:4200 (pure)."""
    command = list(container["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    return command


def local_env(container: dict[str, Any], folders: Path) -> dict[str, str]:
    """The container's env with each mounted path moved into `folders/<volume>` (pure)."""
    mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    env = {}
    for name, value in container_settings(container).items():
        for mount in mounts:
            if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                value = str(folders / mount["name"]) + value[len(mount["mountPath"]) :]
                break
        env[name] = value
    return env


def wait_for_http(url: str, process: subprocess.Popen[bytes], seconds: float) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bytes(response.read())
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {seconds} s")


class LocalPrefectServer:
    """The rendered Prefect server container, run here with the real Prefect."""

    def __init__(self, base_url: str, env: dict[str, str], process: subprocess.Popen[bytes]):
        self.base_url = base_url
        self.env = env
        self.process = process


@pytest.fixture(scope="module")
def local_prefect_server(
    helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPrefectServer]:
    """Starts the rendered container's command and env (volumes as temp folders, bound to
    127.0.0.1 on a free port) once for the tests that need a live server; stops it after."""
    container = prefect_container(render(helm, "prefect-server"))
    folders = tmp_path_factory.mktemp("prefect-volumes")
    for mount in container["volumeMounts"]:
        (folders / mount["name"]).mkdir()
    port = free_port()
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        **local_env(container, folders),
    }
    process = subprocess.Popen(
        local_command(container, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield LocalPrefectServer(f"http://127.0.0.1:{port}", env, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(120)
def test_the_rendered_prefect_server_starts_and_passes_its_probe(
    helm: Helm, local_prefect_server: LocalPrefectServer
) -> None:
    server = local_prefect_server
    probe = prefect_container(render(helm, "prefect-server"))["readinessProbe"]["httpGet"]
    assert wait_for_http(server.base_url + probe["path"], server.process, 90) == b"true"
    ui_settings = json.loads(wait_for_http(server.base_url + "/ui-settings", server.process, 5))
    assert ui_settings["api_url"] == server.env["PREFECT_SERVER_UI_API_URL"]
    assert (Path(server.env["PREFECT_HOME"]) / "prefect.db").is_file()
    ui_folder = Path(server.env["PREFECT_SERVER_UI_STATIC_DIRECTORY"])
    assert sorted(p.name for p in ui_folder.iterdir()) == ["v1", "v2"]


FLOW_SCRIPT = """
from prefect import flow, task
from prefect.runtime import flow_run

@task
def double(x):
    return 2 * x

@flow(name="chart-check")
def check():
    assert double(21) == 42
    print(flow_run.id)

check()
"""


@pytest.mark.timeout(120)
def test_a_flow_run_against_the_rendered_server_is_recorded_in_its_api(
    local_prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    server = local_prefect_server
    wait_for_http(server.base_url + "/api/health", server.process, 90)
    runner_env = {
        "PATH": server.env["PATH"],
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": server.base_url + "/api",
    }
    result = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT],
        env=runner_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]
    flow_run = json.loads(
        wait_for_http(f"{server.base_url}/api/flow_runs/{run_id}", server.process, 5)
    )
    assert flow_run["state_type"] == "COMPLETED"


def rendered_notes(helm_env: dict[str, str], tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` skips NOTES.txt, so a copy of the
    chart wraps it in a named template and renders that into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, symlinks=False)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "notes" -}}\n' + notes.read_text() + "{{- end }}\n"
    )
    notes.unlink()
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes" . | quote }}\n'
    )
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    args = [find_helm(), "template", "dioptra", str(chart), "--namespace", "dioptra-system"]
    args += ["--values", str(values_file), "--show-only", "templates/notes.yaml"]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=helm_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def test_the_install_notes_say_how_to_open_the_prefect_ui(
    helm: Helm, helm_env: dict[str, str], tmp_path: Path
) -> None:
    _, service = prefect_server(render(helm, "prefect-server"))
    notes = rendered_notes(helm_env, tmp_path, MODES["prefect-server"])
    forward = f"kubectl -n dioptra-system port-forward svc/{service['metadata']['name']} 4200:4200"
    assert forward in notes
    assert "http://localhost:4200" in notes


def test_the_install_notes_without_a_prefect_server_suggest_one(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    notes = rendered_notes(helm_env, tmp_path, {})
    assert "port-forward" not in notes
    assert "prefect.server.enabled=true" in notes


def test_the_operator_gets_the_plugin_requirements_settings_through_env(helm: Helm) -> None:
    env = operator_env(render(helm, "plugin-deps"))
    assert env["DIOPTRA_PIP_INDEX_URL"] == "https://pypi.internal/simple"
    assert (
        env["DIOPTRA_PIP_EXTRA_INDEX_URL"] == "https://a.internal/simple https://b.internal/simple"
    )
    assert env["DIOPTRA_PIP_TRUSTED_CA"] == "corp-ca"
    assert env["DIOPTRA_PIP_TRUSTED_CA_KEY"] == "bundle.pem"
    assert env["DIOPTRA_PLUGIN_DEPS_CLAIM"] == "plugin-deps"


def test_by_default_plugin_requirements_come_from_pypi_into_an_empty_dir(helm: Helm) -> None:
    env = operator_env(render(helm, "default"))
    assert env["DIOPTRA_PIP_INDEX_URL"] == ""
    assert env["DIOPTRA_PIP_TRUSTED_CA"] == ""
    assert env["DIOPTRA_PLUGIN_DEPS_CLAIM"] == ""


def test_by_default_the_operator_gives_runners_a_prefect_api_sidecar(helm: Helm) -> None:
    env = operator_env(render(helm, "default"))
    assert env["DIOPTRA_PREFECT_SIDECAR"] == "true"
    assert OperatorSettings.from_env(env).prefect_sidecar


def test_the_prefect_sidecar_can_be_turned_off(helm: Helm) -> None:
    result = helm("template", {"prefect": {"sidecar": {"enabled": False}}})
    assert result.returncode == 0, result.stderr
    env = operator_env([d for d in yaml.safe_load_all(result.stdout) if d])
    assert env["DIOPTRA_PREFECT_SIDECAR"] == "false"


def test_no_prefect_sidecar_on_clusters_older_than_1_29(helm: Helm) -> None:
    result = helm("template", {}, "--kube-version", "1.28.9")
    assert result.returncode == 0, result.stderr
    env = operator_env([d for d in yaml.safe_load_all(result.stdout) if d])
    assert env["DIOPTRA_PREFECT_SIDECAR"] == "false"


def test_the_prefect_sidecar_resources_reach_the_operator(helm: Helm) -> None:
    resources = {"requests": {"cpu": "250m", "memory": "300Mi"}, "limits": {"memory": "700Mi"}}
    result = helm("template", {"prefect": {"sidecar": {"resources": resources}}})
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    settings = OperatorSettings.from_env(operator_env(docs))
    assert (
        settings.prefect_sidecar_cpu_request,
        settings.prefect_sidecar_memory_request,
        settings.prefect_sidecar_memory_limit,
    ) == ("250m", "300Mi", "700Mi")
