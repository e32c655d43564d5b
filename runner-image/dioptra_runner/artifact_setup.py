"""Which artifact store a run uses, and the artifacts it takes as inputs.

The store is ``spec.artifacts.store``, else ``$DIOPTRA_ARTIFACT_STORE`` (the chart's
``artifacts.store``, passed by the operator), else, only when some task is cached, the local
folder ``<cache>/artifacts`` (``--plugin-cache``, ``$DIOPTRA_CACHE_DIR`` or
``~/.cache/dioptra``). With a store every task output is kept in it; without one (no store
named and nothing cached) nothing is written, so a plain local run leaves no files behind.

An S3 store uses ``spec.artifacts.endpointURL``/``region`` when given, else the plugins'
(``spec.plugins``), with the credentials of the environment. In a pod the operator passes the
store's endpoint, region and Secret as ``DIOPTRA_ARTIFACTS_*`` variables (from secretKeyRef),
which take the place of ``AWS_*`` for the store alone.

A parameter whose value is ``{artifact: <uri>}`` is replaced by the object stored there,
after its bytes hashed to the digest in its name; any problem stops the run before a task
starts, naming the parameter and the URI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dioptra_api import ARTIFACT_STORE_ENV, ARTIFACTS_ENV_PREFIX

from dioptra_runner.artifacts import (
    ArtifactInputError,
    Store,
    StoreError,
    decode,
    open_store,
    parse_artifact_uri,
)
from dioptra_runner.task_cache import ArtifactKeeper

__all__ = ["ArtifactSetup", "is_artifact_input"]

# DIOPTRA_ARTIFACTS_<suffix> stands for AWS_<suffix> when the store is opened.
_AWS_SUFFIXES = (
    "ENDPOINT_URL",
    "DEFAULT_REGION",
    "ACCESS_KEY_ID",
    "SECRET_ACCESS_KEY",
    "SESSION_TOKEN",
)


def is_artifact_input(value: Any) -> bool:
    """Whether a parameter value is ``{artifact: <uri>}``."""
    return (
        isinstance(value, dict)
        and set(value) == {"artifact"}
        and isinstance(value["artifact"], str)
    )


@dataclass
class ArtifactSetup:
    """The run's store (if any) and its loaded artifact inputs."""

    spec: Mapping[str, Any]
    cache_dir: Path
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    _stores: dict[str, Store] = field(default_factory=dict)
    _inputs: dict[str, tuple[Any, str]] = field(default_factory=dict)
    store: Store | None = None

    @property
    def configured(self) -> str | None:
        """The store named by the spec or the chart, if any."""
        artifacts = self.spec.get("artifacts") or {}
        return artifacts.get("store") or self.environ.get(ARTIFACT_STORE_ENV) or None

    def open(self, *, cached_tasks: bool) -> Store | None:
        """The run's store: the one configured, else a local one when a task is cached."""
        location = self.configured
        if location is None and cached_tasks:
            location = str(self.cache_dir / "artifacts")
        self.store = self._open(location) if location else None
        return self.store

    def keeper(self, prefix: str = "") -> ArtifactKeeper | None:
        """A keeper for one run (a sweep point's label as ``prefix``), None without a store."""
        if self.store is None:
            return None
        keeper = ArtifactKeeper(self.store, cache_all=bool(self.spec.get("cache")), prefix=prefix)
        for value, sha256 in self._inputs.values():
            keeper.remember(value, sha256)
        return keeper

    def load_inputs(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with each ``{artifact: <uri>}`` replaced by the checked object."""
        loaded = dict(values)
        for name, value in values.items():
            if is_artifact_input(value):
                loaded[name] = self._load(name, value["artifact"])
        return loaded

    def _load(self, parameter: str, uri: str) -> Any:
        if uri in self._inputs:
            return self._inputs[uri][0]
        where = f"parameter {parameter!r}: artifact {uri}"
        try:
            ref = parse_artifact_uri(uri)
        except ValueError as error:
            raise ArtifactInputError(f"{where}: {error}") from None
        try:
            data = self._open(ref.location).read(ref.name)
        except StoreError as error:
            raise StoreError(f"{where}: {error}") from None
        if data is None:
            raise ArtifactInputError(f"{where} does not exist")
        try:
            value = decode(data, ref.format, ref.sha256)
        except Exception as error:
            raise ArtifactInputError(f"{where} is corrupt ({_first_line(error)})") from None
        self._inputs[uri] = (value, ref.sha256)
        return value

    def _open(self, location: str) -> Store:
        key = location.rstrip("/")
        if key not in self._stores:
            self._stores[key] = open_store(
                location, endpoint_url=self._endpoint(), environ=self._store_environ()
            )
        return self._stores[key]

    def _endpoint(self) -> str | None:
        artifacts = self.spec.get("artifacts") or {}
        plugins = self.spec.get("plugins") or {}
        return (
            self.environ.get(f"{ARTIFACTS_ENV_PREFIX}ENDPOINT_URL")
            or artifacts.get("endpointURL")
            or plugins.get("endpointURL")
            or None
        )

    def _store_environ(self) -> dict[str, str]:
        environ = dict(self.environ)
        for suffix in _AWS_SUFFIXES:
            value = self.environ.get(f"{ARTIFACTS_ENV_PREFIX}{suffix}")
            if value:
                environ[f"AWS_{suffix}"] = value
        if self.environ.get(f"{ARTIFACTS_ENV_PREFIX}DEFAULT_REGION"):
            environ.pop("AWS_REGION", None)  # the operator's word for the store's region
            return environ
        own = (self.spec.get("artifacts") or {}).get("region")
        if own:
            environ["AWS_REGION"] = environ["AWS_DEFAULT_REGION"] = own
        elif (self.spec.get("plugins") or {}).get("region"):
            environ.setdefault("AWS_DEFAULT_REGION", self.spec["plugins"]["region"])
        return environ


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
