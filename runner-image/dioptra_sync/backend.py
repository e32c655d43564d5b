"""Choosing the S3 client for a sync: the fast standard-library one, or botocore.

The fast client (`s3_http.py`) is chosen only when it behaves exactly like botocore would:
an explicit endpoint (`--endpoint-url`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`) and
static credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, with no `AWS_PROFILE`
(a named profile takes precedence over those variables in botocore's chain). That is the
init container's case (the operator passes a Secret's keys and the endpoint as env vars).
Everything else (AWS without an endpoint, profiles, IRSA web identity, SSO) uses botocore.
`DIOPTRA_S3_CLIENT=botocore` (or `=http`) forces the choice, e.g. to compare or to test both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dioptra_sync.errors import SyncError
from dioptra_sync.plan import SourceFile
from dioptra_sync.uri import S3Source

CLIENT_ENV = "DIOPTRA_S3_CLIENT"


class Backend(Protocol):
    """What a sync needs from S3."""

    endpoint: str

    def list_files(self, source: S3Source) -> tuple[list[SourceFile], int]: ...

    def download(
        self, remote: SourceFile, target: Path, on_bytes: Callable[[int], None]
    ) -> tuple[str, str | None, str | None]:
        """GET `remote.key` of `remote.source`'s bucket into `target` atomically, pinned to
        the ETag `remote.token` (unpinned when it is empty); return (sha256, ETag, VersionId)."""
        ...


def fast_client_settings(
    endpoint_url: str | None, environ: dict[str, str] | os._Environ[str]
) -> tuple[str, str, str, str | None, str] | None:
    """(endpoint, key id, secret, token, region) when the fast client applies, else None."""
    endpoint = endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    key_id, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not endpoint or not key_id or not secret or environ.get("AWS_PROFILE"):
        return None
    if not endpoint.startswith(("http://", "https://")):
        return None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return endpoint, key_id, secret, environ.get("AWS_SESSION_TOKEN") or None, region


def make_backend(endpoint_url: str | None, workers: int) -> Backend:
    choice = os.environ.get(CLIENT_ENV, "auto")
    if choice not in ("auto", "obstore", "http", "botocore"):
        raise SyncError(f"{CLIENT_ENV}={choice!r}: expected auto, obstore, http or botocore")
    if choice in ("auto", "obstore"):
        from dioptra_sync.s3_obstore import ObstoreClient

        return ObstoreClient(endpoint_url)
    settings = fast_client_settings(endpoint_url, os.environ) if choice != "botocore" else None
    if settings is not None:
        from dioptra_sync.s3_http import HttpBackend
        from dioptra_sync.sigv4 import Credentials

        endpoint, key_id, secret, token, region = settings
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "5")
        return HttpBackend(
            endpoint,
            Credentials(key_id, secret, token),
            region,
            max_attempts=int(attempts) if attempts.isdigit() else 5,
        )
    if choice == "http":
        raise SyncError(
            f"{CLIENT_ENV}=http needs an endpoint URL and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    from dioptra_sync.s3 import BotoBackend

    return BotoBackend(endpoint_url, workers)
