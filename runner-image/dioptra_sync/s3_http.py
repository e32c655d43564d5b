"""The fast S3 client: ListObjectsV2 and GetObject over `http.client`, standard library only.

Why it exists: the init container syncs into an empty folder on every Job, and on a small
node botocore's per-request CPU cost (~2 ms: event hooks, model-driven parsing, dateutil on
every listed date) and its ~200 ms start-up are most of a plugin sync. This client does only
what a sync needs, signs with SigV4 (`sigv4.py`) and keeps one keep-alive connection per
worker thread. It is used only where it is exactly equivalent to botocore: an explicit
endpoint (MinIO, Ceph, a test server; path-style requests) and static credentials from
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`). Anything else (AWS
itself, profiles, web identity) goes through botocore (`s3.py`). See `backend.py`.

Errors: HTTP errors raise `S3HttpError(code, status)`; an endpoint that cannot be reached
after retries raises `EndpointUnreachable`. Transient failures (5xx, throttling, connection
resets, bodies cut short) are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from dioptra_sync import uri
from dioptra_sync.atomic import write_atomically
from dioptra_sync.plan import SourceFile, remote_files_from_listing
from dioptra_sync.sigv4 import Credentials, sign, uri_encode
from dioptra_sync.uri import S3Source

CHUNK = 1024 * 1024
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
RETRYABLE_STATUS = {500, 502, 503, 504}
RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_NETWORK_ERRORS = (
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    ssl.SSLError,
    socket.gaierror,
)
_T = TypeVar("_T")


class S3HttpError(Exception):
    """The server answered with an error: `code` (e.g. "NoSuchBucket") and HTTP `status`."""

    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(f"{code} (HTTP {status})")
        self.code = code
        self.status = status
        self.message = message


class EndpointUnreachable(Exception):
    """No answer from the endpoint after all attempts: `reason` says what the last one saw."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot reach {endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


class HttpBackend:
    """List and download with one keep-alive connection per thread."""

    def __init__(
        self,
        endpoint_url: str,
        credentials: Credentials,
        region: str,
        max_attempts: int = 5,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url}")
        self.endpoint = endpoint_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        default_port = (self._https and self._port == 443) or (not self._https and self._port == 80)
        self._host_header = parts.netloc if not default_port else parts.hostname
        self._base_path = parts.path.rstrip("/")
        self._credentials = credentials
        self._region = region
        self._max_attempts = max(1, max_attempts)
        self._timeout = timeout
        self._local = threading.local()
        self._keys: dict[tuple[str, str], bytes] = {}
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)

    # -- the two operations a sync needs ---------------------------------------------------

    def list_files(self, source: S3Source) -> tuple[list[SourceFile], int]:
        return remote_files_from_listing(str(source), source.prefix, self._list(source))

    def download(
        self, remote: SourceFile, target: Path, on_bytes: Callable[[int], None]
    ) -> tuple[str, str | None, str | None]:
        """GET into `target` atomically, pinned to the listed ETag (unpinned when `remote.token`
        is empty, e.g. a bundle named by its digest); (sha256, ETag, VersionId)."""
        bucket = remote.source[len("s3://") :].split("/", 1)[0]
        path = f"/{uri_encode(bucket, keep_slash=False)}/{uri_encode(remote.key, keep_slash=True)}"

        def attempt() -> tuple[str, str | None, str | None]:
            pin = {"If-Match": f'"{remote.token}"'} if remote.token else {}
            response = self._request("GET", path, {}, pin)
            length = response.getheader("Content-Length")
            chunks = iter(lambda: response.read(CHUNK), b"")
            sha256 = write_atomically(
                target, chunks, on_bytes, int(length) if length is not None else None
            )
            etag = (response.getheader("ETag") or remote.token).strip('"')
            return sha256, etag, response.getheader("x-amz-version-id")

        return self._retry(attempt)

    # -- plumbing ----------------------------------------------------------------------------

    def _list(self, source: S3Source) -> Iterator[tuple[str, int, str]]:
        path = f"/{uri_encode(source.bucket, keep_slash=False)}"
        params = {
            "list-type": "2",
            "prefix": source.prefix,
            "encoding-type": "url",
            "max-keys": str(uri.LIST_PAGE_SIZE),
        }
        while True:
            page = dict(params)

            def fetch(page: dict[str, str] = page) -> bytes:
                return self._request("GET", path, page, {}).read()

            body = self._retry(fetch)
            root = ElementTree.fromstring(body)
            for item in root.iter(f"{NS}Contents"):
                yield (
                    unquote(item.findtext(f"{NS}Key", "")),
                    int(item.findtext(f"{NS}Size", "0")),
                    item.findtext(f"{NS}ETag", ""),
                )
            token = root.findtext(f"{NS}NextContinuationToken")
            if root.findtext(f"{NS}IsTruncated") != "true" or not token:
                return
            params["continuation-token"] = token

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and fresh:
            connection.close()
            connection = None
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            self._local.connection = connection
        return connection

    def _request(
        self, method: str, path: str, params: dict[str, str], extra: dict[str, str]
    ) -> http.client.HTTPResponse:
        """Send one signed request; return the response (status 2xx) or raise `S3HttpError`."""
        full_path = self._base_path + path
        headers = sign(
            method,
            self._host_header,
            full_path,
            params,
            self._credentials,
            self._region,
            datetime.now(UTC),
            self._keys,
        )
        headers.update(extra)
        query = "&".join(
            f"{uri_encode(k, keep_slash=False)}={uri_encode(v, keep_slash=False)}"
            for k, v in params.items()
        )
        connection = self._connection()
        try:
            connection.request(
                method, f"{full_path}?{query}" if query else full_path, None, headers
            )
            response = connection.getresponse()
        except _NETWORK_ERRORS:
            self._connection(fresh=True)
            raise
        if response.status >= 300:
            body = response.read()
            code, message = _error_code(body, response.status)
            raise S3HttpError(code, response.status, message)
        return response

    def _retry(self, work: Callable[[], _T]) -> _T:
        last: Exception | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                time.sleep(min(0.05 * 2**attempt * (0.5 + random.random()), 5.0))
            try:
                return work()
            except S3HttpError as error:
                if error.status not in RETRYABLE_STATUS and error.code not in RETRYABLE_CODES:
                    raise
                last = error
            except _NETWORK_ERRORS as error:
                self._connection(fresh=True)
                last = error
        if isinstance(last, S3HttpError):
            raise last
        reason = type(last).__name__ if last is not None else "no attempt"
        raise EndpointUnreachable(self.endpoint, reason)


def _error_code(body: bytes, status: int) -> tuple[str, str]:
    try:
        root = ElementTree.fromstring(body)
        return root.findtext("Code") or str(status), root.findtext("Message") or ""
    except ElementTree.ParseError:
        return str(status), ""  # HEAD-like answers and proxies may send no XML
