"""Build the batch/v1 Job that runs one generation of an Experiment (pure: no I/O).

The Job follows the operator -> pod contract in docs/architecture.md: an init container syncs
plugins from S3 into an emptyDir, the main container runs `dioptra run --in-cluster` with a JSON
snapshot of the Experiment. Same input, same output: the name and every field are
deterministic, so a replayed event can only ever produce the Job that already exists.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import dioptra_api as c
from dioptra_api.sweep import SweepError, SweepPoint, cluster_points, max_concurrent

from dioptra_operator.settings import Settings

_ENTRY_POINT_KINDS = ("module", "script", "configMapRef", "taskGraph")


class InvalidSpecError(ValueError):
    """The Experiment's spec cannot be turned into a Job; the message says what to fix."""


def job_name(experiment_name: str, generation: int) -> str:
    """`<name>-g<generation>`, shortened with a stable hash when longer than a DNS label."""
    return _with_suffix(experiment_name, f"-g{generation}")


def _with_suffix(experiment_name: str, suffix: str) -> str:
    """Name plus suffix; past a DNS label the name is cut and a hash keeps it unique."""
    name = f"{experiment_name}{suffix}"
    if len(name) <= c.DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(experiment_name.encode()).hexdigest()[:8]
    keep = c.DNS_LABEL_MAX - len(suffix) - len(digest) - 1
    return f"{experiment_name[:keep].rstrip('-.')}-{digest}{suffix}"


def sweep_points(spec: dict[str, Any]) -> list[SweepPoint] | None:
    """The points of `spec.sweep` in the order of its Indexed Job (None without a sweep).

    InvalidSpecError lists every problem.
    """
    sweep = spec.get("sweep")
    if not sweep:
        return None
    try:
        return cluster_points(sweep, spec.get("parameters") or {})
    except SweepError as error:
        raise InvalidSpecError("; ".join(error.problems)) from None


def validate_spec(spec: dict[str, Any]) -> None:
    """Checks the CRD schema cannot express (or an API server might not enforce)."""
    entry = spec.get("entryPoint") or {}
    kinds = [kind for kind in _ENTRY_POINT_KINDS if entry.get(kind)]
    if len(kinds) != 1:
        raise InvalidSpecError(
            "spec.entryPoint must set exactly one of module, script, configMapRef, taskGraph"
            + (f" (found {', '.join(kinds)})" if kinds else "")
        )
    if entry.get("configMapRef") and not (entry["configMapRef"] or {}).get("name"):
        raise InvalidSpecError("spec.entryPoint.configMapRef.name is required")
    sources = (spec.get("plugins") or {}).get("sources") or []
    for source in sources:
        if not isinstance(source, str) or not source.startswith("s3://") or len(source) <= 5:
            raise InvalidSpecError(
                f"spec.plugins.sources: {source!r} is not an s3://bucket[/prefix] URI "
                "(local folders work only with `dioptra run` on a laptop)"
            )


def experiment_snapshot(experiment: dict[str, Any]) -> str:
    """The JSON the runner reads from DIOPTRA_EXPERIMENT: identity plus this generation's spec."""
    meta = experiment.get("metadata") or {}
    snapshot = {
        "apiVersion": experiment.get("apiVersion", c.API_VERSION),
        "kind": experiment.get("kind", c.KIND),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "generation": meta.get("generation"),
            "uid": meta.get("uid"),
        },
        "spec": experiment.get("spec") or {},
    }
    return json.dumps(snapshot, sort_keys=True, separators=(",", ":"))


# Linux refuses to start a process with one environment string ("NAME=value" and its NUL)
# longer than MAX_ARG_STRLEN, 32 pages: the container would fail to start with E2BIG.
ENV_STRING_LIMIT = 32 * 4096


def sweep_parallelism(spec: dict[str, Any], points: list[SweepPoint]) -> int:
    """How many of the sweep's points run at once: `maxConcurrent`, at most one per point."""
    return min(len(points), max_concurrent(spec["sweep"]))


