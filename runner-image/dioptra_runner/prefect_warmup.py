"""Make Prefect 3's temporary API server cheap enough for a pod (DESIGN.md section 8).

Without ``PREFECT_API_URL`` Prefect 3 starts a temporary API server (uvicorn + SQLite under
``$PREFECT_HOME``) on the first API call: it migrates a fresh database (~4 CPU-seconds),
registers block types, and the client that spawns it first imports the whole server package
just to build the command line. Measured in ``docs/prefect-startup.md``, the wins are:

- a database migrated at image build time (``build_template``) and copied into an empty
  ``$PREFECT_HOME`` (``prepare_prefect_home``), so migrations and block registration are
  skipped;
- starting that same server ourselves at the very beginning of ``dioptra run``
  (``start_background_warmup``) with stdlib only, so it boots while the runner imports Prefect,
  loads the Experiment and imports the plugins; the runner then talks to it through
  ``PREFECT_API_URL`` like to any Prefect server, and flows and task runs land in its API.

In a Job with the ``prefect-api`` sidecar (an init container with ``restartPolicy: Always``)
the same server runs in that container instead (``serve``), started before the plugin sync,
and the runner only waits for it (``SidecarApi``).

When ``PREFECT_API_URL`` is set (the chart's Prefect server, or a user's), all of this is a
no-op. This module imports nothing from Prefect at module level: it must run before Prefect is
imported, to overlap with that import.

Image build (run once, as root, in the runner image)::

    python -m dioptra_runner.prefect_warmup build-template /opt/dioptra/prefect-template

The Job's sidecar::

    python -m dioptra_runner.prefect_warmup serve --listen 127.0.0.1:4200
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path

from dioptra_api import PREFECT_SIDECAR, PREFECT_SIDECAR_ENV, PREFECT_SIDECAR_TIMEOUT_ENV

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATE_ENV",
    "SidecarApi",
    "SidecarUnavailable",
    "Warmup",
    "WarmupError",
    "build_template",
    "free_port",
    "healthy",
    "pod_prefect_api",
    "prefect_home",
    "prefect_version",
    "prepare_prefect_home",
    "quiet_server_settings",
    "refresh_prefect_settings",
    "serve",
    "server_command",
    "server_environment",
    "start_background_warmup",
    "uses_external_server",
    "wait_until_healthy",
]

TEMPLATE_ENV = "DIOPTRA_PREFECT_TEMPLATE"
DEFAULT_TEMPLATE = Path("/opt/dioptra/prefect-template")
DATABASE_NAME = "prefect.db"
STAMP_NAME = "dioptra-template.json"
SERVER_LOG_NAME = "dioptra-prefect-server.log"
_DB_URL_KEYS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


class WarmupError(RuntimeError):
    """The temporary Prefect server did not come up; the message is one line for the user."""


class SidecarUnavailable(WarmupError):
    """The Job's Prefect API sidecar did not answer in time: the run cannot go on without it."""


# -- where things are -------------------------------------------------------------------------


def prefect_home(env: Mapping[str, str] = os.environ) -> Path:
    """``$PREFECT_HOME`` as Prefect resolves it (default ``~/.prefect``)."""
    return Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()


