"""The artifact store: task outputs kept content-addressed, in S3 or in a local folder.

A store is a root (``s3://bucket/prefix``, or a local folder, written ``file:///abs/path``)
holding two kinds of objects:

- ``objects/sha256/<hex>.<ext>``: one task output, named by the sha256 of its bytes, so an
  artifact's URI says what its content must hash to. ``.json`` for plain data (dicts with
  string keys, lists, strings, finite numbers, booleans, null), ``.npy`` for a numpy array
  (written and read with ``allow_pickle=False``), ``.pkl`` (pickle) for anything else. A pickle
  is only ever unpickled after its bytes hashed to the digest in its name.
- ``cache/<key>.json``: a cached task's key and the output it produced (see task_cache).

An object is written at most once (a name that exists already is not written again) and never
appears half-written under its final name: S3 takes an object in one PUT (a PUT that fails
stores nothing), and a local file is written under a temporary dotfile name then renamed.
Errors name the store and the cause in one line, never a credential.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "ArtifactError",
    "ArtifactInputError",
    "Encoded",
    "LocalStore",
    "S3ArtifactStore",
    "Store",
    "StoreError",
    "artifact_name",
    "decode",
    "encode",
    "open_store",
    "parse_artifact_uri",
]

EXTENSIONS = {"json": "json", "npy": "npy", "pickle": "pkl"}
_FORMATS = {ext: name for name, ext in EXTENSIONS.items()}
OBJECTS = "objects/sha256"
_NAME = re.compile(r"([0-9a-f]{64})\.(json|npy|pkl)")
_PICKLE_PROTOCOL = 5  # fixed, so the same object gives the same bytes on every Python >= 3.8
_TEMP_SUFFIX = ".dioptra-tmp"


class ArtifactError(Exception):
    """Base of the artifact store's errors; the message is one line for the user."""


class StoreError(ArtifactError):
    """The store cannot be read or written (unreachable, access denied, a bad location)."""


class ArtifactInputError(ArtifactError):
    """An artifact named as an input is missing, corrupt or not an artifact URI."""


@dataclass(frozen=True)
class Encoded:
    """A value's stored form: its bytes, their format and their sha256."""

    data: bytes
    format: str  # json, npy or pickle

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def name(self) -> str:
        return artifact_name(self.sha256, self.format)


def artifact_name(sha256: str, format: str) -> str:
    return f"{OBJECTS}/{sha256}.{EXTENSIONS[format]}"


def encode(value: Any) -> Encoded:
    """The stored form of ``value``: JSON, .npy or pickle (raises when it cannot be pickled)."""
    if _is_plain(value):
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return Encoded(text.encode(), "json")
    if _is_plain_array(value):
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return Encoded(buffer.getvalue(), "npy")
    return Encoded(pickle.dumps(value, protocol=_PICKLE_PROTOCOL), "pickle")


def decode(data: bytes, format: str, sha256: str) -> Any:
    """The value stored as ``data``, after checking that ``data`` hashes to ``sha256``."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("its content does not match the digest in its name")
    if format == "json":
        return json.loads(data)
    if format == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    return pickle.loads(data)  # only bytes whose digest was just checked


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if type(value) is list:
        return all(_is_plain(item) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _is_plain_array(value: Any) -> bool:
    if type(value).__module__ != "numpy" or type(value).__name__ != "ndarray":
        return False
    return not value.dtype.hasobject


# -- stores -------------------------------------------------------------------------------------


class Store:
    """Where artifacts live; ``location`` is the root as users write it (never credentials)."""

    location: str

    def uri(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}"

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        """Write the whole object under ``name`` (replacing one there), or nothing at all."""
        raise NotImplementedError


class LocalStore(Store):
    """A folder: ``file:///abs/path`` URIs; files written to a temporary name, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.location = self.root.as_uri()

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._error("cannot read", error) from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def write(self, name: str, data: bytes) -> None:
        target = self._path(name)
        temp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A unique temporary name: two runs (or two sweep points) may write the same digest.
            handle, temp = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX
            )
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, target)
            temp = None
        except OSError as error:
            raise self._error("cannot write to", error) from None
        finally:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)

    def _error(self, what: str, error: OSError) -> StoreError:
        return StoreError(
            f"artifact store {self.location}: {what} it: {error.strerror or type(error).__name__}"
        )


class S3ArtifactStore(Store):
    """``s3://bucket/prefix`` through the project's one S3 client (dioptra_sync's obstore)."""

    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, environ: Mapping[str, str]
    ):
        from dioptra_sync.errors import SyncError
        from dioptra_sync.s3_obstore import ObstoreClient

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        try:
            self._client = ObstoreClient(endpoint_url, environ)
        except SyncError as error:
            raise StoreError(f"artifact store {self.location}: {error}") from None
        self._store: Any = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _object_store(self) -> Any:
        if self._store is None:
            self._store = self._client._store(self.bucket)  # one obstore S3Store per bucket
        return self._store

    def read(self, name: str) -> bytes | None:
        import obstore

        try:
            return bytes(obstore.get(self._object_store(), self._key(name)).bytes())
        except FileNotFoundError:  # obstore's NotFoundError
            return None
        except Exception as error:
            raise self._error(error, name) from None

    def exists(self, name: str) -> bool:
        import obstore

        try:
            obstore.head(self._object_store(), self._key(name))
        except FileNotFoundError:
            return False
        except Exception as error:
            raise self._error(error, name) from None
        return True

    def write(self, name: str, data: bytes) -> None:
        import obstore

        try:
            # One PUT: S3 stores the whole object or, if the request fails, nothing.
            obstore.put(self._object_store(), self._key(name), data, use_multipart=False)
        except Exception as error:
            raise self._error(error, name) from None

    def _error(self, error: BaseException, name: str) -> StoreError:
        from dioptra_sync.messages import explain

        explained = str(explain(error, source=self.location, endpoint=self._client.endpoint))
        cause = explained.removeprefix(f"{self.location}: ")
        return StoreError(f"artifact store {self.location}: {cause}")


def open_store(
    location: str, *, endpoint_url: str | None = None, environ: Mapping[str, str] | None = None
) -> Store:
    """The store at ``location``: ``s3://bucket/prefix``, ``file:///abs/path`` or a path."""
    environ = os.environ if environ is None else environ
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"artifact store {location}: no bucket named")
        return S3ArtifactStore(bucket, prefix, endpoint_url, environ)
    if location.startswith("file://"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"artifact store {location}: write file:///absolute/path")
        return LocalStore(Path(unquote(parsed.path)))
    if "://" in location:
        raise StoreError(f"artifact store {location}: use s3://bucket/prefix or a local folder")
    return LocalStore(Path(location))


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact URI taken apart: its store's location, its object name, digest and format."""

    uri: str
    location: str
    name: str
    sha256: str
    format: str


def parse_artifact_uri(uri: str) -> ArtifactRef:
    """Split an artifact URI (``<store>/objects/sha256/<hex>.<json|npy|pkl>``) or raise
    ValueError."""
    location, _, name = uri.strip().rpartition(f"/{OBJECTS}/")
    found = _NAME.fullmatch(name)
    if not location or found is None:
        raise ValueError(
            f"not an artifact URI (expected <store>/{OBJECTS}/<64 hex>.json|npy|pkl, as "
            "listed in an Experiment's status.artifacts)"
        )
    return ArtifactRef(uri, location, f"{OBJECTS}/{name}", found.group(1), _FORMATS[found.group(2)])
