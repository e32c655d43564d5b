"""The botocore client: used when the fast client cannot be (see `backend.py`), and for push.

One client is shared by all worker threads (botocore clients are thread-safe) with a
connection pool as large as the worker count. Endpoint, region and credentials come from the
standard chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, IRSA web identity);
`endpoint_url` overrides. Transient errors (throttling, 5xx, connection resets) are retried by
botocore's "standard" retry mode on every call, and here again around reading a response body,
which botocore does not retry. boto3 itself is not imported: its session adds ~70 ms of
imports and nothing this package uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ConnectionClosedError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ReadTimeoutError as BotoReadTimeoutError,
)

from dioptra_sync import uri
from dioptra_sync.atomic import write_atomically
from dioptra_sync.errors import SyncError
from dioptra_sync.plan import SourceFile, remote_files_from_listing
from dioptra_sync.uri import S3Source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

CHUNK = 1024 * 1024
BODY_ATTEMPTS = 4
"""How often a GET is retried when its body breaks off mid-way."""

_BODY_ERRORS = (
    ResponseStreamingError,
    IncompleteReadError,
    ConnectionClosedError,
    BotoReadTimeoutError,
    ConnectionError,
)


def configured_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint the user chose: the argument, else boto3's environment variables."""
    return (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def make_client(endpoint_url: str | None, max_connections: int) -> S3Client:
    """One client for all threads.

    Retries: botocore "standard" mode, 5 attempts, unless the user chose otherwise through
    `AWS_RETRY_MODE` / `AWS_MAX_ATTEMPTS`. With an explicit endpoint (MinIO, Ceph, a test
    server) path-style addressing is used: those servers rarely have wildcard DNS for
    virtual-hosted buckets.
    """
    retries: dict[str, Any] | None = None
    if "AWS_RETRY_MODE" not in os.environ and "AWS_MAX_ATTEMPTS" not in os.environ:
        retries = {"mode": "standard", "max_attempts": 5}
    config = Config(
        max_pool_connections=max_connections,
        connect_timeout=10,
        read_timeout=60,
        retries=retries,  # type: ignore[arg-type]
        s3={"addressing_style": "path"} if configured_endpoint(endpoint_url) else None,
        user_agent_extra="dioptra-plugins-sync",
    )
    try:
        session = botocore.session.get_session()
        client = session.create_client("s3", endpoint_url=endpoint_url, config=config)
    except (BotoCoreError, ValueError) as error:
        raise SyncError(f"cannot set up the S3 client: {error}") from None
    return cast(S3Client, client)


class BotoBackend:
    """List and download through botocore."""

    def __init__(self, endpoint_url: str | None, workers: int) -> None:
        self.client = make_client(endpoint_url, workers)
        self.endpoint = str(self.client.meta.endpoint_url)

    def list_files(self, source: S3Source) -> tuple[list[SourceFile], int]:
        entries = (
            (str(item["Key"]), int(item["Size"]), str(item.get("ETag", "")))
            for item in list_objects(self.client, source)
        )
        return remote_files_from_listing(str(source), source.prefix, entries)

    def download(
        self, remote: SourceFile, target: Path, on_bytes: Callable[[int], None]
    ) -> tuple[str, str | None, str | None]:
        """GET one object into `target` atomically; return (sha256, ETag, VersionId).

        `IfMatch` pins the listed version: if the object changes between listing and GET,
        the sync fails instead of recording an ETag that does not describe the bytes. An
        empty `remote.token` means an unpinned GET (an object named by its own digest).
        """
        bucket = remote.source[len("s3://") :].split("/", 1)[0]
        last_error: Exception | None = None
        for attempt in range(BODY_ATTEMPTS):
            try:
                if remote.token:
                    response = self.client.get_object(
                        Bucket=bucket, Key=remote.key, IfMatch=f'"{remote.token}"'
                    )
                else:
                    response = self.client.get_object(Bucket=bucket, Key=remote.key)
                chunks = response["Body"].iter_chunks(CHUNK)
                sha256 = write_atomically(target, chunks, on_bytes, remote.size)
                etag = str(response.get("ETag", remote.token)).strip('"')
                return sha256, etag, response.get("VersionId")
            except _BODY_ERRORS as error:
                last_error = error
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise SyncError(
            f"{remote.source}: {remote.key!r}: reading the object kept failing "
            f"({type(last_error).__name__}) after {BODY_ATTEMPTS} attempts"
        )


def list_objects(client: S3Client, source: S3Source) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=source.bucket,
        Prefix=source.prefix,
        PaginationConfig={"PageSize": uri.LIST_PAGE_SIZE},
    )
    for page in pages:
        yield from page.get("Contents", [])  # type: ignore[misc]


def list_for_push(client: S3Client, source: S3Source) -> dict[str, tuple[int, str]]:
    """Existing objects under the prefix: relative path -> (size, ETag)."""
    found: dict[str, tuple[int, str]] = {}
    for item in list_objects(client, source):
        relative = str(item["Key"])[len(source.prefix) :]
        found[relative] = (int(item["Size"]), str(item.get("ETag", "")).strip('"'))
    return found


def upload(client: S3Client, source: S3Source, relative: str, path: Path) -> None:
    """PUT one file as a single-part object, so its ETag is its MD5 and the next push can
    tell it is unchanged without a HEAD per object."""
    with open(path, "rb") as body:
        client.put_object(Bucket=source.bucket, Key=source.prefix + relative, Body=body)


def delete_keys(client: S3Client, source: S3Source, relatives: list[str]) -> None:
    for start in range(0, len(relatives), 1000):
        batch = relatives[start : start + 1000]
        client.delete_objects(
            Bucket=source.bucket,
            Delete={"Objects": [{"Key": source.prefix + r} for r in batch], "Quiet": True},
        )
