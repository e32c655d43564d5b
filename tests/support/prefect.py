"""A real Prefect 3 API server for the test session.

Without ``PREFECT_API_URL`` every process that runs a flow starts its own
temporary server (7-13 s). One ``prefect server start`` per session, shared by
in-process flows and by the ``dioptra`` subprocesses the tests launch, pays
that once. ``PREFECT_HOME`` points at a temp folder so tests never touch
``~/.prefect``; it is set at import time, before anything imports Prefect.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["prefect_api_url", "prefect_server_env"]

_PREFECT_HOME = tempfile.mkdtemp(prefix="dioptra-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"prefect server at {url} not healthy after {timeout} s")


def _drain_prefect_workers() -> None:
    """Flush Prefect's background log and event workers while the server still answers.

    Otherwise they retry against a stopped server at interpreter exit for a minute or more.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """Start ``prefect server start`` on a free port; export its URL to us and to children."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = Path(_PREFECT_HOME) / "server"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or "prefect"
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(url, process, timeout=90)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        yield url
        _drain_prefect_workers()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def prefect_server_env(prefect_api_url: str) -> Iterator[str]:
    """Run in-process flows against the session server (Prefect caches settings at import)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url
