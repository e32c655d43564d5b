"""The operator's only gateway to the Kubernetes API (besides kopf's own watching).

Responses are plain dicts (`_preload_content=False`) so the rest of the operator works on the
same JSON shapes the API serves and the tests build. Every call goes through one error policy
(`_calling`): transport and server errors become `ApiUnavailable` (retried soon), refusals
(403 Forbidden, 422 Invalid...) become `ApiRefused` with the server's reason, which the
handlers show on the Experiment.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from typing import Any, cast

import dioptra_api as c
import kubernetes
from kubernetes.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"


class ApiUnavailable(RuntimeError):
    """The API server failed or could not be reached; retrying later may succeed."""


class ApiRefused(RuntimeError):
    """The API server refused a request (forbidden, invalid): a person must change something.

    The message quotes the server's own reason, e.g. an RBAC or admission refusal.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# Connections kept open to the API server: at least one per handler thread (kopf's
# max_workers, 16) plus the Pod watch; past the pool's size urllib3 drops connections and every
# further call pays a new TLS handshake (measured: half the operator's CPU in a burst).
CONNECTION_POOL_SIZE = 32


@functools.cache
def _client() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the standard kubeconfig (KUBECONFIG)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return kubernetes.client.ApiClient(configuration)


def _json(response: Any) -> dict[str, Any]:
    """The body as JSON. Reading it to the end also returns the connection to the pool: an
    unread response (`_preload_content=False`) keeps its connection, and the next call opens
    a new one, TLS handshake included."""
    data = response.data
    return json.loads(data) if data else {}


def _server_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        return ""


# Refusals that settle by themselves: just after the CRD is installed, the API server's
# admission (OwnerReferencesPermissionEnforcement) may not know the Experiment kind yet.
_SETTLING = ("cannot find RESTMapping",)


def _settles(detail: str) -> bool:
    return any(text in detail for text in _SETTLING)


@contextlib.contextmanager
def _calling(what: str, *, absent_ok: bool = False) -> Iterator[None]:
    """Turn what a call raises into the operator's two kinds of failure.

    4xx answers other than 404 (and 409/429, which retrying settles) are refusals that will
    not change by themselves; everything else (5xx, transport, timeouts) may pass. With
    `absent_ok`, a 404 is left to the caller (raised as ApiException).
    """
    try:
        yield
    except ApiException as exc:
        if exc.status == 404 and absent_ok:
            raise
        status = exc.status or 0
        detail = _server_message(exc) or exc.reason or ""
        if 400 <= status < 500 and status not in (404, 409, 429) and not _settles(detail):
            raise ApiRefused(f"{what}: {detail}" if detail else what, status) from exc
        raise ApiUnavailable(f"{what}: {status or ''} {detail}".strip()) from exc
    except Exception as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ApiUnavailable(f"{what}: {reason}") from exc


