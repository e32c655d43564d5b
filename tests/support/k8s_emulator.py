"""A Kubernetes API emulator for tests: kmock 0.8 with the gaps filled, served from a thread.

Why a subclass: kmock's ``KubernetesEmulator`` stores objects and streams watch events, but misses
what kopf, kubectl and the kubernetes client rely on (see /work/shared/TESTING-NOTES.md). This
module fills those gaps in one place:

- CREATE stamps ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` and honours
  ``generateName``; every change bumps ``resourceVersion``; ``generation`` moves only when
  something other than ``metadata``/``status`` changes; a no-op patch changes nothing.
- The ``status`` subresource changes only ``status``; the main resource never changes
  ``status`` (for resources that declare the subresource), as on a real API server.
- Merge patches follow RFC 7386; a failed JSON-patch ``test`` answers 422 (kopf re-reads then);
  a stale ``metadata.resourceVersion`` in a merge patch or PUT answers 409.
- Watches subscribe before they replay, honour ``?resourceVersion=`` (replaying from a bounded
  event log, or 410 Gone when it is too old) and ``?timeoutSeconds=``.
- LISTs answer ``kind: <Kind>List`` with ``apiVersion`` and the current resourceVersion;
  label selectors (``a=b``, ``a!=b``, ``a``, ``!a``) and ``metadata.name``/``metadata.namespace``
  field selectors filter lists and watches.
- Discovery: the core group says ``v1`` (not ``/v1``); subresources carry no short names.
- ``/api/v1/namespaces`` is routed as the ``namespaces`` resource (kmock misparses it).
- The request log is trimmed to the requests in flight, so each request costs O(1) however
  many came before. Tests assert on ``K8sApi.requests`` (light ``(method, path, body)``
  records) or on stored objects instead.
- Objects are looked up by key, never by scanning all objects.

The emulator runs in its own thread and event loop on 127.0.0.1 and a free port, so sync
clients, ``kopf.testing.KopfRunner``, subprocesses, kubectl and helm all reach its URL.
Resources are declared from ``crds/experiments.dioptra.dev.yaml`` plus the built-ins the
operator and chart use. Not emulated: schema validation, garbage collection by owner
references, server-side apply, any controller (Jobs never run by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import pathlib
import re
import secrets
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import pytest
import yaml
from kmock._internal import apps, enums, rendering

if TYPE_CHECKING:
    import kubernetes.client

__all__ = [
    "CRD_PATH",
    "ApiError",
    "DioptraKubernetesEmulator",
    "EmulatorServer",
    "K8sApi",
    "RecordedRequest",
    "k8s_api",
    "merge_patch",
    "running_k8s_api",
    "wait_until",
]

CRD_PATH = pathlib.Path(__file__).resolve().parents[2] / "crds" / "experiments.dioptra.dev.yaml"

# How many watch events are kept for watches resuming from a resourceVersion (older: 410 Gone).
EVENT_LOG_SIZE = 10_000
# How many versions of each object are kept in kmock's per-object history (memory bound).
OBJECT_HISTORY_SIZE = 10

_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
_SUBRESOURCE_VERBS = {"get", "patch", "update"}


class _Builtin(NamedTuple):
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    shortnames: frozenset[str] = frozenset()


# Built-in kinds the operator, the runner and the chart touch. Namespaces are routed specially.
_BUILTINS: tuple[_Builtin, ...] = (
    _Builtin("", "v1", "pods", "Pod", True, frozenset({"status"}), frozenset({"po"})),
    _Builtin("", "v1", "secrets", "Secret", True),
    _Builtin("", "v1", "configmaps", "ConfigMap", True, shortnames=frozenset({"cm"})),
    _Builtin("", "v1", "events", "Event", True, shortnames=frozenset({"ev"})),
    _Builtin("", "v1", "namespaces", "Namespace", False, frozenset({"status"}), frozenset({"ns"})),
    _Builtin("", "v1", "serviceaccounts", "ServiceAccount", True, shortnames=frozenset({"sa"})),
    _Builtin("", "v1", "services", "Service", True, frozenset({"status"}), frozenset({"svc"})),
    _Builtin("batch", "v1", "jobs", "Job", True, frozenset({"status"})),
    _Builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        frozenset({"status"}),
        frozenset({"deploy"}),
    ),
    _Builtin("events.k8s.io", "v1", "events", "Event", True, shortnames=frozenset({"ev"})),
    _Builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
    _Builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _Builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _Builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _Builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _Builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        frozenset({"status"}),
        frozenset({"crd", "crds"}),
    ),
)

# Used only while crds/experiments.dioptra.dev.yaml does not exist yet.
_FALLBACK_CRD: dict[str, Any] = {
    "spec": {
        "group": "dioptra.dev",
        "scope": "Namespaced",
        "names": {"kind": "Experiment", "plural": "experiments", "singular": "experiment"},
        "versions": [{"name": "v1alpha1", "served": True, "subresources": {"status": {}}}],
    }
}

_NAMESPACES_PATH = re.compile(
    r"/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?"
)
_NAMESPACES_PLACEHOLDER = "namespaces--cluster-scoped"


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch (``null`` deletes, dicts merge, the rest replaces)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything whose change bumps ``metadata.generation`` (all but metadata and status)."""
    return {k: v for k, v in obj.items() if k not in {"metadata", "status", "apiVersion", "kind"}}


