"""A local Python package index for tests and benchmarks: wheels built on the spot, served as a
PEP 503 simple index on 127.0.0.1, every requested path recorded (so a test can tell whether a
second install downloaded anything)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

__all__ = ["Index", "build_wheel"]


def build_wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """A minimal pure-Python wheel: one module plus METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


class Index:
    """A PEP 503 simple index on 127.0.0.1 that records every path requested."""

    def __init__(self, wheels: Path) -> None:
        self.wheels = wheels
        self.requests: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                self.respond(send_body=True)

            def do_HEAD(self) -> None:  # uv asks whether a wheel supports range requests
                self.respond(send_body=False)

            def respond(self, *, send_body: bool) -> None:
                body, kind = index.answer(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if self.path.startswith("/files/"):  # as PyPI's file host: files never change
                    self.send_header("Cache-Control", "max-age=365000000, immutable, public")
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[bytes | None, str]:
        if path.startswith("/files/"):
            wheel = self.wheels / path.removeprefix("/files/")
            return (wheel.read_bytes() if wheel.is_file() else None), "application/octet-stream"
        project = path.removeprefix("/simple/").strip("/")
        wheels = sorted(self.wheels.glob(f"{project.replace('-', '_')}-*.whl"))
        if not wheels:
            return None, ""
        links = "".join(
            f'<a href="/files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{w.name}</a>\n"
            for w in wheels
        )
        return f"<html><body>{links}</body></html>".encode(), "text/html"

    def wheel_downloads(self) -> list[str]:
        return [path for path in self.requests if path.endswith(".whl")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
