"""One local Prefect server kept between ``dioptra run`` invocations on a laptop (issue 17).

Each local run used to start Prefect's temporary API server and stop it at exit, paying its
start-up (~3 s) every time. Here the first run starts one in its own session, behind a small
supervisor process (``python -m dioptra_runner.local_server serve``), and later runs find it
healthy and start none. Everything lives in ``<cache>/prefect-server/``:

- ``server.json``: the record of the server: its token, the supervisor's and the server's
  PIDs, address, Prefect version, ``PREFECT_HOME``, start time, idle timeout, log, and
  whether it answered yet;
- ``server.lock``: an fcntl lock held around every check-and-start and around the
  supervisor's decision to stop, so that two runs starting at once start exactly one server
  and no run leases a server that is retiring;
- ``leases/<pid>``: one file per run using the server, holding the server's token (and, on
  Linux, the run's process start time, so a reused PID is not taken for the run); the
  supervisor counts the leases of live processes only, so a run killed by SIGKILL does not
  keep the server alive;
- ``server.log``: the supervisor's and the server's output.

The supervisor stops the server once no live run has held a lease for the idle timeout
(``DIOPTRA_SERVER_IDLE_SECONDS``, default 300 s). A recorded server that is gone, does not
answer, or runs another Prefect version is replaced when no run holds a lease on it; one that
a run still uses, or one recorded for another ``PREFECT_HOME``, is left alone, and this run
falls back to a server of its own (``prefect_warmup.start_background_warmup``), as every run
does with ``DIOPTRA_LOCAL_SERVER=off``. With ``PREFECT_API_URL`` set none of this happens.

Standard library only, no Prefect import: this runs before Prefect is imported.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from dioptra_runner.prefect_warmup import (
    Warmup,
    WarmupError,
    free_port,
    healthy,
    prefect_home,
    prefect_version,
    prepare_prefect_home,
    refresh_prefect_settings,
    server_command,
    server_environment,
    start_background_warmup,
    uses_external_server,
    wait_until_healthy,
)

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "IDLE_ENV",
    "SWITCH_ENV",
    "Paths",
    "ServerRecord",
    "SharedServer",
    "cache_dir",
    "idle_seconds",
    "live_leases",
    "pid_alive",
    "read_record",
    "status_command",
    "stop_command",
    "stop_server",
    "use_local_server",
]

SWITCH_ENV = "DIOPTRA_LOCAL_SERVER"
IDLE_ENV = "DIOPTRA_SERVER_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 300.0
FOLDER_NAME = "prefect-server"
# A supervisor that has not seen its server answer after this long is taken as stuck.
START_TIMEOUT = 120.0
# How long the supervisor gives the server to shut down cleanly before it kills it.
SERVER_STOP_TIMEOUT = 10.0
_OFF_VALUES = {"off", "0", "false", "no"}


# -- where things are -------------------------------------------------------------------------


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The user's dioptra cache: ``$DIOPTRA_CACHE_DIR``, else ``$XDG_CACHE_HOME/dioptra``,
    else ``~/.cache/dioptra`` (``dioptra run``'s default when no --plugin-cache is given)."""
    base = env.get("DIOPTRA_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dioptra"
    )
    return Path(base)


