"""A real S3 server for tests: `moto_server` on 127.0.0.1, one per pytest session.

Fixtures (all importable through `tests/conftest.py`):

- `s3_server` (session): a running `S3Server`. Use `s3_server.endpoint_url`,
  `s3_server.client()` (a boto3 S3 client), `s3_server.env()` (the `AWS_*` variables a
  subprocess needs), `s3_server.new_bucket(versioned=False)` (a fresh, unique bucket name),
  `s3_server.put_files(bucket, prefix, {"pkg/mod.py": b"..."})` and
  `with s3_server.recording() as requests: ...` (the HTTP requests the server saw inside the
  block, as `RecordedRequest(method, path, query)`; filled when the block ends).
- `s3_env` (function): sets those `AWS_*` variables in `os.environ` for the test (restored
  after), so code that relies on boto3's default chain finds the server.
- `s3_bucket` (function): a fresh empty bucket on `s3_server`, by name.

`start_moto_server(extra_env=...)` starts another server, e.g. one that enforces
authentication (`{"INITIAL_NO_AUTH_ACTION_COUNT": "0"}`); call `.stop()` when done.

`FlakyProxy(upstream_url, fault, times)` is a small HTTP proxy in front of a server that
injects `times` faults into object GETs (not listings): "503" (an S3 SlowDown answer), "reset"
(the connection closes before any answer) or "truncate" (half the body, then close). Use it
as a context manager; `.url` is its endpoint and `.faults` counts the faults it injected.

Credentials are fake ("testing"): moto accepts any unless told to enforce IAM.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

__all__ = [
    "FlakyProxy",
    "RecordedRequest",
    "S3Server",
    "s3_bucket",
    "s3_env",
    "s3_server",
    "start_moto_server",
]

FAKE_KEY = "testing"
REGION = "us-east-1"
_bucket_numbers = itertools.count(1)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server saw: `method`, URL `path` (e.g. "/bucket/key") and `query`."""

    method: str
    path: str
    query: str


class S3Server:
    """A `moto_server` subprocess on 127.0.0.1 and helpers to use it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self._workdir = workdir

    def env(self, access_key: str = FAKE_KEY, secret_key: str = FAKE_KEY) -> dict[str, str]:
        """The variables boto3's default chain needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, access_key: str = FAKE_KEY, secret_key: str = FAKE_KEY) -> Any:
        """A boto3 S3 client for this server (no retries, so test setup fails fast)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def new_bucket(self, *, versioned: bool = False) -> str:
        """Create a bucket with a name unique in this session and return the name."""
        name = f"bucket-{os.getpid()}-{next(_bucket_numbers)}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def put_files(self, bucket: str, prefix: str, files: Mapping[str, bytes | str]) -> None:
        """Upload `files` (relative key -> content) under `prefix` ("" or "a/b")."""
        client = self.client()
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        for relative, content in files.items():
            body = content.encode() if isinstance(content, str) else content
            client.put_object(Bucket=bucket, Key=base + relative, Body=body)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[RecordedRequest]]:
        """Record the requests made inside the block (moto's recorder); the list fills at exit."""
        self._moto_api("POST", "recorder/reset-recording")
        self._moto_api("POST", "recorder/start-recording")
        requests: list[RecordedRequest] = []
        try:
            yield requests
        finally:
            self._moto_api("POST", "recorder/stop-recording")
            text = self._moto_api("GET", "recorder/download-recording")
            for line in text.splitlines():
                if line.strip():
                    url = urlsplit(json.loads(line)["url"])
                    method = json.loads(line)["method"]
                    requests.append(RecordedRequest(method, url.path, url.query))

    def _moto_api(self, method: str, path: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto_server(extra_env: Mapping[str, str] | None = None) -> S3Server:
    """Start `moto_server` on a free port and wait until it answers (about 0.5 s)."""
    workdir = Path(tempfile.mkdtemp(prefix="moto-"))
    moto = Path(sys.executable).with_name("moto_server")
    command = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    env = {
        **os.environ,
        "MOTO_RECORDER_FILEPATH": str(workdir / "recording.jsonl"),
        **(extra_env or {}),
    }
    for attempt in range(3):  # the free port can be taken between choosing and binding it
        port = _free_port()
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = S3Server(process, port, workdir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                server._moto_api("GET", "data.json")
                return server
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        process.kill()
        process.wait()
        if attempt == 2:
            break
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3's default chain at `s3_server` for this test; returns the variables set."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    variables = s3_server.env()
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


class FlakyProxy:
    """An HTTP proxy that breaks the first `times` object GETs in the way `fault` says."""

    FAULTS = ("503", "reset", "truncate")

    def __init__(self, upstream_url: str, fault: str, times: int) -> None:
        assert fault in self.FAULTS, fault
        self.fault = fault
        self.remaining = times
        self.faults = 0
        self._lock = threading.Lock()
        upstream = urlsplit(upstream_url)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                is_object_get = self.command == "GET" and self.path.split("?")[0].count("/") >= 2
                fault = proxy._take_fault() if is_object_get else None
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "503":
                    payload = (
                        b'<?xml version="1.0"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(
                    upstream.hostname, upstream.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = upstream.netloc
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take_fault(self) -> str | None:
        with self._lock:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
            self.faults += 1
            return self.fault

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
