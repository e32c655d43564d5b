"""Everything that talks to S3: the shared client, listing, GET to a file, PUT from a file.

One client is shared by all worker threads (boto3 clients are thread-safe) with a connection
pool as large as the worker count. Endpoint, region and credentials come from boto3's standard
chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, web identity), so AWS, MinIO and Ceph
all work; `endpoint_url` overrides. Transient errors (throttling, 5xx, connection resets) are
retried by botocore's "standard" retry mode on every call, and here again around reading a
response body, which botocore does not retry.
"""

from __future__ import annotations

import hashlib
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

from dioptra_runner.sync.errors import SyncError
from dioptra_runner.sync.plan import RemoteFile
from dioptra_runner.sync.uri import S3Source, check_relative_key, is_skipped_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

CHUNK = 1024 * 1024
BODY_ATTEMPTS = 4
"""How often a GET is retried when its body breaks off mid-way (botocore retries the request,
not the body read)."""

_BODY_ERRORS = (
    ResponseStreamingError,
    IncompleteReadError,
    ConnectionClosedError,
    BotoReadTimeoutError,
    ConnectionError,
)


def make_client(endpoint_url: str | None, max_connections: int) -> S3Client:
    """One client for all threads. Retries: botocore "standard" mode, 5 attempts, unless the
    user chose otherwise through `AWS_RETRY_MODE` / `AWS_MAX_ATTEMPTS` (boto3's own settings)."""
    retries: dict[str, Any] | None = None
    if "AWS_RETRY_MODE" not in os.environ and "AWS_MAX_ATTEMPTS" not in os.environ:
        retries = {"mode": "standard", "max_attempts": 5}
    config = Config(
        max_pool_connections=max_connections,
        connect_timeout=10,
        read_timeout=60,
        retries=retries,  # type: ignore[arg-type]
        user_agent_extra="dioptra-plugins-sync",
    )
    try:
        session = botocore.session.get_session()  # boto3's chain; boto3 itself costs ~70 ms
        return cast(S3Client, session.create_client("s3", endpoint_url=endpoint_url, config=config))
    except (BotoCoreError, ValueError) as error:
        raise SyncError(f"cannot set up the S3 client: {error}") from None


def endpoint_of(client: S3Client) -> str:
    return str(client.meta.endpoint_url)


def list_source(client: S3Client, source: S3Source) -> tuple[list[RemoteFile], int]:
    """All objects under the source's prefix, as `RemoteFile`s, plus how many were skipped.

    Folder markers (keys ending in "/") and names that are never plugins (dotfiles,
    `__pycache__`, `.pyc`) are skipped; any other key that would land outside the destination
    raises `SyncError` before anything is downloaded.
    """
    name = str(source)
    files: list[RemoteFile] = []
    skipped = 0
    for item in _list_objects(client, source):
        key = str(item["Key"])
        relative = key[len(source.prefix) :]
        if relative.endswith("/") and int(item.get("Size", 0)) == 0:
            continue  # a "folder" placeholder created by consoles and some tools
        check_relative_key(relative, source=name)
        if any(is_skipped_name(part) for part in relative.split("/")):
            skipped += 1
            continue
        files.append(
            RemoteFile(
                source=name,
                key=key,
                path=relative,
                size=int(item["Size"]),
                token=str(item.get("ETag", "")).strip('"'),
            )
        )
    return files, skipped


def _list_objects(client: S3Client, source: S3Source) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=source.bucket, Prefix=source.prefix)
    for page in pages:
        yield from page.get("Contents", [])  # type: ignore[misc]


def download(
    client: S3Client, remote: RemoteFile, target: Path, on_bytes: Callable[[int], None]
) -> tuple[str, str | None, str | None]:
    """GET one object into `target` atomically; return (sha256, ETag, VersionId).

    The body goes to a temp file in the same folder (a dotfile, so it is never imported) and
    is renamed over `target` only when complete. `IfMatch` pins the version that was listed:
    if the object changes between listing and GET, the sync fails instead of recording an
    ETag that does not describe the bytes on disk.
    """
    bucket = remote.source[len("s3://") :].split("/", 1)[0]
    last_error: Exception | None = None
    for attempt in range(BODY_ATTEMPTS):
        temp = target.parent / f".{target.name}.dioptra-tmp-{os.getpid()}-{attempt}"
        written = 0
        try:
            response = client.get_object(Bucket=bucket, Key=remote.key, IfMatch=f'"{remote.token}"')
            digest = hashlib.sha256()
            with open(temp, "wb") as out:
                for chunk in response["Body"].iter_chunks(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    on_bytes(len(chunk))
            os.replace(temp, target)
            etag = str(response.get("ETag", remote.token)).strip('"')
            return digest.hexdigest(), etag, response.get("VersionId")
        except _BODY_ERRORS as error:
            last_error = error
            on_bytes(-written)
            time.sleep(min(0.2 * 2**attempt, 2.0))
        finally:
            temp.unlink(missing_ok=True)
    raise SyncError(
        f"{remote.source}: reading {remote.key!r} kept failing "
        f"({type(last_error).__name__}) after {BODY_ATTEMPTS} attempts"
    )


def list_for_push(client: S3Client, source: S3Source) -> dict[str, tuple[int, str]]:
    """Existing objects under the prefix: relative path -> (size, ETag)."""
    found: dict[str, tuple[int, str]] = {}
    for item in _list_objects(client, source):
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


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