@dataclass(frozen=True)
class Paths:
    """The files of the shared server, in one folder of the cache."""

    folder: Path

    @classmethod
    def default(cls, env: Mapping[str, str] = os.environ) -> Paths:
        return cls(cache_dir(env) / FOLDER_NAME)

    @property
    def state(self) -> Path:
        return self.folder / "server.json"

    @property
    def lock(self) -> Path:
        return self.folder / "server.lock"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def leases(self) -> Path:
        return self.folder / "leases"


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``DIOPTRA_LOCAL_SERVER`` turns the shared server off (each run its own)."""
    return env.get(SWITCH_ENV, "").strip().lower() not in _OFF_VALUES


def idle_seconds(env: Mapping[str, str] = os.environ) -> float:
    """The idle timeout for a server started now; an unreadable value means the default."""
    raw = env.get(IDLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_SECONDS
    except ValueError:
        return DEFAULT_IDLE_SECONDS
    return max(value, 0.0) if math.isfinite(value) else DEFAULT_IDLE_SECONDS


# -- the record and its lock ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRecord:
    """What ``server.json`` says about the shared server.

    ``token`` names this server among its successors (leases and the supervisor's command
    line carry it); ``pid`` is the supervisor's, ``server_pid`` the uvicorn server's (None
    until the supervisor started it); ``ready`` turns true once it answered ``/health``.
    """

    token: str
    pid: int
    server_pid: int | None
    api_url: str
    prefect: str
    prefect_home: str
    started_at: float
    idle_seconds: float
    log: str
    ready: bool = False


def read_record(paths: Paths) -> ServerRecord | None:
    """The recorded server, or None (no file, or one that does not parse: a stale one)."""
    try:
        data = json.loads(paths.state.read_text(encoding="utf-8"))
        return ServerRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def _write_record(paths: Paths, record: ServerRecord) -> None:
    partial = paths.state.with_name(f".{paths.state.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    partial.replace(paths.state)


def _forget(paths: Paths, token: str) -> None:
    """Remove the record if it still names the server ``token`` (caller holds the lock)."""
    record = read_record(paths)
    if record is not None and record.token == token:
        paths.state.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    """Hold the folder's lock: one check-and-start (or stop decision) at a time."""
    paths.folder.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update_record(paths: Paths, token: str, **changes: Any) -> None:
    with _locked(paths):
        record = read_record(paths)
        if record is not None and record.token == token:
            _write_record(paths, replace(record, **changes))


# -- processes --------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) from ``/proc/<pid>/stat``; None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it waits only to be reaped)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _cmdline_has(pid: int | None, needle: bytes) -> bool:
    """Whether live process ``pid`` has ``needle`` in its command line (PID reuse guard).

    Without /proc (macOS) the PID alone is trusted.
    """
    if not pid_alive(pid):
        return False
    if not Path("/proc/self").exists():
        return True
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _supervisor_alive(record: ServerRecord) -> bool:
    return _cmdline_has(record.pid, record.token.encode())


def _server_alive(record: ServerRecord) -> bool:
    port = record.api_url.rsplit(":", 1)[-1].split("/", 1)[0]
    return _cmdline_has(record.server_pid, f"--port\0{port}\0".encode())


def _signal(pid: int | None, signum: int) -> None:
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def wait_gone(pids: Sequence[int | None], timeout: float) -> bool:
    """Wait until none of ``pids`` runs; False if some still does after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# -- leases -----------------------------------------------------------------------------------


def _lease_text(pid: int, token: str) -> str:
    stat = _proc_stat(pid)
    return f"{token} {stat[1] if stat else '-'}"


def _take_lease(paths: Paths, token: str) -> Path:
    paths.leases.mkdir(parents=True, exist_ok=True)
    lease = paths.leases / str(os.getpid())
    lease.write_text(_lease_text(os.getpid(), token), encoding="utf-8")
    return lease


def live_leases(paths: Paths, token: str) -> list[int]:
    """The PIDs of live runs holding a lease on server ``token``; dead runs' leases go."""
    try:
        leases = list(paths.leases.iterdir())
    except OSError:
        return []
    live = []
    for lease in leases:
        try:
            pid = int(lease.name)
            held_token, _, started = lease.read_text(encoding="utf-8").partition(" ")
        except (OSError, ValueError):
            continue
        current = _proc_stat(pid)
        reused = started not in ("", "-") and current is not None and current[1] != started
        if not pid_alive(pid) or reused:
            lease.unlink(missing_ok=True)
        elif held_token == token:
            live.append(pid)
    return live


# -- a run's use of the shared server ---------------------------------------------------------


