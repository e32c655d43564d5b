"""The S3 client of sync and push: obstore (Rust's `object_store` under a small Python layer).

Why this one: its import costs ~15 ms, listing and GETs run on a native HTTP client with
little per-request CPU (a cold init container is mostly GETs, a no-op sync one LIST), it
retries throttling, 5xx and dropped connections itself, and it honours `HTTP(S)_PROXY` /
`NO_PROXY`. `store_settings` fills in what it does not read the way botocore would: the
endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`; plain http allowed when the URL says
so), `AWS_CA_BUNDLE`, `AWS_MAX_ATTEMPTS`, and the region. Keys in the environment are used
directly (the init container's case); anything else (a named profile, `~/.aws` files, web
identity/IRSA, SSO, ECS or instance metadata) goes through boto3's own credential resolver
(`obstore.auth.boto3`), so credentials mean exactly what they mean to the AWS CLI.

One store per bucket, shared by all worker threads (its calls release the GIL). Errors are
obstore's exceptions; `messages.py` turns them into one line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import GenericError
from obstore.store import S3Store

from dioptra_sync import uri
from dioptra_sync.atomic import write_atomically
from dioptra_sync.errors import ClientSetupError, SyncError
from dioptra_sync.plan import SourceFile, remote_files_from_listing
from dioptra_sync.uri import S3Source

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

CHUNK = 1024 * 1024
BODY_ATTEMPTS = 4
"""How often a GET is retried when its body breaks off mid-way (obstore retries requests,
not a body that stops half-way)."""
DEFAULT_REGION = "us-east-1"
DEFAULT_ATTEMPTS = 5

_STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class StoreSettings:
    """Everything a store needs besides the bucket, read once from the environment."""

    endpoint: str  # what messages name: the URL, or "AWS S3 (<region>)"
    config: dict[str, Any] = field(default_factory=dict)
    client_options: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)
    boto3_chain: bool = False  # credentials (and a profile's region) from boto3's resolver
    region_from_environment: bool = False


def store_settings(endpoint_url: str | None, environ: Mapping[str, str]) -> StoreSettings:
    """The store's settings for this environment (pure: no file, network or import).

    Precedence is botocore's: an explicit `endpoint_url`, then `AWS_ENDPOINT_URL_S3`, then
    `AWS_ENDPOINT_URL`; region from `AWS_REGION`, then `AWS_DEFAULT_REGION`. With `AWS_PROFILE`
    set, boto3's resolver is asked even when keys are in the environment: it still prefers
    those keys (as the AWS CLI does) but takes the profile's region.
    """
    endpoint = endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or ""
    config: dict[str, Any] = {"region": region or DEFAULT_REGION}
    options: dict[str, Any] = {
        "connect_timeout": timedelta(seconds=10),
        "timeout": timedelta(seconds=300),
        "user_agent": "dioptra-plugins-sync",
    }
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise SyncError(f"{endpoint}: the S3 endpoint must be an http:// or https:// URL")
        config["endpoint"] = endpoint.rstrip("/")
        options["allow_http"] = endpoint.startswith("http://")
    attempts = environ.get("AWS_MAX_ATTEMPTS", "")
    retries = int(attempts) if attempts.isdigit() and int(attempts) > 0 else DEFAULT_ATTEMPTS
    retry = {
        "max_retries": retries - 1,
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=120),
    }
    static = not environ.get("AWS_PROFILE") and all(environ.get(k) for k in _STATIC_KEYS)
    if static:
        config["access_key_id"] = environ["AWS_ACCESS_KEY_ID"]
        config["secret_access_key"] = environ["AWS_SECRET_ACCESS_KEY"]
        if environ.get("AWS_SESSION_TOKEN"):
            config["session_token"] = environ["AWS_SESSION_TOKEN"]
    return StoreSettings(
        endpoint=config.get("endpoint") or f"AWS S3 ({config['region']})",
        config=config,
        client_options=options,
        retry=retry,
        boto3_chain=not static,
        region_from_environment=bool(region),
    )


class ObstoreClient:
    """List, download, upload and delete under one set of settings."""

    def __init__(self, endpoint_url: str | None, environ: Mapping[str, str] = os.environ) -> None:
        self.settings = store_settings(endpoint_url, environ)
        self.endpoint = self.settings.endpoint
        self._root_certificate = _read_ca_bundle(environ.get("AWS_CA_BUNDLE"))
        self._provider: Any = None
        self._extra_config: dict[str, Any] = {}
        self._stores: dict[str, S3Store] = {}

    # -- sync -----------------------------------------------------------------------------

    def list_files(self, source: S3Source) -> tuple[list[SourceFile], int]:
        entries = ((key, size, etag.strip('"')) for key, size, etag in self._list(source))
        return remote_files_from_listing(str(source), source.prefix, entries)

    def download(
        self, remote: SourceFile, target: Path, on_bytes: Callable[[int], None]
    ) -> tuple[str, str | None, str | None]:
        """GET `remote.key` into `target` atomically, pinned with If-Match to the listed ETag
        (unpinned when `remote.token` is empty: an object named by its own digest);
        (sha256, ETag, VersionId)."""
        store = self._store(remote.source[len("s3://") :].split("/", 1)[0])
        options: dict[str, Any] = {"if_match": f'"{remote.token}"'} if remote.token else {}
        last_error: Exception | None = None
        for attempt in range(BODY_ATTEMPTS):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 2.0))
            result = obstore.get(store, remote.key, options=options)  # type: ignore[arg-type]
            meta = result.meta
            try:
                sha256 = write_atomically(
                    target, result.stream(min_chunk_size=CHUNK), on_bytes, int(meta["size"])
                )
            except (ConnectionError, GenericError) as error:  # the body broke off
                last_error = error
                continue
            etag = str(meta.get("e_tag") or remote.token).strip('"')
            return sha256, etag, meta.get("version")
        raise SyncError(
            f"{remote.source}: {remote.key!r}: reading the object kept failing "
            f"({type(last_error).__name__}) after {BODY_ATTEMPTS} attempts"
        )

    # -- push -----------------------------------------------------------------------------

    def list_for_push(self, source: S3Source) -> dict[str, tuple[int, str]]:
        """Existing objects under the prefix: relative path -> (size, ETag)."""
        return {
            key[len(source.prefix) :]: (size, etag.strip('"'))
            for key, size, etag in self._list(source)
        }

    def upload(self, source: S3Source, relative: str, path: Path) -> None:
        """PUT one file as a single-part object, so its ETag is its MD5 and the next push can
        tell it is unchanged without a HEAD per object."""
        obstore.put(self._store(source.bucket), source.prefix + relative, path, use_multipart=False)

    def delete_keys(self, source: S3Source, relatives: list[str]) -> None:
        store = self._store(source.bucket)
        for start in range(0, len(relatives), 1000):
            obstore.delete(store, [source.prefix + r for r in relatives[start : start + 1000]])

    # -- plumbing ---------------------------------------------------------------------------

    def _list(self, source: S3Source) -> Iterator[tuple[str, int, str]]:
        prefix = source.prefix.rstrip("/") or None  # object_store adds the slash back
        stream = obstore.list(
            self._store(source.bucket), prefix=prefix, chunk_size=uri.LIST_PAGE_SIZE
        )
        for batch in stream:
            for meta in batch:
                yield meta["path"], int(meta["size"]), str(meta.get("e_tag") or "")

    def _store(self, bucket: str) -> S3Store:
        store = self._stores.get(bucket)
        if store is None:  # made on the main thread (listing) before workers download
            settings = self.settings
            options = dict(settings.client_options)
            if self._root_certificate is not None:
                options["root_certificate"] = self._root_certificate
            if self._provider is None:
                self._extra_config = self._credentials()
            store = S3Store(
                bucket,
                config=_s3_config({**settings.config, **self._extra_config}),
                client_options=_client_config(options),
                retry_config=_retry_config(settings.retry),
                credential_provider=self._provider,
            )
            self._stores[bucket] = store
        return store

    def _credentials(self) -> dict[str, Any]:
        """Credentials from boto3's resolver when the environment holds no plain keys (or
        names a profile): profiles and their files, web identity, SSO, ECS and instance
        metadata, in the AWS CLI's order; a profile's region when none is set."""
        if not self.settings.boto3_chain:
            return {}
        import boto3.session
        import botocore.exceptions

        try:
            session = boto3.session.Session()
            credentials = session.get_credentials()
            if credentials is not None:  # web identity, SSO: exchanged now, so errors say why
                credentials.get_frozen_credentials()
        except botocore.exceptions.ProfileNotFound as error:
            raise ClientSetupError(
                f"the AWS profile {error.kwargs.get('profile')!r} (AWS_PROFILE) does not exist"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise ClientSetupError(f"cannot get AWS credentials: {_last_line(error)}") from None
        except OSError as error:  # e.g. AWS_WEB_IDENTITY_TOKEN_FILE names no file
            raise ClientSetupError(
                f"cannot get AWS credentials: {error.strerror} ({error.filename})"
            ) from None
        if credentials is None:
            raise ClientSetupError(
                "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or a web identity token)"
            )
        from obstore.auth.boto3 import Boto3CredentialProvider

        self._provider = Boto3CredentialProvider(session)
        region = session.region_name
        if region and not self.settings.region_from_environment:
            return {"region": region}
        return {}


def _last_line(error: Exception) -> str:
    """botocore puts the cause of a validation error on its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_ca_bundle(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SyncError(f"AWS_CA_BUNDLE={path}: cannot read it ({error})") from None


def _client_config(options: dict[str, Any]) -> ClientConfig:
    return options  # type: ignore[return-value]


def _retry_config(retry: dict[str, Any]) -> RetryConfig:
    return retry  # type: ignore[return-value]


def _s3_config(config: dict[str, Any]) -> S3Config:
    return config  # type: ignore[return-value]