def _profile_api_url(env: Mapping[str, str]) -> str | None:
    """The ``PREFECT_API_URL`` of the active Prefect profile, read without importing Prefect."""
    path = Path(env.get("PREFECT_PROFILES_PATH") or prefect_home(env) / "profiles.toml")
    try:
        document = tomllib.loads(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = env.get("PREFECT_PROFILE") or document.get("active") or "ephemeral"
    profile = document.get("profiles", {}).get(active, {})
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(value) if value else None


def uses_external_server(env: Mapping[str, str] = os.environ) -> bool:
    """True when Prefect will talk to a server someone runs (env or active profile)."""
    return bool(env.get("PREFECT_API_URL") or _profile_api_url(env))


def prefect_version() -> str:
    """The installed Prefect's version, read from its metadata (no import)."""
    return importlib.metadata.version("prefect")


# -- the pre-migrated database ----------------------------------------------------------------


def build_template(dest: Path) -> None:
    """Create a migrated Prefect database with its block types registered, in ``dest``.

    Runs Prefect's own migrations in a child process whose ``PREFECT_HOME`` is a scratch
    folder, then moves the database into ``dest`` with a stamp naming the Prefect version,
    so a later Prefect upgrade never gets a database from another schema.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefect-template-", dir=dest.parent) as scratch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PREFECT_HOME"] = scratch
        env["PREFECT_PROFILES_PATH"] = str(Path(scratch) / "profiles.toml")
        code = "from dioptra_runner.prefect_warmup import _populate_database; _populate_database()"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise WarmupError(f"could not build the Prefect template database: {last}")
        _checkpoint(Path(scratch) / DATABASE_NAME)
        staged = Path(scratch) / "template"
        staged.mkdir()
        shutil.move(str(Path(scratch) / DATABASE_NAME), staged / DATABASE_NAME)
        stamp = {"prefect": prefect_version()}
        (staged / STAMP_NAME).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)


def _checkpoint(database: Path) -> None:
    """Fold SQLite's write-ahead log into the database file, so the file alone is complete."""
    import sqlite3

    connection = sqlite3.connect(database)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        connection.close()


def _populate_database() -> None:
    """Run migrations and block registration against ``$PREFECT_HOME`` (child of build_template)."""
    import asyncio

    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    async def populate() -> None:
        db = provide_database_interface()
        await db.create_db()
        async with await db.session() as session:
            await run_block_auto_registration(session=session)
            await session.commit()

    asyncio.run(populate())


def _usable_template(template: Path) -> bool:
    try:
        stamp = json.loads((template / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (template / DATABASE_NAME).is_file() and stamp.get("prefect") == prefect_version()


def prepare_prefect_home(
    template: Path | None = None, env: MutableMapping[str, str] = os.environ
) -> bool:
    """Copy the pre-migrated database into an empty ``$PREFECT_HOME``; True if it did.

    Does nothing when an external server is configured, when the user chose another database
    URL, when ``$PREFECT_HOME`` already has a database (a laptop's ``~/.prefect`` keeps its
    history), or when no template for this Prefect version exists (Prefect then migrates as
    usual: slower, never wrong).
    """
    if uses_external_server(env) or any(env.get(key) for key in _DB_URL_KEYS):
        return False
    if template is None:
        template = Path(env.get(TEMPLATE_ENV) or DEFAULT_TEMPLATE)
    home = prefect_home(env)
    target = home / DATABASE_NAME
    if target.exists() or not _usable_template(template):
        return False
    home.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{DATABASE_NAME}.{os.getpid()}.partial")
    shutil.copyfile(template / DATABASE_NAME, partial)
    partial.replace(target)
    return True


# -- the temporary server ---------------------------------------------------------------------


def quiet_server_settings(templated: bool = False) -> dict[str, str]:
    """Settings for the temporary server that measurably shorten its start (see the docs).

    Analytics would resolve an outside host name at start (a DNS wait in a pod without
    egress). With a database just copied from a template of the same Prefect version,
    migrations and block registration have already run, so the server skips both; and no
    automation can exist in it, so the automations (triggers) service, which loads and
    watches them, has nothing to do. Server start with the template, measured on 2 cores:
    4.0 s as Prefect ships, 3.5 s with these first three, 3.3 s with triggers off too.
    """
    settings = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if templated:
        settings["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        settings["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
        settings["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] = "false"
    return settings


class Warmup:
    """A temporary Prefect API server that started booting in the background.

    ``api_url`` is None when nothing was started (an external server is configured).
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None = None,
        api_url: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.process = process
        self.api_url = api_url
        self.log_path = log_path
        self.error: OSError | None = None  # why the server could not be started, if it could not
        self._ready = process is None

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the server answers ``/health``; raises WarmupError after ``timeout`` s."""
        if self._ready:
            return
        process, api_url = self.process, self.api_url
        assert process is not None and api_url is not None

        def exited() -> str | None:
            if process.poll() is None:
                return None
            return (
                f"the temporary Prefect server exited with code {process.returncode}"
                f"{self._log_hint()}"
            )

        if not wait_until_healthy(api_url, timeout, exited):
            raise WarmupError(
                f"the temporary Prefect server did not answer within {timeout:.0f} s"
                f"{self._log_hint()}"
            )
        self._ready = True

    def stop(self) -> None:
        """Stop the server this warmup started, and stop pointing Prefect at it."""
        process, self.process = self.process, None
        if process is None:
            return
        if os.environ.get("PREFECT_API_URL") == self.api_url:
            del os.environ["PREFECT_API_URL"]
            refresh_prefect_settings()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) and return at once, for a process exiting now.

        It runs in its own session, so nothing else would stop it (a second Ctrl-C).
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()

    def _log_hint(self) -> str:
        return f" (server log: {self.log_path})" if self.log_path else ""


class SidecarApi:
    """The Prefect API the Job's sidecar container serves, which may still be starting.

    It offers what the runner uses of a ``Warmup`` (``wait``, ``stop``, ``terminate``,
    ``error``); the server is not this process's to stop (the kubelet stops it).
    """

    error: OSError | None = None

    def __init__(self, api_url: str, timeout: float = 120.0) -> None:
        self.api_url = api_url
        self.timeout = timeout
        self._ready = False

    def wait(self, timeout: float | None = None) -> None:
        """Block until the sidecar answers ``/health``; SidecarUnavailable after the timeout.

        The sidecar started before the plugin sync, so it usually answers at once; it may be
        slower on a busy node, or crash-looping (OOM, a broken image), which only its own
        status and log can tell.
        """
        if self._ready:
            return
        limit = self.timeout if timeout is None else timeout
        if not wait_until_healthy(self.api_url, limit):
            pod = os.environ.get("HOSTNAME") or "<pod>"
            raise SidecarUnavailable(
                f"the Prefect API sidecar did not answer at {self.api_url} within "
                f"{limit:g} s; see `kubectl logs {pod} -c {PREFECT_SIDECAR}`"
            )
        self._ready = True

    def stop(self) -> None:
        """Nothing to stop: the kubelet ends the sidecar once the runner has ended."""

    def terminate(self) -> None:
        """Nothing to stop: the kubelet ends the sidecar once the runner has ended."""


def pod_prefect_api(env: Mapping[str, str] = os.environ) -> Warmup | SidecarApi:
    """The Prefect API of a runner in a Job's Pod: its sidecar's, else a server started now."""
    url = env.get("PREFECT_API_URL")
    if url and env.get(PREFECT_SIDECAR_ENV) == "1":
        try:
            timeout = float(env.get(PREFECT_SIDECAR_TIMEOUT_ENV) or 120)
        except ValueError:
            timeout = 120.0
        return SidecarApi(url, timeout)
    return start_background_warmup()


def start_background_warmup(
    template: Path | None = None, server_settings: Mapping[str, str] | None = None
) -> Warmup:
    """Start Prefect's temporary API server now, and point this process's Prefect at it.

    Call it first thing in the runner, before Prefect is imported: the server boots while
    the runner does its own work; call ``Warmup.wait()`` before the first flow run (on
    WarmupError, ``Warmup.stop()`` and carry on: Prefect then starts its own server). A no-op
    when ``PREFECT_API_URL`` (or the active profile) names a server. The server is the one
    Prefect itself would start (same app, same ``$PREFECT_HOME`` database), only earlier and
    without the client importing the server package to launch it.
    """
    if uses_external_server(os.environ):
        return Warmup()
    try:
        process, api_url, log_path = _spawn_server(template, server_settings)
    except OSError as error:
        # An unwritable PREFECT_HOME, no free port...: the caller decides (`Warmup.error`);
        # Prefect's own server would fail the same way, 24 s later and with pages of output.
        warmup = Warmup()
        warmup.error = error
        return warmup
    os.environ["PREFECT_API_URL"] = api_url
    refresh_prefect_settings()
    warmup = Warmup(process, api_url, log_path)
    atexit.register(warmup.stop)
    return warmup


def _spawn_server(
    template: Path | None, server_settings: Mapping[str, str] | None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    templated = prepare_prefect_home(template)
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_environment(templated, server_settings)
    log_path = home / SERVER_LOG_NAME
    with open(log_path, "wb") as log:
        # Its own session: a terminal's Ctrl-C goes to the whole foreground process group,
        # and the server must outlive the runner's clean-up (it records the flow run's
        # cancellation). The runner stops it last, on every way out (Warmup.stop).
        process = subprocess.Popen(
            server_command(port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}/api", log_path


def server_environment(
    templated: bool, server_settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of the temporary server: this process's, quieted, without the UI.

    The two private flags are what Prefect sets on its own temporary server; shared with
    ``dioptra_runner.local_server`` so both servers are started alike.
    """
    return {
        **os.environ,
        **quiet_server_settings(templated),
        **(server_settings or {}),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }


def server_command(port: int) -> list[str]:
    """The uvicorn command line of Prefect's API server on 127.0.0.1:``port``."""
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is not installed"
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(spec.origin).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def free_port() -> int:
    """A port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` answers ``/health`` within 2 s."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    api_url: str, timeout: float, exited: Callable[[], str | None] = lambda: None
) -> bool:
    """Poll ``/health`` until it answers (True) or ``timeout`` s pass (False).

    ``exited`` says why the server can no longer answer (its process is gone), or None while
    it may still come up; its message is raised as a WarmupError at once rather than waiting
    out the timeout.
    """
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        gone = exited()
        if gone is not None:
            raise WarmupError(gone)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def refresh_prefect_settings() -> None:
    """Prefect snapshots its settings at import; re-read them if it was imported already."""
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()


def serve(listen: str, template: Path | None = None) -> None:
    """Be Prefect's API server on ``listen`` (``HOST:PORT``), in the foreground: the sidecar.

    The same server and settings as ``start_background_warmup`` (template database, quiet
    settings, the app uvicorn would load), run in this process so that its output is the
    container's log and the kubelet's SIGTERM reaches it. That signal must work from the first
    instant: as a container's PID 1 a process that has no handler ignores it, and a sidecar
    stopped while importing (a sync that failed at once) would hold its Pod for the whole grace
    period. Until uvicorn installs its own handlers (graceful shutdown), SIGTERM exits 143.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise WarmupError(f"--listen expects HOST:PORT, got {listen!r}")
    templated = prepare_prefect_home(template)
    prefect_home().mkdir(parents=True, exist_ok=True)
    os.environ.update(server_environment(templated))  # before Prefect reads its settings
    sys.stderr.write(f"serving the Prefect API at http://{host}:{port}/api\n")
    sys.stderr.flush()
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host=host or "127.0.0.1",
        port=int(port),
        log_level="error",
        lifespan="on",
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signal.SIGTERM)


# -- command line (image build, the Job's sidecar) --------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dioptra_runner.prefect_warmup",
        description="Prepare Prefect's temporary server for fast starts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-template", help="write a pre-migrated Prefect database")
    build.add_argument("dest", type=Path, help=f"target folder (default used: {DEFAULT_TEMPLATE})")
    sidecar = commands.add_parser("serve", help="run the Prefect API server in the foreground")
    sidecar.add_argument("--listen", default="127.0.0.1:4200", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.listen)
            return 0
        build_template(args.dest)
    except (WarmupError, OSError) as error:
        sys.stderr.write(f"prefect_warmup: {error}\n")
        return 1
    sys.stdout.write(f"Prefect {prefect_version()} template database written to {args.dest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