def _label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Evaluate the equality/existence subset of label selectors (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_selector_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """Evaluate ``metadata.name``/``metadata.namespace`` field selectors (``=``, ``!=``)."""
    meta = obj.get("metadata") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        field, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        actual = meta.get(field.strip().removeprefix("metadata."))
        if (actual == value.strip()) == negate:
            return False
    return True


def load_crd_resources(path: pathlib.Path = CRD_PATH) -> dict[kmock.resource, kmock.ResourceInfo]:
    """Declare each served version of a CRD file as a kmock resource (with its subresources)."""
    crd = yaml.safe_load(path.read_text()) if path.exists() else _FALLBACK_CRD
    spec = crd["spec"]
    names = spec["names"]
    result: dict[kmock.resource, kmock.ResourceInfo] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        result[kmock.resource(spec["group"], version["name"], names["plural"])] = (
            kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs=_VERBS,
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set((version.get("subresources") or {}).keys()),
            )
        )
    return result


def _builtin_resources() -> dict[kmock.resource, kmock.ResourceInfo]:
    return {
        kmock.resource(b.group, b.version, b.plural): kmock.ResourceInfo(
            kind=b.kind,
            singular=b.kind.lower(),
            namespaced=b.namespaced,
            verbs=_VERBS,
            shortnames=set(b.shortnames),
            subresources=set(b.subresources),
        )
        for b in _BUILTINS
    }


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def _k8s_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


# ---------------------------------------------------------------------------------------------
# The emulator (runs inside the server thread's event loop)
# ---------------------------------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """A light record of one request, kept after kmock's own log is trimmed."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


class _Injected(NamedTuple):
    method: str
    path: re.Pattern[str]
    status: int
    remaining: list[int]  # mutable counter shared by reference