def check_snapshot_size(snapshot: str, spec: dict[str, Any]) -> None:
    """InvalidSpecError when the runner could not receive the Experiment in its environment.

    The CRD lets a spec be far larger (a 256 KiB script, 1,000 sweep points of any size):
    refusing it here, naming the largest fields, beats a Pod whose container cannot start.
    """
    size = len(c.EXPERIMENT_ENV) + 1 + len(snapshot.encode()) + 1
    if size <= ENV_STRING_LIMIT:
        return
    fields = sorted(
        (
            (len(json.dumps(value, separators=(",", ":")).encode()), key)
            for key, value in spec.items()
        ),
        reverse=True,
    )
    largest = ", ".join(f"spec.{key} {_kib(bytes_)}" for bytes_, key in fields[:2])
    raise InvalidSpecError(
        f"the Experiment is {_kib(size)} as the runner receives it, more than the "
        f"{_kib(ENV_STRING_LIMIT)} a container's environment variable can hold (largest: "
        f"{largest}); put a long script in a ConfigMap (spec.entryPoint.configMapRef), large "
        "values in an artifact ({artifact: <uri>}), or sweep a grid instead of listing points"
    )


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB"


def spec_hash(spec: dict[str, Any]) -> str:
    """Identifies what a Job runs: every spec field except those that only gate or pace it
    (`suspend`, a sweep's `maxConcurrent`), which the operator changes on the Job in place."""
    relevant = {key: value for key, value in spec.items() if key != "suspend"}
    sweep = relevant.get("sweep")
    if isinstance(sweep, dict) and "maxConcurrent" in sweep:
        relevant["sweep"] = {key: value for key, value in sweep.items() if key != "maxConcurrent"}
    encoded = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def job_labels(experiment: dict[str, Any]) -> dict[str, str]:
    """Labels on the Job and its Pods that link them back to the Experiment."""
    meta = experiment.get("metadata") or {}
    labels = {
        c.LABEL_EXPERIMENT: meta["name"],
        c.LABEL_GENERATION: str(meta.get("generation", 1)),
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_COMPONENT: c.COMPONENT_RUNNER,
    }
    queue = (experiment.get("spec") or {}).get("queueName")
    if queue:
        labels[c.LABEL_KUEUE_QUEUE] = queue
    return labels


def _container_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard, per container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": c.RUNNER_UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """The runner's resources with every quantity as a string, the API's canonical form.

    The CRD accepts `cpu: 2` (int-or-string, like core/v1), and so does the API server; the
    Kubernetes Python client validates bodies before sending and refuses a bare integer.
    """
    return {
        part: {name: str(quantity) for name, quantity in (values or {}).items()}
        for part, values in resources.items()
        if part in ("limits", "requests")
    }


def _s3_env(spec: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Endpoint, region and credentials for the sync; credentials only by secretKeyRef."""
    plugins = spec.get("plugins") or {}
    env: list[dict[str, Any]] = []
    endpoint = plugins.get("endpointURL") or settings.default_s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    region = plugins.get("region") or settings.default_s3_region
    if region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": region})
    ref = plugins.get("credentialsSecretRef") or {}
    secret = ref.get("name") or settings.default_credentials_secret
    if secret:
        keys = {
            "AWS_ACCESS_KEY_ID": ref.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": ref.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY",
        }
        for name, key in keys.items():
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        env.append(
            {
                "name": "AWS_SESSION_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": secret, "key": "AWS_SESSION_TOKEN", "optional": True}
                },
            }
        )
    return env


