"""Keeping task outputs in the artifact store, and reusing them for cached tasks.

:class:`ArtifactKeeper` is the :class:`dioptra.graph.OutputStore` the runner gives a flow run:
the engine asks it, before a task runs, whether a stored output stands in for the call
(``lookup``), and hands it every output that was computed (``keep``).

A cached task's key is the sha256 of: a format version, the plugin function's qualified name
(``module.qualname``), the sha256 of the function's source (``inspect.getsource``: the
function itself, not the helpers it calls nor the module around it), and the sha256 of each
argument's stored form (JSON, .npy or pickle, bound to the signature's parameter names, so a
positional and a keyword call give the same key). An upstream output, or an artifact input,
counts by the digest it was stored or loaded with, so a chain of cached tasks keeps its keys
across runs however its objects pickle. Nothing else enters the key: a plugin that reads files,
the clock, the environment or a random source it does not take as an argument returns what
it returned the first time.

A call whose function source or inputs cannot be digested is simply not cached (a warning);
an output that cannot be serialized is not kept (a warning). The store failing (unreachable,
access denied) fails the task, with one line naming the store.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dioptra.graph import CacheLookup, TaskNode

from dioptra_runner.artifacts import Encoded, Store, artifact_name, decode, encode

__all__ = ["KEY_VERSION", "ArtifactKeeper", "ArtifactRecord"]

KEY_VERSION = 1
_LOG = logging.getLogger("dioptra.run")


@dataclass(frozen=True)
class ArtifactRecord:
    """One task output in the store (``status.artifacts`` entry)."""

    task: str
    uri: str
    sha256: str
    size: int
    format: str
    cached: bool = False

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "task": self.task,
            "uri": self.uri,
            "sha256": self.sha256,
            "bytes": self.size,
            "format": self.format,
        }
        if self.cached:
            entry["cached"] = True
        return entry


@dataclass
class _Known:
    """An object the keeper stored or loaded, and the digest it counts by as an input."""

    value: Any
    sha256: str


class ArtifactKeeper:
    """Stores every task output of one run in ``store``; serves cached tasks from it.

    ``cache_all`` caches every task (``spec.cache: true``); otherwise only the nodes whose
    options ask for it (a step's ``cache: true``, ``call_task(..., cache=True)``).
    ``prefix`` names the run's tasks in records and warnings (a sweep point's label).
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_all: bool = False,
        prefix: str = "",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.cache_all = cache_all
        self.prefix = prefix
        self.records: list[ArtifactRecord] = []
        self.warnings: list[str] = []
        self._warn = warn
        self._lock = threading.Lock()
        self._known: dict[int, _Known] = {}

    # -- the OutputStore protocol ---------------------------------------------------------------

    def lookup(self, node: TaskNode, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CacheLookup:
        if not (self.cache_all or node.options.cache) or node.func is None:
            return CacheLookup()
        try:
            key = self.cache_key(node.func, args, kwargs)
        except _Undigestable as why:
            self._warning(f"task {self.prefix}{node.name}: not cached: {why}")
            return CacheLookup()
        entry = self._read_entry(key)
        if entry is None:
            return CacheLookup(key=key)
        sha256, format_ = entry["sha256"], entry["format"]
        name = artifact_name(sha256, format_)
        data = self.store.read(name)
        if data is None:
            self._warning(
                f"task {self.prefix}{node.name}: {self.store.uri(name)} is gone; running it"
            )
            return CacheLookup(key=key)
        try:
            value = decode(data, format_, sha256)
        except Exception as error:
            self._warning(
                f"task {self.prefix}{node.name}: {self.store.uri(name)} cannot be read back "
                f"({_one_line(error)}); running it"
            )
            return CacheLookup(key=key, state="replace")
        self._remember(value, sha256)
        self._record(node, Encoded(data, format_), cached=True)
        return CacheLookup(key=key, hit=True, value=value)

    def keep(self, node: TaskNode, lookup: CacheLookup, result: Any) -> None:
        if result is None:
            return  # nothing to keep: a task run for its effect
        try:
            encoded = encode(result)
        except Exception as error:
            self._warning(
                f"task {self.prefix}{node.name}: output not stored ({type(result).__name__} "
                f"cannot be serialized: {_one_line(error)})"
            )
            return
        name = encoded.name
        if lookup.state == "replace" or not self.store.exists(name):
            self.store.write(name, encoded.data)
        self._remember(result, encoded.sha256)
        if lookup.key is not None:
            self._write_entry(lookup.key, node, encoded)
        self._record(node, encoded, cached=False)

    # -- keys -----------------------------------------------------------------------------------

    def cache_key(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """The cache key of calling ``func`` with these arguments (see the module's docs)."""
        target = inspect.unwrap(func)
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError) as error:
            raise _Undigestable(
                f"the source of {_qualified(target)} is not available ({error})"
            ) from None
        try:
            bound = dict(inspect.signature(func).bind(*args, **kwargs).arguments)
        except (TypeError, ValueError):
            bound = {**{f"#{i}": value for i, value in enumerate(args)}, **kwargs}
        inputs = {name: self._digest(name, value) for name, value in bound.items()}
        material = {
            "version": KEY_VERSION,
            "function": _qualified(target),
            "source": hashlib.sha256(source.encode()).hexdigest(),
            "inputs": inputs,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _digest(self, name: str, value: Any) -> str:
        with self._lock:
            known = self._known.get(id(value))
        if known is not None and known.value is value:
            return known.sha256
        try:
            return encode(value).sha256
        except Exception as error:
            raise _Undigestable(
                f"input {name!r} ({type(value).__name__}) cannot be serialized: {_one_line(error)}"
            ) from None

    # -- plumbing -------------------------------------------------------------------------------

    def _read_entry(self, key: str) -> dict[str, Any] | None:
        data = self.store.read(f"cache/{key}.json")
        if data is None:
            return None
        try:
            entry = json.loads(data)
            artifact_name(entry["sha256"], entry["format"])  # a known format
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is a miss; the run writes it again
        return entry if isinstance(entry.get("sha256"), str) else None

    def _write_entry(self, key: str, node: TaskNode, encoded: Encoded) -> None:
        entry = {
            "sha256": encoded.sha256,
            "format": encoded.format,
            "size": len(encoded.data),
            "task": node.task,
        }
        self.store.write(f"cache/{key}.json", json.dumps(entry).encode())

    def _remember(self, value: Any, sha256: str) -> None:
        with self._lock:
            self._known[id(value)] = _Known(value, sha256)

    def _record(self, node: TaskNode, encoded: Encoded, *, cached: bool) -> None:
        record = ArtifactRecord(
            task=f"{self.prefix}{node.name}",
            uri=self.store.uri(encoded.name),
            sha256=encoded.sha256,
            size=len(encoded.data),
            format=encoded.format,
            cached=cached,
        )
        with self._lock:
            self.records.append(record)

    def _warning(self, message: str) -> None:
        _LOG.warning("%s", message)
        with self._lock:
            self.warnings.append(message)
        if self._warn is not None:
            self._warn(message)

    def remember(self, value: Any, sha256: str) -> None:
        """Count ``value`` (an artifact input) by the digest it was loaded with."""
        self._remember(value, sha256)


class _Undigestable(Exception):
    """Why a call has no cache key."""


def _qualified(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