@attrs.define(kw_only=True)
class DioptraKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the behaviour kopf, kubectl and the kubernetes client rely on."""

    record_requests: bool = True
    recorded: list[RecordedRequest] = attrs.field(factory=list)
    _rv: int = attrs.field(default=0, init=False)
    _event_log: deque[tuple[int, kmock.resource, dict[str, Any]]] = attrs.field(
        factory=lambda: deque(maxlen=EVENT_LOG_SIZE), init=False
    )
    _event_floor: int = attrs.field(default=0, init=False)
    _results: dict[rendering.Request, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _injected: list[_Injected] = attrs.field(factory=list, init=False)
    _injected_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    declared: dict[kmock.resource, kmock.ResourceInfo] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[enums.method.PUT] << self._serve_written
        self.declared.update({**_builtin_resources(), **load_crd_resources()})
        for res, info in self.declared.items():
            self.resources[res] = info

    # -- plumbing ------------------------------------------------------------------------------

    def inject_failure(self, method: str, path: str, status: int, times: int) -> None:
        """Answer the next ``times`` requests matching ``method`` and path regex with ``status``."""
        with self._injected_lock:
            self._injected.append(_Injected(method.upper(), re.compile(path), status, [times]))

    def _take_injected(self, request: rendering.Request) -> int | None:
        with self._injected_lock:
            for item in self._injected:
                wanted = item.method == str(request.method.value).upper()
                if wanted and item.remaining[0] > 0 and item.path.search(request.url.path):
                    item.remaining[0] -= 1
                    return item.status
        return None

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser crashes on /api/v1/namespaces[/name]: let it parse an equivalent
        # path with a placeholder plural instead, which _route_namespaces() then renames.
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is not None:
            tail = "".join(f"/{part}" for part in (match["name"], match["sub"]) if part)
            query = f"?{raw_request.query_string}" if raw_request.query_string else ""
            raw_request = raw_request.clone(
                rel_url=f"/api/v1/{_NAMESPACES_PLACEHOLDER}{tail}{query}"
            )
        return await super().__call__(raw_request)

    def _route_namespaces(self, request: rendering.Request) -> rendering.Request:
        """Turn the placeholder plural back into ``namespaces`` (see ``__call__``)."""
        if request.resource is None or request.resource.plural != _NAMESPACES_PLACEHOLDER:
            return request
        path = request.url.path.replace(_NAMESPACES_PLACEHOLDER, "namespaces", 1)
        fixed = attrs.evolve(
            request,
            resource=kmock.resource("", "v1", "namespaces"),
            url=request.url.with_path(path),
        )
        self._requests[:] = [fixed if r is request else r for r in self._requests]
        return fixed

    def _forget(self, request: rendering.Request) -> None:
        """Trim kmock's request logs to what is in flight: O(1) matching for every request."""
        self._requests[:] = [r for r in self._requests if r is not request]
        for payload in self._payloads:
            if request in payload._requests:
                payload._requests.remove(request)
        self._results.pop(request, None)
        if self._errors and len(self._errors[-1]) > 100:
            del self._errors[-1][:-100]

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _emit(self, resource: kmock.resource, kind: str, raw: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(raw)}
        if len(self._event_log) == self._event_log.maxlen:
            self._event_floor = self._event_log[0][0]
        self._event_log.append((int(raw["metadata"]["resourceVersion"]), resource, event))
        await self._buses[resource].put(event)

    def _store(self, key: tuple[Any, ...], raw: dict[str, Any]) -> None:
        if key in self._objects:
            history = self._objects[key].history
            history.append(raw)
            if len(history) > OBJECT_HISTORY_SIZE:
                del history[: len(history) - OBJECT_HISTORY_SIZE]
        else:
            self._objects[key] = raw

    def _live(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        if key in self._objects and not self._objects[key].deleted:
            raw: dict[str, Any] = self._objects[key].raw
            return raw
        return None

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        return self.declared[resource]

    def _key(self, request: rendering.Request, name: str | None = None) -> tuple[Any, ...]:
        assert request.resource is not None
        namespaced = self._info(request.resource).namespaced
        return (request.resource, request.namespace if namespaced else None, name or request.name)

    def _not_found(self, request: rendering.Request) -> kmock.KubernetesError:
        plural = request.resource.plural if request.resource else "?"
        return _k8s_error(
            404, "NotFound", f'{plural} "{request.name}" not found', name=request.name, kind=plural
        )

    # -- the request entry point ----------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        request = self._route_namespaces(request)
        if self.record_requests:
            self.recorded.append(
                RecordedRequest(
                    str(request.method.value), request.url.path, dict(request.params), request.data
                )
            )
        delete_key: tuple[Any, ...] | None = None
        try:
            status = self._take_injected(request)
            if status is not None:
                raise _k8s_error(status, "InjectedFailure", f"injected HTTP {status} for a test")
            resource = request.resource
            if resource is not None and resource.plural is not None:
                if resource not in self.declared:
                    raise kmock.KubernetesResourceNotFoundError()
                async with self._lock:
                    delete_key = await self._mutate(request)
            try:
                return await apps.RawHandler._handle(self, request)
            finally:
                if delete_key is not None:
                    async with self._lock:
                        await self._purge(delete_key)
        finally:
            self._forget(request)

    async def _mutate(self, request: rendering.Request) -> tuple[Any, ...] | None:
        """Apply a write to the stored objects; return a key to purge after responding."""
        assert request.resource is not None
        info = self._info(request.resource)
        method = str(request.method.value).upper()
        sub = request.subresource
        if sub is not None and sub not in info.subresources:
            raise _k8s_error(404, "NotFound", f"the server could not find {sub!r}")
        if method == "POST" and request.name is None:
            await self._create(request, info)
            return None
        if request.name is None or method not in {"PATCH", "PUT", "DELETE"}:
            return None
        key = self._key(request)
        old = self._live(key)
        if old is None:
            raise self._not_found(request)
        if method == "DELETE":
            return await self._delete(request, key, old)
        if method == "PATCH":
            patched = self._apply_patch(request, old)
        else:
            patched = self._apply_put(request, old)
        new = self._settle(info, old, patched, sub)
        if new != old:
            self._store(key, new)
            await self._emit(request.resource, "MODIFIED", new)
        self._results[request] = new
        meta = new.get("metadata", {})
        return key if meta.get("deletionTimestamp") and not meta.get("finalizers") else None

    async def _create(self, request: rendering.Request, info: kmock.ResourceInfo) -> None:
        assert request.resource is not None
        body = request.data
        if not isinstance(body, dict):
            raise _k8s_error(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        namespace = (
            (request.namespace or meta.get("namespace") or "default") if info.namespaced else None
        )
        name = meta.get("name")
        if not name and meta.get("generateName"):
            alphabet = string.ascii_lowercase + string.digits
            while not name or self._live((request.resource, namespace, name)) is not None:
                name = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
        if not name:
            raise _k8s_error(422, "Invalid", "metadata.name or metadata.generateName is required")
        key = (request.resource, namespace, name)
        if self._live(key) is not None:
            raise _k8s_error(
                409,
                "AlreadyExists",
                f'{request.resource.plural} "{name}" already exists',
                name=name,
                kind=request.resource.plural,
            )
        obj.setdefault("apiVersion", _api_version(request.resource))
        obj.setdefault("kind", info.kind)
        if "status" in info.subresources:
            obj.pop("status", None)
        meta.pop("deletionTimestamp", None)
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        if namespace is not None:
            meta["namespace"] = namespace
        self._store(key, obj)
        await self._emit(request.resource, "ADDED", obj)
        self._results[request] = obj

    def _apply_patch(self, request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        data = request.data
        if content_type == "application/apply-patch+yaml":
            raise _k8s_error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if isinstance(data, list):
            try:
                patched: dict[str, Any] = jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise _k8s_error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from e
            return patched
        if isinstance(data, dict):
            self._check_resource_version(request, old, data)
            result: dict[str, Any] = merge_patch(old, data)
            return result
        raise _k8s_error(400, "BadRequest", "the patch must be a JSON object or a JSON patch list")

    def _apply_put(self, request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
        data = request.data
        if not isinstance(data, dict):
            raise _k8s_error(400, "BadRequest", "the request body must be a JSON object")
        self._check_resource_version(request, old, data)
        return copy.deepcopy(data)

    def _check_resource_version(
        self, request: rendering.Request, old: Mapping[str, Any], data: Mapping[str, Any]
    ) -> None:
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != old["metadata"]["resourceVersion"]:
            plural = request.resource.plural if request.resource else "?"
            raise _k8s_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{request.name}": the object has'
                " been modified; please apply your changes to the latest version and try again",
            )

    def _settle(
        self,
        info: kmock.ResourceInfo,
        old: dict[str, Any],
        patched: dict[str, Any],
        sub: str | None,
    ) -> dict[str, Any]:
        """Keep what the endpoint may not change, then restamp resourceVersion and generation."""
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in patched:
                new["status"] = patched["status"]
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(patched)
            if "status" in info.subresources:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        old_meta = old.get("metadata", {})
        meta = new["metadata"] = dict(new.get("metadata") or {})
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        for field in ("apiVersion", "kind"):
            if field in old:
                new[field] = old[field]
        if new == old:
            return old
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = self._next_rv()
        return new

    async def _delete(
        self, request: rendering.Request, key: tuple[Any, ...], old: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        assert request.resource is not None
        meta = old.get("metadata", {})
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["resourceVersion"] = self._next_rv()
                self._store(key, new)
                await self._emit(request.resource, "MODIFIED", new)
                old = new
            self._results[request] = old
            return None
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        await self._emit(request.resource, "DELETED", final)
        self._results[request] = final
        return None

    async def _purge(self, key: tuple[Any, ...]) -> None:
        """Really delete an object whose last finalizer was removed after its deletion."""
        raw = self._live(key)
        if raw is None:
            return
        final = copy.deepcopy(raw)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        await self._emit(key[0], "DELETED", final)

    # -- responses (kmock fallbacks) --------------------------------------------------------------

    def _get_resources(self) -> list[kmock.resource]:
        return list(self.declared)  # never scan all stored objects

    def _matches(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        labels = request.params.get("labelSelector")
        if labels and not _label_selector_matches(labels, meta.get("labels") or {}):
            return False
        fields = request.params.get("fieldSelector")
        return not fields or _field_selector_matches(fields, obj)

    def _snapshot(self, request: rendering.Request) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, _, _), obj in self._objects.items()
            if resource == request.resource and not obj.deleted and self._matches(request, obj.raw)
        ]

    async def _serve_written(self, request: rendering.Request) -> rendering.Payload:
        if request not in self._results:
            raise kmock.KubernetesEndpointNotFoundError()
        return self._results[request]

    _serve_create = _serve_update = _serve_delete = _serve_written

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        raw = self._live(self._key(request))
        if raw is None:
            raise self._not_found(request)
        return raw

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        async with self._lock:
            items = copy.deepcopy(self._snapshot(request))
            rv = str(self._rv)
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{self._info(request.resource).kind}List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now: the stream is live even if nothing happens
        assert request.resource is not None
        bus = self._buses[request.resource]
        marker = await bus.mark()  # subscribe BEFORE the replay, so nothing falls in between
        try:
            since = request.params.get("resourceVersion") or "0"
            initial: list[dict[str, Any]]
            async with self._lock:
                snapshot_rv = self._rv
                if since == "0":
                    initial = [{"type": "ADDED", "object": o} for o in self._snapshot(request)]
                elif int(since) < self._event_floor:
                    initial = [self._gone_event(since)]
                else:
                    initial = [
                        event
                        for rv, res, event in self._event_log
                        if res == request.resource and rv > int(since)
                        if self._matches(request, event["object"])
                    ]
                initial = copy.deepcopy(initial)
            for replayed in initial:
                yield replayed
            if initial and initial[-1]["type"] == "ERROR":
                return
            timeout = float(request.params.get("timeoutSeconds") or 0) or None
            deadline = None if timeout is None else time.monotonic() + timeout
            stream = bus.stream(since=marker).__aiter__()
            while (event := await self._next_event(stream, deadline)) is not None:
                if int(event["object"]["metadata"]["resourceVersion"]) <= snapshot_rv:
                    continue  # already part of the replay
                if self._matches(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _next_event(
        self, stream: AsyncIterator[dict[str, Any]], deadline: float | None
    ) -> dict[str, Any] | None:
        """The next bus event, or None at the watch's timeout or when the server shuts down."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        getter = asyncio.ensure_future(anext(stream))
        closing = asyncio.ensure_future(self._closing.wait())
        done, _ = await asyncio.wait(
            {getter, closing}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        closing.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await getter
        return None

    @staticmethod
    def _gone_event(since: str) -> dict[str, Any]:
        return {
            "type": "ERROR",
            "object": {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {since}",
            },
        }

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        wanted = request.resource
        resources = [
            r for r in self.declared if r.group == wanted.group and r.version == wanted.version
        ]
        if not resources and wanted.group != "":
            raise kmock.KubernetesResourceNotFoundError()
        entries: list[dict[str, Any]] = []
        for res in resources:
            info = self.declared[res]
            entries.append(
                {
                    "name": res.plural,
                    "kind": info.kind,
                    "singularName": info.singular or "",
                    "namespaced": bool(info.namespaced),
                    "verbs": sorted(info.verbs),
                    "shortNames": sorted(info.shortnames),
                    "categories": sorted(info.categories),
                }
            )
            for sub in sorted(info.subresources):
                entries.append(
                    {
                        "name": f"{res.plural}/{sub}",
                        "kind": info.kind,
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "verbs": sorted(_SUBRESOURCE_VERBS),
                    }
                )
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": _api_version(kmock.resource(wanted.group, wanted.version, "x")),
            "resources": entries,
        }


# ---------------------------------------------------------------------------------------------
# The server thread and the test-facing handle
# ---------------------------------------------------------------------------------------------


class EmulatorServer:
    """Runs a :class:`DioptraKubernetesEmulator` on 127.0.0.1:<free port> in its own thread."""

    def __init__(self, *, record_requests: bool = True) -> None:
        self._record_requests = record_requests
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self.url = ""
        self.emulator: DioptraKubernetesEmulator | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the Kubernetes API emulator did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes API emulator failed: {self._error}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the emulator's loop (thread-safe access to its state)."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        emulator = DioptraKubernetesEmulator(record_requests=self._record_requests)
        async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()
            emulator._closing.set()  # end open watches, or aiohttp waits for them at shutdown
            await asyncio.sleep(0.05)


class ApiError(Exception):
    """An HTTP error answered by the emulator to one of :class:`K8sApi`'s helpers."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(
            f"HTTP {status}: {body.get('message') if isinstance(body, dict) else body}"
        )
        self.status = status
        self.body = body


class K8sApi:
    """What tests get from the ``k8s_api`` fixture: URL, kubeconfig, clients and shortcuts."""

    def __init__(self, server: EmulatorServer, kubeconfig_path: pathlib.Path) -> None:
        self.server = server
        self.url = server.url
        self.kubeconfig_path = kubeconfig_path
        self._clients: list[kubernetes.client.ApiClient] = []
        assert server.emulator is not None
        self.emulator: DioptraKubernetesEmulator = server.emulator

    # -- access for subprocesses and clients ---------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl, helm and the kubernetes client here."""
        return {"KUBECONFIG": str(self.kubeconfig_path)}

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ready ``kubernetes.client.ApiClient`` for this emulator (closed at teardown)."""
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.verify_ssl = False
        config.api_key = {"authorization": "Bearer test-token"}
        client = kubernetes.client.ApiClient(config)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()

    # -- request log and fault injection ---------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, as ``(method, path, query, body)`` records."""
        return list(self.server.call(lambda: list(self.emulator.recorded)))

    def clear_requests(self) -> None:
        self.server.call(self.emulator.recorded.clear)

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests with this method and path regex with ``status``."""
        self.emulator.inject_failure(method, path, status, times)

    # -- resource shortcuts ---------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[kmock.resource, kmock.ResourceInfo]:
        """Find a declared resource by plural, kind, short name or ``group/version/plural``."""
        declared = list(self.emulator.declared.items())
        if "/" in ref:
            wanted = kmock.resource(ref)
            declared = [(r, i) for r, i in declared if wanted.check(r)]
        else:
            needle = ref.lower()
            declared = [
                (r, i)
                for r, i in declared
                if needle in {r.plural, (i.kind or "").lower(), i.singular, *i.shortnames}
            ]
        if not declared:
            raise KeyError(f"no declared resource matches {ref!r}")
        declared.sort(key=lambda item: item[0].group != "")  # core group first (v1 events)
        return declared[0]

    def path(
        self,
        ref: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        res, info = self.resolve(ref)
        base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        if info.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        parts = [base, res.plural or ""] + [p for p in (name, subresource) if p]
        return "/".join(parts)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(e.code, payload) from None

    def create(self, body: Mapping[str, Any], namespace: str | None = "default") -> Any:
        """POST an object; a ``status`` in ``body`` is then written through ``/status``."""
        res, info = self._resolve_kind(str(body["apiVersion"]), str(body["kind"]))
        namespace = (body.get("metadata") or {}).get("namespace", namespace)
        ref = f"{res.group}/{res.version}/{res.plural}" if res.group else f"v1/{res.plural}"
        created = self.request("POST", self.path(ref, namespace), dict(body))
        if "status" in body and "status" in info.subresources:
            created = self.patch(
                ref,
                created["metadata"]["name"],
                {"status": body["status"]},
                namespace=namespace,
                subresource="status",
            )
        return created

    def _resolve_kind(
        self, api_version: str, kind: str
    ) -> tuple[kmock.resource, kmock.ResourceInfo]:
        group, _, version = api_version.rpartition("/")
        for res, info in self.emulator.declared.items():
            if res.group == group and res.version == version and info.kind == kind:
                return res, info
        raise KeyError(f"no declared resource for {api_version} {kind}")

    def get(self, ref: str, name: str, namespace: str | None = "default") -> Any:
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
        namespace: str | None = "default",
        subresource: str | None = None,
    ) -> Any:
        """JSON merge patch for a dict, JSON patch for a list."""
        content_type = (
            "application/json-patch+json"
            if isinstance(patch, list)
            else "application/merge-patch+json"
        )
        return self.request(
            "PATCH", self.path(ref, namespace, name, subresource), patch, content_type
        )

    def delete(self, ref: str, name: str, namespace: str | None = "default") -> Any:
        return self.request("DELETE", self.path(ref, namespace, name))

    def exists(self, ref: str, name: str, namespace: str | None = "default") -> bool:
        try:
            self.get(ref, name, namespace)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True


def _write_kubeconfig(path: pathlib.Path, url: str) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": "default"},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def running_k8s_api(folder: pathlib.Path, *, record_requests: bool = True) -> Iterator[K8sApi]:
    """Start an emulator (outside pytest too, e.g. in benchmarks); stop it on exit."""
    server = EmulatorServer(record_requests=record_requests)
    server.start()
    api = K8sApi(server, _write_kubeconfig(folder / "kubeconfig", server.url))
    try:
        # Like a real cluster, start with the `default` namespace (and an empty request log).
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        api.clear_requests()
        yield api
    finally:
        api.close()
        server.stop()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


@pytest.fixture()
def k8s_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sApi]:
    """A fresh Kubernetes API emulator per test (only `default` namespace; ~0.1 s to start)."""
    with running_k8s_api(tmp_path_factory.mktemp("k8s-api")) as api:
        yield api
