"""A small reverse proxy in front of the real API server: it records requests and injects faults.

A component under test gets a kubeconfig pointing here (plain HTTP on 127.0.0.1, its own bearer
token passed through), so every request it makes is seen: the RBAC test maps them to the
authorizer's attributes, and fault tests answer chosen requests with an error instead of
forwarding them. Watch streams are forwarded chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import aiohttp.web
import yaml

from support.controlplane import ControlPlane

__all__ = ["ApiProxy", "Seen"]

_FORWARDED_HEADERS = {"content-type", "accept", "authorization", "user-agent"}


class Seen(NamedTuple):
    """One request as the proxy saw it (its JSON body, if any), and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    body: Any = None


class _Fault(NamedTuple):
    method: str
    path: re.Pattern[str]
    status: int


class ApiProxy:
    """Forwards to the control plane; `fail()` makes chosen requests fail; `seen` records all."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.url = ""
        self._seen: list[Seen] = []
        self._faults: list[list[_Fault | int]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-proxy", daemon=True)

    # -- for tests ------------------------------------------------------------------------------

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def fail(self, method: str, path: str, *, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` requests whose method and path (a regex) match with `status`."""
        with self._lock:
            self._faults.append([_Fault(method.upper(), re.compile(path), status), times])

    def kubeconfig(self, token: str, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig that reaches the API server through this proxy with `token`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxied", "cluster": {"server": self.url}}],
            "users": [{"name": "proxied", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "proxied",
                    "context": {"cluster": "proxied", "user": "proxied", "namespace": namespace},
                }
            ],
            "current-context": "proxied",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ApiProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API proxy did not start")
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        context = ssl.create_default_context(cafile=str(self.plane.pki.ca.cert))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, connector=connector
        ) as session:
            self._session = session
            # handler_cancellation: a watch ends here when the client hangs up.
            server = aiohttp.web.Server(self._forward, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stopping.wait()
            await runner.cleanup()

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for entry in self._faults:
                fault, left = entry
                assert isinstance(fault, _Fault) and isinstance(left, int)
                if left > 0 and fault.method == method and fault.path.search(path):
                    entry[1] = left - 1
                    return fault.status
        return None

    def _record(self, request: aiohttp.web.BaseRequest, status: int, body: bytes) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        seen = Seen(request.method, request.path, dict(request.query), status, parsed)
        with self._lock:
            self._seen.append(seen)

    async def _forward(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await request.read()
        injected = self._take_fault(request.method, request.path)
        if injected is not None:
            self._record(request, injected, body)
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": "injected by the test's API proxy",
                    "reason": "ServiceUnavailable",
                    "code": injected,
                },
                status=injected,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        async with self._session.request(
            request.method,
            self.plane.url + request.path_qs,
            data=body or None,
            headers=headers,
            skip_auto_headers=("Content-Type",),  # none sent stays none (the server reads JSON)
        ) as upstream:
            self._record(request, upstream.status, body)
            response = aiohttp.web.StreamResponse(status=upstream.status)
            for name in ("Content-Type", "Content-Encoding"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
