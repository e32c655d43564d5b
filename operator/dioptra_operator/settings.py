"""The operator's configuration, read once from the environment the Helm chart sets.

One frozen object passed to the builder keeps the builder pure and makes tests state exactly
which defaults they rely on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RUNNER_IMAGE = "ghcr.io/dioptra-operator/dioptra-runner:0.1.0"
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class Settings:
    """Chart-level defaults that an Experiment's spec may override."""

    runner_image: str = DEFAULT_RUNNER_IMAGE
    # Used when spec.plugins.endpointURL / region / credentialsSecretRef are absent.
    default_s3_endpoint: str | None = None
    default_s3_region: str | None = None
    default_credentials_secret: str | None = None
    # The artifact store runners keep task outputs in when spec.artifacts.store is absent
    # ("s3://bucket/prefix"; None: only Experiments that name a store keep outputs).
    artifacts_store: str | None = None
    # Passed to runners so they use a shared Prefect server instead of an ephemeral one.
    prefect_api_url: str | None = None
    # Passed to runners as MLFLOW_TRACKING_URI: each run is an MLflow run there (None: off).
    # Credentials never go in the URI: a Secret with MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN.
    mlflow_tracking_uri: str | None = None
    mlflow_credentials_secret: str | None = None
    runner_service_account: str = "dioptra-runner"
    image_pull_policy: str = "IfNotPresent"
    # Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = 9090
    # Where plugin packages' requirements come from (the runner passes them to uv): a package
    # index, extra indexes (space-separated), and a ConfigMap holding the CA bundle to trust.
    pip_index_url: str | None = None
    pip_extra_index_url: str | None = None
    pip_trusted_ca: str | None = None
    pip_trusted_ca_key: str = "ca.crt"
    # A PersistentVolumeClaim shared by runner pods for the installed requirements (None: an
    # emptyDir per pod, so every run installs them again).
    plugin_deps_claim: str | None = None
    # Without prefect_api_url: serve the runner's Prefect API from a native sidecar that starts
    # before the plugin sync (False: the runner starts it in its own process, after the sync).
    # Off unless the variable says so; the chart turns it on by default.
    prefect_sidecar: bool = False
    prefect_sidecar_port: int = 4200
    prefect_sidecar_cpu_request: str = "100m"
    prefect_sidecar_memory_request: str = "384Mi"
    prefect_sidecar_memory_limit: str = "1Gi"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `DIOPTRA_*` variables; empty values count as unset."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        port = get("DIOPTRA_METRICS_PORT")
        sidecar_port = get("DIOPTRA_PREFECT_SIDECAR_PORT")
        defaults = cls()
        return cls(
            runner_image=get("DIOPTRA_RUNNER_IMAGE") or DEFAULT_RUNNER_IMAGE,
            default_s3_endpoint=get("DIOPTRA_DEFAULT_S3_ENDPOINT"),
            default_s3_region=get("DIOPTRA_DEFAULT_S3_REGION"),
            default_credentials_secret=get("DIOPTRA_DEFAULT_CREDENTIALS_SECRET"),
            artifacts_store=get("DIOPTRA_DEFAULT_ARTIFACTS_STORE"),
            prefect_api_url=get("DIOPTRA_PREFECT_API_URL"),
            mlflow_tracking_uri=get("DIOPTRA_MLFLOW_TRACKING_URI"),
            mlflow_credentials_secret=get("DIOPTRA_MLFLOW_CREDENTIALS_SECRET"),
            runner_service_account=get("DIOPTRA_RUNNER_SERVICE_ACCOUNT") or "dioptra-runner",
            image_pull_policy=get("DIOPTRA_RUNNER_IMAGE_PULL_POLICY") or "IfNotPresent",
            metrics_port=int(port) if port is not None else 9090,
            pip_index_url=get("DIOPTRA_PIP_INDEX_URL"),
            pip_extra_index_url=get("DIOPTRA_PIP_EXTRA_INDEX_URL"),
            pip_trusted_ca=get("DIOPTRA_PIP_TRUSTED_CA"),
            pip_trusted_ca_key=get("DIOPTRA_PIP_TRUSTED_CA_KEY") or "ca.crt",
            plugin_deps_claim=get("DIOPTRA_PLUGIN_DEPS_CLAIM"),
            prefect_sidecar=(get("DIOPTRA_PREFECT_SIDECAR") or "").lower() in _TRUE,
            prefect_sidecar_port=int(sidecar_port)
            if sidecar_port
            else defaults.prefect_sidecar_port,
            prefect_sidecar_cpu_request=get("DIOPTRA_PREFECT_SIDECAR_CPU_REQUEST")
            or defaults.prefect_sidecar_cpu_request,
            prefect_sidecar_memory_request=get("DIOPTRA_PREFECT_SIDECAR_MEMORY_REQUEST")
            or defaults.prefect_sidecar_memory_request,
            prefect_sidecar_memory_limit=get("DIOPTRA_PREFECT_SIDECAR_MEMORY_LIMIT")
            or defaults.prefect_sidecar_memory_limit,
        )
