"""The operator's only gateway to the Kubernetes API (besides kopf's own watching).

Responses are plain dicts (`_preload_content=False`) so the rest of the operator works on the
same JSON shapes the API serves and the tests build. Transport and server errors become
`ApiUnavailable`, which handlers turn into `kopf.TemporaryError`.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from dioptra_operator import constants as c

MERGE_PATCH = "application/merge-patch+json"


class ApiUnavailable(RuntimeError):
    """The API server failed or could not be reached; retrying later may succeed."""


@functools.cache
def _client() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the standard kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _json(response: Any) -> dict[str, Any]:
    data = response.data
    return json.loads(data) if data else {}


def _unavailable(exc: Exception, what: str) -> ApiUnavailable:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return ApiUnavailable(f"{what}: {status or ''} {reason}".strip())


def now() -> str:
    """The current time in the API's RFC 3339 format (seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_job(namespace: str, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job, or return the existing one of that name: (job, created)."""
    api = kubernetes.client.BatchV1Api(_client())
    body: Any = job  # the client accepts plain dicts; its stubs only know V1Job
    try:
        return _json(api.create_namespaced_job(namespace, body, _preload_content=False)), True
    except ApiException as exc:
        if exc.status != 409:
            raise _unavailable(exc, f"creating Job {job['metadata']['name']}") from exc
    except Exception as exc:
        raise _unavailable(exc, f"creating Job {job['metadata']['name']}") from exc
    existing = read_job(namespace, job["metadata"]["name"])
    if existing is None:  # deleted between our create and read: let the retry create it
        raise ApiUnavailable(f"Job {job['metadata']['name']} vanished while being adopted")
    return existing, False


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job, or None when it does not exist."""
    api = kubernetes.client.BatchV1Api(_client())
    try:
        return _json(api.read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _unavailable(exc, f"reading Job {name}") from exc
    except Exception as exc:
        raise _unavailable(exc, f"reading Job {name}") from exc


def list_jobs(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The Jobs matching the label selector (a sweep's point Jobs), straight from the API."""
    api = kubernetes.client.BatchV1Api(_client())
    try:
        response = api.list_namespaced_job(
            namespace, label_selector=label_selector, _preload_content=False
        )
    except Exception as exc:
        raise _unavailable(exc, "listing Jobs") from exc
    return list(_json(response).get("items") or [])


def set_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    """Suspend or resume the Job (Kueue uses the same field to admit work)."""
    api = kubernetes.client.BatchV1Api(_client())
    try:
        api.patch_namespaced_job(
            name,
            namespace,
            {"spec": {"suspend": suspend}},
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
    except Exception as exc:
        raise _unavailable(exc, f"patching Job {name}") from exc


def delete_job(namespace: str, name: str) -> None:
    """Delete a superseded Job and, in the background, its Pods."""
    api = kubernetes.client.BatchV1Api(_client())
    try:
        api.delete_namespaced_job(
            name, namespace, propagation_policy="Background", _preload_content=False
        )
    except ApiException as exc:
        if exc.status != 404:
            raise _unavailable(exc, f"deleting Job {name}") from exc
    except Exception as exc:
        raise _unavailable(exc, f"deleting Job {name}") from exc


def read_experiment(namespace: str, name: str) -> dict[str, Any] | None:
    """The Experiment, or None when it is gone."""
    api = kubernetes.client.CustomObjectsApi(_client())
    try:
        return _json(
            api.get_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _unavailable(exc, f"reading Experiment {name}") from exc
    except Exception as exc:
        raise _unavailable(exc, f"reading Experiment {name}") from exc


def patch_experiment_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource: fields not named here (the runner's) are kept."""
    api = kubernetes.client.CustomObjectsApi(_client())
    try:
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
    except ApiException as exc:
        if exc.status == 404:
            return
        raise _unavailable(exc, f"patching Experiment {name} status") from exc
    except Exception as exc:
        raise _unavailable(exc, f"patching Experiment {name} status") from exc


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event about `obj` (kopf posts it in the background, with retries)."""
    import kopf  # local: keeps this module importable by tools that only need the client

    kopf.event(
        kopf.Body(cast(kopf.RawBody, obj)), type=type_, reason=reason, message=message[:1024]
    )