def artifact_env(spec: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """The runner's artifact store: its URI, and its S3 endpoint, region and credentials.

    `spec.artifacts` names its own endpoint/region/Secret or takes the plugins' (then the
    chart's defaults). They go in `DIOPTRA_ARTIFACTS_*` variables, not `AWS_*`, so that they
    never change what plugins' own S3 calls see; credentials only by secretKeyRef.
    """
    artifacts = spec.get("artifacts") or {}
    store = artifacts.get("store") or settings.artifacts_store
    if not store:
        return []
    prefix = c.ARTIFACTS_ENV_PREFIX
    env: list[dict[str, Any]] = [{"name": c.ARTIFACT_STORE_ENV, "value": store}]
    if not store.startswith("s3://"):
        return env
    plugins = spec.get("plugins") or {}
    endpoint = (
        artifacts.get("endpointURL") or plugins.get("endpointURL") or settings.default_s3_endpoint
    )
    if endpoint:
        env.append({"name": f"{prefix}ENDPOINT_URL", "value": endpoint})
    region = artifacts.get("region") or plugins.get("region") or settings.default_s3_region
    if region:
        env.append({"name": f"{prefix}DEFAULT_REGION", "value": region})
    ref = artifacts.get("credentialsSecretRef") or plugins.get("credentialsSecretRef") or {}
    secret = ref.get("name") or settings.default_credentials_secret
    if secret:
        keys = {
            "ACCESS_KEY_ID": (ref.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID", False),
            "SECRET_ACCESS_KEY": (ref.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY", False),
            "SESSION_TOKEN": ("AWS_SESSION_TOKEN", True),
        }
        for suffix, (key, optional) in keys.items():
            selector: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                selector["optional"] = True
            env.append({"name": f"{prefix}{suffix}", "valueFrom": {"secretKeyRef": selector}})
    return env


# The variables MLflow's client reads its credentials from, each a key of the chart's Secret.
_MLFLOW_CREDENTIALS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def tracking_env(settings: Settings, image: str) -> list[dict[str, Any]]:
    """MLflow tracking for the runner: the chart's tracking URI, credentials by secretKeyRef.

    The runner image is named too (an MLflow tag, `dioptra.runner.image`). Without a tracking
    URI nothing is added and the runner never imports MLflow.
    """
    if not settings.mlflow_tracking_uri:
        return []
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_tracking_uri},
        {"name": c.RUNNER_IMAGE_ENV, "value": image},
    ]
    secret = settings.mlflow_credentials_secret
    if secret:
        for key in _MLFLOW_CREDENTIALS:
            selector = {"name": secret, "key": key, "optional": True}
            env.append({"name": key, "valueFrom": {"secretKeyRef": selector}})
    return env


_VOLUMES: list[dict[str, Any]] = [
    {"name": "plugins", "emptyDir": {}},
    {"name": "tmp", "emptyDir": {}},
]
_MOUNTS: list[dict[str, Any]] = [
    {"name": "plugins", "mountPath": c.PLUGIN_DIR},
    {"name": "tmp", "mountPath": c.TMP_DIR},
]
_COMMON_ENV: list[dict[str, Any]] = [
    {"name": c.PLUGIN_DIR_ENV, "value": c.PLUGIN_DIR},
    {"name": "HOME", "value": c.TMP_DIR},
]


# Plugin packages' requirements (runner-image/dioptra_sync/deps.py): installed by the init
# container into this folder, read by the main one, so both mount it at the same path.
DEPS_CACHE_DIR = "/var/cache/dioptra/deps"
DEPS_CACHE_ENV = "DIOPTRA_DEPS_CACHE"
TRUSTED_CA_DIR = "/etc/dioptra/trusted-ca"


def _plugin_deps(settings: Settings) -> tuple[list[Any], list[Any], list[Any]]:
    """The dependency cache (a shared claim, else an emptyDir), the index settings and the CA
    bundle to trust: volumes, mounts and env for both containers.

    The CA goes in PIP_CERT, which the sync passes to uv only: SSL_CERT_FILE would also
    replace the trust store of the S3 client in the same container.
    """
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": settings.plugin_deps_claim}}
        if settings.plugin_deps_claim
        else {"emptyDir": {}}
    )
    volumes: list[Any] = [{"name": "plugin-deps", **cache}]
    mounts: list[Any] = [{"name": "plugin-deps", "mountPath": DEPS_CACHE_DIR}]
    env: list[Any] = [{"name": DEPS_CACHE_ENV, "value": DEPS_CACHE_DIR}]
    if settings.pip_index_url:
        env.append({"name": "PIP_INDEX_URL", "value": settings.pip_index_url})
    if settings.pip_extra_index_url:
        env.append({"name": "PIP_EXTRA_INDEX_URL", "value": settings.pip_extra_index_url})
    if settings.pip_trusted_ca:
        volumes.append({"name": "trusted-ca", "configMap": {"name": settings.pip_trusted_ca}})
        mounts.append({"name": "trusted-ca", "mountPath": TRUSTED_CA_DIR, "readOnly": True})
        env.append({"name": "PIP_CERT", "value": f"{TRUSTED_CA_DIR}/{settings.pip_trusted_ca_key}"})
    return volumes, mounts, env


