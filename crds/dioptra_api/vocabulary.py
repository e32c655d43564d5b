"""The API's vocabulary: group and kind, labels, the Job contract, phases, conditions, reasons.

Everything a user or another component can observe (label keys, env names, condition types,
reasons) is spelled once here, for the operator, the runner and the tests alike.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANNOTATION_SPEC_HASH",
    "API_VERSION",
    "ARTIFACTS_ENV_PREFIX",
    "ARTIFACT_STORE_ENV",
    "COMPONENT_RUNNER",
    "DNS_LABEL_MAX",
    "ENTRYPOINT_DIR",
    "ENTRYPOINT_DIR_ENV",
    "EXPERIMENT_ENV",
    "GROUP",
    "INIT_CONTAINER",
    "JOB_COMPLETION_INDEX_ENV",
    "KIND",
    "LABEL_COMPLETION_INDEX",
    "LABEL_COMPONENT",
    "LABEL_EXPERIMENT",
    "LABEL_GENERATION",
    "LABEL_KUEUE_QUEUE",
    "LABEL_MANAGED_BY",
    "MAIN_CONTAINER",
    "MANAGED_BY",
    "MESSAGES",
    "NAMESPACE_ENV",
    "NAME_ENV",
    "PLUGIN_DIR",
    "PLUGIN_DIR_ENV",
    "PLURAL",
    "PREFECT_HOME",
    "PREFECT_SIDECAR",
    "PREFECT_SIDECAR_ENV",
    "PREFECT_SIDECAR_TIMEOUT_ENV",
    "RUNNER_IMAGE_ENV",
    "RUNNER_UID",
    "RUN_ACCOUNT_FIELDS",
    "RUN_STATUS",
    "SWEEP_POINT_ENV",
    "TMP_DIR",
    "TRACKING_STATUS",
    "VERSION",
    "WARNING_REASONS",
    "WARNING_WHEN_FALSE",
    "WARNING_WHEN_TRUE",
    "ConditionType",
    "Phase",
    "Reason",
]

GROUP: Final = "dioptra.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "experiments"
KIND: Final = "Experiment"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Labels linking an Experiment to its Job and Pods (Jobs copy their template labels to Pods).
LABEL_EXPERIMENT: Final = f"{GROUP}/experiment"
LABEL_GENERATION: Final = f"{GROUP}/generation"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "dioptra-operator"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
COMPONENT_RUNNER: Final = "runner"
# On the Job: a hash of the spec it runs, minus `suspend` (toggling suspend keeps the Job).
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"
# A sweep runs as one Indexed Job: the Job controller labels (and annotates) each Pod with its
# completion index, the sweep point it runs, and sets JOB_COMPLETION_INDEX in its containers.
LABEL_COMPLETION_INDEX: Final = "batch.kubernetes.io/job-completion-index"
# Kueue admits suspended Jobs that carry this label; we pass spec.queueName through.
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"

# Status ownership (docs/architecture.md): the operator alone writes the top-level `phase`,
# `message` and timings; the runner gives its own account of its process under `status.run`,
# with these fields, which the operator folds into the top-level ones.
RUN_STATUS: Final = "run"
RUN_ACCOUNT_FIELDS: Final = frozenset(
    {"phase", "reason", "message", "startTime", "completionTime", "duration", "sweep"}
)

# The Job contract (docs/architecture.md).
PLUGIN_DIR: Final = "/var/lib/dioptra/plugins"
TMP_DIR: Final = "/tmp"
PREFECT_HOME: Final = "/tmp/prefect"
ENTRYPOINT_DIR: Final = "/etc/dioptra/entrypoint"
INIT_CONTAINER: Final = "sync"
MAIN_CONTAINER: Final = "runner"
# The native sidecar (an init container with restartPolicy Always) serving the runner's Prefect
# API on the Pod's loopback, when no Prefect server is configured; it starts before the sync.
PREFECT_SIDECAR: Final = "prefect-api"
# Set to "1" on the runner when PREFECT_API_URL is that sidecar: it may still be starting.
PREFECT_SIDECAR_ENV: Final = "DIOPTRA_PREFECT_SIDECAR"
# How long the runner waits for the sidecar to answer (seconds; default 120).
PREFECT_SIDECAR_TIMEOUT_ENV: Final = "DIOPTRA_PREFECT_SIDECAR_TIMEOUT"
RUNNER_UID: Final = 65532
DNS_LABEL_MAX: Final = 63
# The runner's environment in the Job (docs/architecture.md, "The Job's contract").
PLUGIN_DIR_ENV: Final = "DIOPTRA_PLUGIN_DIR"
EXPERIMENT_ENV: Final = "DIOPTRA_EXPERIMENT"  # the JSON snapshot of the generation it runs
NAME_ENV: Final = "DIOPTRA_EXPERIMENT_NAME"
NAMESPACE_ENV: Final = "DIOPTRA_EXPERIMENT_NAMESPACE"
ENTRYPOINT_DIR_ENV: Final = "DIOPTRA_ENTRYPOINT_DIR"
# The artifact store (the chart's artifacts.store) when spec.artifacts.store is absent.
ARTIFACT_STORE_ENV: Final = "DIOPTRA_ARTIFACT_STORE"
# The store's own S3 settings: DIOPTRA_ARTIFACTS_ENDPOINT_URL, _DEFAULT_REGION,
# _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _SESSION_TOKEN (the credentials from secretKeyRef).
ARTIFACTS_ENV_PREFIX: Final = "DIOPTRA_ARTIFACTS_"
# Set by the Job controller in an Indexed Job's Pods: which point of the sweep the runner runs
# (`dioptra_api.sweep.point_for_index`), and so which `status.sweepPoints` entry is its own.
JOB_COMPLETION_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
# The key of the sweep point a runner in the cluster runs: set by the runner itself once it has
# taken its point by JOB_COMPLETION_INDEX, for the rest of its process (tags, records).
SWEEP_POINT_ENV: Final = "DIOPTRA_SWEEP_POINT"
# With MLflow tracking on (the chart's tracking.mlflowTrackingUri, passed as
# MLFLOW_TRACKING_URI): the runner's own image, an MLflow tag of each run.
RUNNER_IMAGE_ENV: Final = "DIOPTRA_RUNNER_IMAGE"
# The runner's MLflow report (run id, or why tracking failed): `status.tracking`, or a sweep
# point's `status.sweepPoints.<key>.tracking`.
TRACKING_STATUS: Final = "tracking"


class Phase:
    """The one-word `status.phase` values (printer columns, humans)."""

    PENDING: Final = "Pending"
    SUSPENDED: Final = "Suspended"
    SYNCING_PLUGINS: Final = "SyncingPlugins"
    RUNNING: Final = "Running"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"

    TERMINAL: Final = frozenset({SUCCEEDED, FAILED})


class ConditionType:
    """The closed set of `status.conditions[].type` values the operator writes."""

    ACCEPTED: Final = "Accepted"  # the spec passed the operator's checks
    JOB_CREATED: Final = "JobCreated"  # the Job for observedGeneration exists
    SUSPENDED: Final = "Suspended"  # spec.suspend holds the Job (e.g. waiting for Kueue)
    PLUGINS_SYNCED: Final = "PluginsSynced"  # the init container finished the S3 sync
    STALLED: Final = "Stalled"  # the pod cannot start (image, Secret, config) and waits
    COMPLETE: Final = "Complete"  # terminal success
    FAILED: Final = "Failed"  # terminal failure; the reason says why
    # MLflow tracking failed (unreachable, refused); the run itself goes on and may succeed.
    TRACKING_FAILED: Final = "TrackingFailed"


class Reason:
    """CamelCase reasons; each is used as the condition reason and the Event reason."""

    SPEC_ACCEPTED: Final = "SpecAccepted"
    # Accepted, but cached task outputs would stay in the pod: no artifact store is named.
    CACHE_NOT_KEPT: Final = "CacheNotKept"
    INVALID_SPEC: Final = "InvalidSpec"
    JOB_CREATED: Final = "JobCreated"
    JOB_ADOPTED: Final = "JobAdopted"
    JOB_MISSING: Final = "JobMissing"
    API_REFUSED: Final = "ApiRefused"
    SERVICE_ACCOUNT_NOT_FOUND: Final = "ServiceAccountNotFound"
    POD_CREATION_FAILED: Final = "PodCreationFailed"
    SUSPENDED: Final = "Suspended"
    RESUMED: Final = "Resumed"
    PLUGINS_SYNCED: Final = "PluginsSynced"
    NO_PLUGIN_SOURCES: Final = "NoPluginSources"
    PLUGIN_SYNC_FAILED: Final = "PluginSyncFailed"
    CONTAINERS_STARTED: Final = "ContainersStarted"
    IMAGE_PULL_FAILED: Final = "ImagePullFailed"
    SECRET_NOT_FOUND: Final = "SecretNotFound"
    CONTAINER_CONFIG_ERROR: Final = "ContainerConfigError"
    SUCCEEDED: Final = "Succeeded"
    OOM_KILLED: Final = "OOMKilled"
    DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
    RUNNER_FAILED: Final = "RunnerFailed"
    PREFECT_API_FAILED: Final = "PrefectApiFailed"
    SWEEP_POINTS_FAILED: Final = "SweepPointsFailed"
    # The runner's `status.tracking.error`: MLflow could not record the run.
    MLFLOW_UNAVAILABLE: Final = "MlflowUnavailable"
    TRACKED: Final = "Tracked"
    # A sweep's summary Job (its plot, its MLflow parent run) failed; the points' phase stands.
    SWEEP_SUMMARY_FAILED: Final = "SweepSummaryFailed"
    # The runner's (status.run.reason): the artifact store could not be read or written.
    ARTIFACT_STORE_FAILED: Final = "ArtifactStoreFailed"
    # The runner's: an {artifact: <uri>} parameter names a missing or corrupt artifact.
    INVALID_ARTIFACT: Final = "InvalidArtifact"


# Default human messages for each reason; callers may append specifics (never credentials).
MESSAGES: Final[dict[str, str]] = {
    Reason.SPEC_ACCEPTED: "The spec is valid.",
    Reason.CACHE_NOT_KEPT: (
        "The spec is valid, but its tasks are cached with no artifact store "
        "(spec.artifacts.store, or the chart's artifacts.store): cached outputs stay in the "
        "pod and no later run or other sweep point reuses them"
    ),
    Reason.INVALID_SPEC: "The spec is invalid",
    Reason.JOB_CREATED: "Created Job {job}.",
    Reason.JOB_ADOPTED: "Job {job} already existed and was adopted.",
    Reason.JOB_MISSING: "Job {job} was deleted before the experiment finished.",
    Reason.API_REFUSED: "The API server refused the operator's request",
    Reason.SERVICE_ACCOUNT_NOT_FOUND: (
        "The runner Pod cannot be created: {detail}. Create the ServiceAccount "
        "(kubectl create serviceaccount {account} -n {namespace}, bound to a Role that allows "
        "patch on experiments/status), install the chart with runner.namespaces listing "
        "{namespace}, or set spec.serviceAccountName to one that exists."
    ),
    Reason.POD_CREATION_FAILED: "The Job controller cannot create the runner Pod",
    Reason.SUSPENDED: "The Job is suspended (spec.suspend is true).",
    Reason.RESUMED: "The Job is no longer suspended.",
    Reason.PLUGINS_SYNCED: "Plugins were synced from S3.",
    Reason.NO_PLUGIN_SOURCES: (
        "No plugin sources are set: the runner uses the plugins in its image."
    ),
    Reason.PLUGIN_SYNC_FAILED: "The plugin sync (init container) failed",
    Reason.CONTAINERS_STARTED: "The runner pod's containers started.",
    Reason.IMAGE_PULL_FAILED: "The runner image cannot be pulled",
    Reason.SECRET_NOT_FOUND: "A Secret the runner pod needs does not exist",
    Reason.CONTAINER_CONFIG_ERROR: "The runner pod's container configuration is invalid",
    Reason.SUCCEEDED: "The experiment succeeded.",
    Reason.OOM_KILLED: "The runner was killed for exceeding its memory limit (OOMKilled).",
    Reason.DEADLINE_EXCEEDED: "The Job exceeded spec.activeDeadlineSeconds.",
    Reason.BACKOFF_LIMIT_EXCEEDED: "The Job failed more times than spec.backoffLimit allows",
    Reason.RUNNER_FAILED: "The runner exited with an error",
    Reason.PREFECT_API_FAILED: "The Prefect API sidecar (container prefect-api) stopped",
    Reason.SWEEP_POINTS_FAILED: "{failed} of {total} sweep points failed",
    Reason.MLFLOW_UNAVAILABLE: (
        "MLflow tracking failed; the run went on without it (status.tracking.error)"
    ),
    Reason.TRACKED: "The run was recorded in MLflow (status.tracking).",
    Reason.SWEEP_SUMMARY_FAILED: "The sweep's summary Job {job} failed; the points' results stand",
    Reason.ARTIFACT_STORE_FAILED: "The artifact store could not be read or written",
    Reason.INVALID_ARTIFACT: "An artifact given as a parameter is missing or corrupt",
}

# Conditions whose True status is bad news: their Events are Warnings.
WARNING_WHEN_TRUE: Final = frozenset(
    {ConditionType.FAILED, ConditionType.STALLED, ConditionType.TRACKING_FAILED}
)
# Reasons that are bad news whatever their condition's status (a True Accepted that warns).
WARNING_REASONS: Final = frozenset({Reason.CACHE_NOT_KEPT})
# Conditions whose False status is bad news.
WARNING_WHEN_FALSE: Final = frozenset(
    {ConditionType.ACCEPTED, ConditionType.JOB_CREATED, ConditionType.PLUGINS_SYNCED}
)
