"""A real MLflow tracking server for the tests: SQLite backend, artifacts on the moto S3 server.

``mlflow server`` runs on 127.0.0.1 at a free port with ``--artifacts-destination
s3://<bucket>/mlflow`` (it serves artifacts itself, so clients upload through it and need no
S3 credentials) and ``MLFLOW_S3_ENDPOINT_URL`` pointing at the session's moto server. The
fixture waits on ``/health`` and stops the server at the end of the module that uses it
(starting one costs a few seconds: its database migrations).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.s3 import S3Server

__all__ = ["MlflowServer", "mlflow_server"]


@dataclass
class MlflowServer:
    url: str
    bucket: str
    log: Path
    s3: S3Server

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(s3_server: S3Server) -> Iterator[MlflowServer]:
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    bucket = s3_server.new_bucket()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **s3_server.env(),
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "MLFLOW_TRACKING_URI": "",
    }
    env.pop("AWS_CA_BUNDLE", None)
    mlflow = Path(sys.executable).with_name("mlflow")
    log = workdir / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{workdir / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{bucket}/mlflow",
            ],
            env=env,
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({process.returncode}): {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 90 s: {log}")
            time.sleep(0.1)
        yield MlflowServer(url=url, bucket=bucket, log=log, s3=s3_server)
    finally:
        # Its workers are its children: stop the session we started it in.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