def _pod_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard, for the Pod."""
    return {
        "runAsNonRoot": True,
        "runAsUser": c.RUNNER_UID,
        "runAsGroup": c.RUNNER_UID,
        "fsGroup": c.RUNNER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(
    name: str, image: str, pull_policy: str, resources: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """What both containers share: image, restricted security, termination message."""
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        **fields,
        "securityContext": _container_security_context(),
        # A container that fails says why in its last lines; they become its termination
        # message, which the operator quotes in the Experiment's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = resources
    return container


def _sync_container(
    spec: dict[str, Any], settings: Settings, image: str, pull_policy: str, resources: Any
) -> dict[str, Any] | None:
    """The init container that syncs the plugin sources (None without sources)."""
    sources = (spec.get("plugins") or {}).get("sources") or []
    if not sources:
        return None
    _, deps_mounts, deps_env = _plugin_deps(settings)
    return _container(
        c.INIT_CONTAINER,
        image,
        pull_policy,
        resources,
        command=["dioptra", "plugins", "sync", "--dest", c.PLUGIN_DIR, *sources],
        env=[*_COMMON_ENV, *deps_env, *_s3_env(spec, settings)],
        volumeMounts=[*_MOUNTS, *deps_mounts],
    )


def _runner_env(
    experiment: dict[str, Any], snapshot: str, settings: Settings
) -> list[dict[str, Any]]:
    meta = experiment["metadata"]
    env = [
        *_COMMON_ENV,
        {"name": "PREFECT_HOME", "value": c.PREFECT_HOME},
        {"name": c.EXPERIMENT_ENV, "value": snapshot},
        {"name": c.NAME_ENV, "value": meta["name"]},
        {"name": c.NAMESPACE_ENV, "value": meta.get("namespace") or "default"},
    ]
    if settings.prefect_api_url:
        env.append({"name": "PREFECT_API_URL", "value": settings.prefect_api_url})
    elif uses_prefect_sidecar(settings):
        env.append({"name": "PREFECT_API_URL", "value": prefect_sidecar_url(settings)})
        env.append({"name": c.PREFECT_SIDECAR_ENV, "value": "1"})
    return env


_SIDECAR_VOLUME = "prefect-api-tmp"  # the sidecar's /tmp (PREFECT_HOME), shared with no one


def uses_prefect_sidecar(settings: Settings) -> bool:
    """A sidecar serves the Prefect API only when it is enabled and no server is configured."""
    return settings.prefect_sidecar and not settings.prefect_api_url


def prefect_sidecar_url(settings: Settings) -> str:
    """The sidecar's API on the Pod's loopback, where nothing outside the Pod can reach it."""
    return f"http://127.0.0.1:{settings.prefect_sidecar_port}/api"


def _prefect_sidecar(settings: Settings, image: str, pull_policy: str) -> dict[str, Any] | None:
    """The native sidecar serving the runner's Prefect API (None when the Pod needs none).

    An init container with `restartPolicy: Always`: the kubelet starts it first and, as it has
    no startupProbe, starts the sync right after, so the server's ~3 CPU-s start overlaps the
    sync instead of following it; it runs beside the runner, is restarted if it dies, and is
    stopped once the runner has ended (Kubernetes 1.29+). It binds 127.0.0.1 only: the API has
    no authentication. No probe for that reason too: the kubelet's httpGet probe comes from
    outside the Pod's loopback, and an exec probe would start a Python per period; the runner
    waits for /api/health itself. Its own emptyDir holds PREFECT_HOME (the database copied from
    the image's template).
    """
    if not uses_prefect_sidecar(settings):
        return None
    port = settings.prefect_sidecar_port
    return _container(
        c.PREFECT_SIDECAR,
        image,
        pull_policy,
        {
            "requests": {
                "cpu": settings.prefect_sidecar_cpu_request,
                "memory": settings.prefect_sidecar_memory_request,
            },
            "limits": {"memory": settings.prefect_sidecar_memory_limit},
        },
        restartPolicy="Always",
        command=[
            "python",
            "-m",
            "dioptra_runner.prefect_warmup",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        env=[
            {"name": "HOME", "value": c.TMP_DIR},
            {"name": "PREFECT_HOME", "value": c.PREFECT_HOME},
        ],
        ports=[{"name": c.PREFECT_SIDECAR, "containerPort": port, "protocol": "TCP"}],
        volumeMounts=[{"name": _SIDECAR_VOLUME, "mountPath": c.TMP_DIR}],
    )


def _entry_point_volume(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """For a ConfigMap entry point: its volume, its mount and its env; else nothing."""
    config_map = (spec.get("entryPoint") or {}).get("configMapRef")
    if not config_map:
        return [], [], []
    return (
        [{"name": "entrypoint", "configMap": {"name": config_map["name"]}}],
        [{"name": "entrypoint", "mountPath": c.ENTRYPOINT_DIR, "readOnly": True}],
        [{"name": c.ENTRYPOINT_DIR_ENV, "value": c.ENTRYPOINT_DIR}],
    )


def _job_spec(
    spec: dict[str, Any],
    labels: dict[str, str],
    pod: dict[str, Any],
    points: list[SweepPoint] | None,
) -> dict[str, Any]:
    job_spec: dict[str, Any] = {
        "suspend": bool(spec.get("suspend", False)),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if points is None:
        job_spec["backoffLimit"] = int(spec.get("backoffLimit", 0))
    else:
        job_spec.update(_indexed(spec, points))
    for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if spec.get(key) is not None:
            job_spec[key] = int(spec[key])
    return job_spec


def _indexed(spec: dict[str, Any], points: list[SweepPoint]) -> dict[str, Any]:
    """A sweep's Job fields: one completion index per point, `maxConcurrent` Pods at once.

    Each index has its own retries (`backoffLimitPerIndex` from `backoffLimit`), and without
    `maxFailedIndexes` the Job runs every index and ends Failed if any failed: one failing point
    neither stops nor hides the others. No `backoffLimit`: it counts the failures of all
    indexes together (its default with a per-index limit is unlimited).
    """
    return {
        "completionMode": "Indexed",
        "completions": len(points),
        "parallelism": sweep_parallelism(spec, points),
        "backoffLimitPerIndex": int(spec.get("backoffLimit", 0)),
    }


def runner_pod_spec(
    spec: dict[str, Any],
    settings: Settings,
    main: dict[str, Any],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The Pod spec around a runner container: never restarted, the runner's ServiceAccount,
    the restricted security context and the Experiment's scheduling (`nodeSelector`,
    `tolerations`, `affinity`, top-level or under `runner`)."""
    runner = spec.get("runner") or {}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": spec.get("serviceAccountName")
        or runner.get("serviceAccountName")
        or settings.runner_service_account,
        "securityContext": _pod_security_context(),
        "containers": [main],
        "volumes": [dict(volume) for volume in volumes],
    }
    for key in ("nodeSelector", "tolerations", "affinity"):
        value = spec.get(key) or runner.get(key)
        if value:
            pod[key] = value
    return pod