def create_job(namespace: str, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job, or return the existing one of that name: (job, created)."""
    api = kubernetes.client.BatchV1Api(_client())
    body: Any = job  # the client accepts plain dicts; its stubs only know V1Job
    try:
        with _calling(f"creating Job {job['metadata']['name']}"):
            return _json(api.create_namespaced_job(namespace, body, _preload_content=False)), True
    except ApiUnavailable as exc:
        cause = exc.__cause__
        if not (isinstance(cause, ApiException) and cause.status == 409):
            raise
    existing = read_job(namespace, job["metadata"]["name"])
    if existing is None:  # deleted between our create and read: let the retry create it
        raise ApiUnavailable(f"Job {job['metadata']['name']} vanished while being adopted")
    return existing, False


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job, or None when it does not exist."""
    api = kubernetes.client.BatchV1Api(_client())
    try:
        with _calling(f"reading Job {name}", absent_ok=True):
            return _json(api.read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException:
        return None


def list_jobs(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The Jobs matching the label selector (an Experiment's, of every run), from the API."""
    api = kubernetes.client.BatchV1Api(_client())
    with _calling("listing Jobs"):
        response = api.list_namespaced_job(
            namespace, label_selector=label_selector, _preload_content=False
        )
    return list(_json(response).get("items") or [])


def patch_job_spec(namespace: str, name: str, changes: dict[str, Any]) -> None:
    """Change the Job's mutable fields in place: `suspend` (suspend or resume it; Kueue uses
    the same field to admit work) or `parallelism` (a sweep's pace)."""
    api = kubernetes.client.BatchV1Api(_client())
    with _calling(f"patching Job {name}"):
        _json(
            api.patch_namespaced_job(
                name,
                namespace,
                {"spec": dict(changes)},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )


def delete_job(namespace: str, name: str) -> None:
    """Delete a superseded Job and, in the background, its Pods."""
    api = kubernetes.client.BatchV1Api(_client())
    with contextlib.suppress(ApiException), _calling(f"deleting Job {name}", absent_ok=True):
        _json(
            api.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _preload_content=False
            )
        )


def job_creation_failures(namespace: str, job_name: str) -> list[str]:
    """What the Job controller said when it could not create the Job's Pods, newest first.

    The Job controller reports a Pod it cannot create (missing ServiceAccount, quota, Pod
    Security) only as `FailedCreate` Events on the Job; the Pod never appears.
    """
    api = kubernetes.client.CoreV1Api(_client())
    selector = f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate"
    with _calling(f"listing the Events of Job {job_name}"):
        response = api.list_namespaced_event(
            namespace, field_selector=selector, _preload_content=False
        )

    def when(event: dict[str, Any]) -> str:
        return str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or (event.get("metadata") or {}).get("creationTimestamp")
            or ""
        )

    events = sorted(_json(response).get("items") or [], key=when, reverse=True)
    return [str(event.get("message") or "") for event in events]


def read_experiment(namespace: str, name: str) -> dict[str, Any] | None:
    """The Experiment, or None when it is gone."""
    api = kubernetes.client.CustomObjectsApi(_client())
    try:
        with _calling(f"reading Experiment {name}", absent_ok=True):
            return _json(
                api.get_namespaced_custom_object(
                    c.GROUP, c.VERSION, namespace, c.PLURAL, name, _preload_content=False
                )
            )
    except ApiException:
        return None


def patch_experiment_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource: fields not named here (the runner's) are kept."""
    api = kubernetes.client.CustomObjectsApi(_client())
    with (
        contextlib.suppress(ApiException),
        _calling(f"patching Experiment {name} status", absent_ok=True),
    ):
        _json(
            api.patch_namespaced_custom_object_status(
                c.GROUP,
                c.VERSION,
                namespace,
                c.PLURAL,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event about `obj` (kopf posts it in the background, with retries)."""
    import kopf  # local: keeps this module importable by tools that only need the client

    kopf.event(
        kopf.Body(cast(kopf.RawBody, obj)), type=type_, reason=reason, message=message[:1024]
    )


def configuration_problem() -> str | None:
    """Why no Kubernetes API can be reached with the configuration at hand, or None.

    kopf finds its credentials the same way (in-cluster, else kubeconfig) but only reports
    their absence as a page of tracebacks ending in "Ran out of valid credentials".
    """
    try:
        kubernetes.config.load_incluster_config()
        return None
    except kubernetes.config.ConfigException as in_cluster:
        inside = str(in_cluster)
    try:
        kubernetes.config.load_kube_config()
        return None
    except Exception as kubeconfig:  # a missing, empty or malformed (YAML) kubeconfig
        outside = _kubeconfig_problem(kubeconfig)
    return (
        "no Kubernetes API to talk to: not in a pod "
        f"({inside.rstrip('.')}) and no usable kubeconfig ({outside.rstrip('.')}); "
        "install it in a cluster with the Helm chart, or set KUBECONFIG to a cluster's kubeconfig"
    )


def _kubeconfig_problem(error: Exception) -> str:
    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:  # PyYAML's own error
        return f"{path} is not valid YAML: {problem} at line {mark.line + 1}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