class SharedServer:
    """The shared local server as one run uses it: its lease, and the same face as
    ``prefect_warmup.Warmup`` (``wait``, ``stop``, ``terminate``, ``error``), which is all the
    runner's execution code relies on."""

    def __init__(
        self,
        paths: Paths,
        record: ServerRecord,
        lease: Path,
        spawned: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.paths = paths
        self.record = record
        self.lease: Path | None = lease
        self.api_url: str | None = record.api_url
        self.log_path = Path(record.log)
        self.started = spawned is not None  # this run started it
        self.error: OSError | None = None
        self.process = None  # the run owns no server process: the supervisor does
        self._spawned = spawned
        self._ready = False
        self._launch: tuple[dict[str, str], list[str]] | None = None

    def point_prefect_here(self) -> None:
        """Point this process's Prefect at the server; give the lease back at exit."""
        assert self.api_url is not None
        # What a warm runner for later runs must import under (see ``stop``).
        self._launch = (dict(os.environ), list(sys.path))
        os.environ["PREFECT_API_URL"] = self.api_url
        refresh_prefect_settings()
        atexit.register(self._finished)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the server answers ``/health``; WarmupError if it dies or is late."""
        if self._ready:
            return
        assert self.api_url is not None

        def exited() -> str | None:
            if self._supervisor_running():
                return None
            return f"the local Prefect server exited (server log: {self.log_path})"

        if not wait_until_healthy(self.api_url, timeout, exited):
            raise WarmupError(
                f"the local Prefect server did not answer within {timeout:.0f} s "
                f"(server log: {self.log_path})"
            )
        self._ready = True

    def _supervisor_running(self) -> bool:
        if self._spawned is not None:
            return self._spawned.poll() is None
        return pid_alive(self.record.pid)

    def release(self) -> None:
        """Give the lease back: the server may idle out once no run holds one."""
        lease, self.lease = self.lease, None
        if lease is not None:
            with contextlib.suppress(OSError):
                lease.unlink(missing_ok=True)

    def _finished(self) -> None:
        """At exit: give the lease back, and leave a warm runner behind for the next run
        unless one runs already (``warm_runner``)."""
        self.release()
        from dioptra_runner import warm_runner

        if self._launch is not None and not warm_runner.in_warm_child():
            warm_runner.ensure_started(self.paths.folder, self.record.token, *self._launch)

    def stop(self) -> None:
        """Stop using the server (it keeps running for other runs and the next one)."""
        self.release()
        if self.api_url is not None and os.environ.get("PREFECT_API_URL") == self.api_url:
            del os.environ["PREFECT_API_URL"]
            refresh_prefect_settings()

    def terminate(self) -> None:
        """The exit-now variant of ``stop``: only the lease, nothing to wait for."""
        self.release()

    def describe(self) -> str:
        """One line for the run's log: which server, and whether this run started it."""
        how = "started" if self.started else "reusing"
        return (
            f"{how} the local Prefect server at {self.api_url} (supervisor PID "
            f"{self.record.pid}; log: {self.log_path})"
        )


class _Verdict(Enum):
    USE = "use"
    LEAVE = "leave"  # someone else's to keep: this run gets a server of its own
    REPLACE = "replace"


def use_local_server() -> tuple[Warmup | SharedServer, str]:
    """The Prefect API of a local run, and a line for its log saying which one it is.

    Call it first thing (before Prefect is imported), as ``start_background_warmup``: a first
    run's server boots while the run loads the Experiment and imports Prefect.
    """
    if uses_external_server(os.environ):
        return Warmup(), ""
    if not enabled(os.environ):
        return start_background_warmup(), f"{SWITCH_ENV}=off: a Prefect server for this run only"
    try:
        templated = _prepare_home()
    except OSError as error:  # the same one-line error as the per-run server's
        warmup = Warmup()
        warmup.error = error
        return warmup, ""
    try:
        server = _acquire(Paths.default(), templated)
    except OSError as error:  # an unwritable cache folder: the per-run server needs none
        return start_background_warmup(), f"cannot use the shared local Prefect server: {error}"
    if server is None:
        note = "the shared local Prefect server is another's: a Prefect server for this run only"
        return start_background_warmup(), note
    server.point_prefect_here()
    return server, server.describe()


def _prepare_home() -> bool:
    """Make ``$PREFECT_HOME`` ready (template database copied if empty); OSError if unwritable."""
    templated = prepare_prefect_home()
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    if not os.access(home, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(home))
    return templated


def _home_key() -> str:
    return str(prefect_home().resolve())


def _acquire(paths: Paths, templated: bool) -> SharedServer | None:
    """Lease the recorded server if it is usable, else start one; None: use a server of your own."""
    with _locked(paths):
        record = read_record(paths)
        if record is not None:
            verdict = _judge(paths, record)
            if verdict is _Verdict.USE:
                return SharedServer(paths, record, _take_lease(paths, record.token))
            if verdict is _Verdict.LEAVE:
                return None
            _retire(record)
        record, spawned = _start_supervisor(paths, templated)
        return SharedServer(paths, record, _take_lease(paths, record.token), spawned)


def _judge(paths: Paths, record: ServerRecord) -> _Verdict:
    if not _supervisor_alive(record):
        return _Verdict.REPLACE  # crashed, killed, or the machine restarted
    if record.prefect_home != _home_key():
        return _Verdict.LEAVE
    if record.prefect == prefect_version() and _answering(record):
        return _Verdict.USE
    # Broken or of another Prefect version: replace it unless some run still uses it.
    return _Verdict.LEAVE if live_leases(paths, record.token) else _Verdict.REPLACE


def _answering(record: ServerRecord) -> bool:
    """Healthy, or still booting (started by a run moments ago: ``wait`` will tell)."""
    if healthy(record.api_url):
        return True
    return not record.ready and time.time() - record.started_at < START_TIMEOUT


def _retire(record: ServerRecord) -> None:
    """Ask a replaced server to stop, without waiting (its supervisor needs our lock)."""
    if _supervisor_alive(record):
        _signal(record.pid, signal.SIGTERM)
    elif _server_alive(record):  # an orphan whose supervisor was killed
        _signal(record.server_pid, signal.SIGTERM)


def _start_supervisor(
    paths: Paths, templated: bool
) -> tuple[ServerRecord, subprocess.Popen[bytes]]:
    """Start the supervisor in its own session and record it (caller holds the lock)."""
    token = secrets.token_hex(8)
    port = free_port()
    idle = idle_seconds()
    command = [
        sys.executable,
        "-m",
        "dioptra_runner.local_server",
        "serve",
        f"--state-dir={paths.folder}",
        f"--token={token}",
        f"--port={port}",
        f"--idle-seconds={idle:g}",
    ]
    with open(paths.log, "wb") as log:
        # Its own session: a terminal's Ctrl-C to the run must not reach the shared server.
        spawned = subprocess.Popen(
            command,
            env={**server_environment(templated), "PREFECT_HOME": _home_key()},
            cwd=paths.folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = ServerRecord(
        token=token,
        pid=spawned.pid,
        server_pid=None,
        api_url=f"http://127.0.0.1:{port}/api",
        prefect=prefect_version(),
        prefect_home=_home_key(),
        started_at=time.time(),
        idle_seconds=idle,
        log=str(paths.log),
    )
    _write_record(paths, record)
    return record, spawned


# -- the supervisor ---------------------------------------------------------------------------


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} dioptra local server [{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that has the server stopped if the supervisor dies
    (even by SIGKILL), so no orphan server outlives it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def serve(paths: Paths, token: str, port: int, idle: float) -> int:
    """Run the Prefect server until it has been idle for ``idle`` s (or SIGTERM); forget it."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: stopping.set())
    api_url = f"http://127.0.0.1:{port}/api"
    _say(f"starting Prefect {prefect_version()} at {api_url}; stops after {idle:g} s idle")
    server = subprocess.Popen(
        server_command(port), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent()
    )
    reason = "stopped"
    try:
        _update_record(paths, token, server_pid=server.pid)
        reason = _supervise(paths, token, api_url, server, idle, stopping)
    finally:
        with contextlib.suppress(OSError), _locked(paths):
            _forget(paths, token)
        _stop_process(server)
        _say(f"{reason}; server stopped")
    return 0


def _supervise(
    paths: Paths,
    token: str,
    api_url: str,
    server: subprocess.Popen[bytes],
    idle: float,
    stopping: threading.Event,
) -> str:
    """Watch the server and the leases; return why it is time to stop."""
    poll = min(1.0, max(0.05, idle / 10))
    ready = False
    last_used = time.monotonic()
    while not stopping.wait(poll):
        if server.poll() is not None:
            return f"the server exited with code {server.returncode}"
        if not ready and healthy(api_url):
            ready = True
            _update_record(paths, token, ready=True)
            _say(f"server answering (PID {server.pid})")
        if live_leases(paths, token):
            last_used = time.monotonic()
        elif time.monotonic() - last_used >= idle and _retire_if_idle(paths, token):
            return f"no run used it for {idle:g} s"
    return "asked to stop"


def _retire_if_idle(paths: Paths, token: str) -> bool:
    """Under the lock, so no run leases it in between: forget the server if still unused."""
    with _locked(paths):
        if live_leases(paths, token):
            return False
        _forget(paths, token)
        return True


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- `dioptra server status` and `dioptra server stop` ----------------------------------------


def _running_record(paths: Paths) -> ServerRecord | None:
    record = read_record(paths)
    return record if record is not None and _supervisor_alive(record) else None


def status_command(args: argparse.Namespace) -> int:
    """``dioptra server status``: what runs, or that nothing does; exit 0 either way."""
    from dioptra_api.clock import format_duration

    paths = Paths.default()
    record = _running_record(paths)
    if record is None:
        sys.stdout.write(f"no local Prefect server is running (its files: {paths.folder})\n")
        return 0
    if healthy(record.api_url):
        state = "answering"
    else:
        state = "not answering" if record.ready else "starting"
    users = len(live_leases(paths, record.token))
    server_pid = record.server_pid if record.server_pid is not None else "-"
    lines = [
        f"local Prefect server at {record.api_url} ({state})",
        f"  PID:           {server_pid} (supervisor {record.pid})",
        f"  Prefect:       {record.prefect}, PREFECT_HOME {record.prefect_home}",
        f"  uptime:        {format_duration(time.time() - record.started_at)}",
        f"  in use by:     {users} run{'s' if users != 1 else ''}",
        f"  idle timeout:  {record.idle_seconds:g} s ({IDLE_ENV} for the next server)",
        f"  log:           {record.log}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def stop_server(paths: Paths, record: ServerRecord, timeout: float = 30.0) -> bool:
    """Stop the server (and its warm runner) now and wait until their processes are gone;
    False if they are not."""
    from dioptra_runner.warm_runner import read_state

    warm = read_state(paths.folder)
    if warm is not None:
        _signal(int(warm["pid"]), signal.SIGTERM)  # runs it forked go on until they end
        wait_gone([int(warm["pid"])], timeout)
    if _supervisor_alive(record):
        _signal(record.pid, signal.SIGTERM)  # it stops its server, then exits
    elif _server_alive(record):
        _signal(record.server_pid, signal.SIGTERM)
    pids = [record.pid, record.server_pid]
    if not wait_gone(pids, timeout):
        for pid, alive in ((record.pid, _supervisor_alive), (record.server_pid, _server_alive)):
            if alive(record):
                _signal(pid, signal.SIGKILL)
        if not wait_gone(pids, 5.0):
            return False
    with _locked(paths):
        _forget(paths, record.token)
    return True


def stop_command(args: argparse.Namespace) -> int:
    """``dioptra server stop``: stop it now, wait until it is gone, say what was done."""
    paths = Paths.default()
    record = _running_record(paths)
    if record is None:
        stale = read_record(paths)
        if stale is not None:
            with _locked(paths):
                _forget(paths, stale.token)
        sys.stdout.write("no local Prefect server is running: nothing to stop\n")
        return 0
    users = len(live_leases(paths, record.token))
    if not stop_server(paths, record):
        sys.stderr.write(
            f"dioptra server stop: the local Prefect server (PID {record.pid}) is still "
            "running after SIGKILL\n"
        )
        return 1
    note = f"; {users} run{'s' if users != 1 else ''} using it will fail" if users else ""
    sys.stdout.write(
        f"stopped the local Prefect server at {record.api_url} (PID {record.server_pid}, "
        f"supervisor {record.pid}){note}\n"
    )
    return 0


# -- command line (the supervisor) ------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dioptra_runner.local_server",
        description="The supervisor of the local Prefect server (started by dioptra run).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the server until it is idle")
    serve_parser.add_argument("--state-dir", type=Path, required=True)
    serve_parser.add_argument("--token", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_SECONDS)
    args = parser.parse_args(argv)
    return serve(Paths(args.state_dir), args.token, args.port, args.idle_seconds)


if __name__ == "__main__":
    sys.exit(main())