def build_job(
    experiment: dict[str, Any],
    settings: Settings,
    *,
    generation: int | None = None,
) -> dict[str, Any]:
    """The Job manifest for the Experiment's current generation (without ownerReferences).

    With `spec.sweep`, one Indexed Job runs every point (`_indexed`); its snapshot carries the
    sweep, and each Pod's runner takes its point by JOB_COMPLETION_INDEX. `generation` names
    the run (default: the Experiment's; a sweep keeps the generation its Job was created for
    when only `suspend` changed since). Raises InvalidSpecError when the spec cannot run. The
    caller adopts the Job (owner reference, namespace) and creates it.
    """
    meta = experiment["metadata"]
    spec = experiment.get("spec") or {}
    validate_spec(spec)
    points = sweep_points(spec)
    runner = spec.get("runner") or {}
    generation = int(meta.get("generation", 1)) if generation is None else generation
    labels = job_labels(experiment)
    labels[c.LABEL_GENERATION] = str(generation)
    snapshot = experiment_snapshot(experiment)
    check_snapshot_size(snapshot, spec)
    name = job_name(meta["name"], generation)
    image = runner.get("image") or settings.runner_image
    pull_policy = runner.get("imagePullPolicy") or settings.image_pull_policy
    resources = container_resources(runner.get("resources") or {})
    volumes, mounts, entry_env = _entry_point_volume(spec)
    deps_volumes, deps_mounts, deps_env = _plugin_deps(settings)
    # The user's extra variables come last so that they can override ours deliberately.
    env = [
        *_runner_env(experiment, snapshot, settings),
        *artifact_env(spec, settings),
        *tracking_env(settings, image),
        *deps_env,
        *(dict(item) for item in runner.get("env") or []),
        *entry_env,
    ]
    main = _container(
        c.MAIN_CONTAINER,
        image,
        pull_policy,
        resources,
        command=["dioptra", "run", "--in-cluster"],
        env=env,
        volumeMounts=[*_MOUNTS, *deps_mounts, *mounts],
    )
    pod = runner_pod_spec(spec, settings, main, [*_VOLUMES, *deps_volumes, *volumes])
    sync = _sync_container(spec, settings, image, pull_policy, resources)
    sidecar = _prefect_sidecar(settings, image, pull_policy)
    # The sidecar first: the kubelet starts init containers in order, and the sync does not
    # wait for a sidecar without a startupProbe.
    inits = [container for container in (sidecar, sync) if container is not None]
    if inits:
        pod["initContainers"] = inits
    if sidecar is not None:
        pod["volumes"].append({"name": _SIDECAR_VOLUME, "emptyDir": {}})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": {c.ANNOTATION_SPEC_HASH: spec_hash(spec)},
        },
        "spec": _job_spec(spec, labels, pod, points),
    }
