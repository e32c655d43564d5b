"""A process with Prefect already imported that forks each later local ``dioptra run``.

With the shared local Prefect server (``local_server``) a second run no longer waits for a
server, but it still imports Prefect and our runner (about 1.5 CPU s on 2 cores) before its
first task. So once a run has used the shared server it leaves behind this *warm runner*: a
process in its own session that imports all of that once and then waits on a Unix socket.
A later ``dioptra run`` (the client, which imports nothing heavy) connects, passes its
standard streams (SCM_RIGHTS), command line, environment, working directory and
``sys.path``, and the warm runner forks a child that becomes that run: the same code path as
a cold run, minus the imports. The client forwards SIGINT, SIGTERM and SIGHUP to the child,
and exits with the child's exit status, which the warm runner reaps and sends back. A client
that dies (SIGKILL) closes its socket; the child sees that and stops as on SIGTERM.

A fork only stands in for a cold start when nothing the imports depended on changed: the
client and the warm runner compare a key made of the Python executable, ``sys.path``, every
``PYTHON*`` and ``PREFECT_*`` variable, the active Prefect profile file, the Prefect version
and the modification times of our packages' sources. On any difference the client runs cold
and the warm runner, stale, exits; the run that follows starts a fresh one. It also exits
when the shared server it belongs to is gone (idle timeout, ``dioptra server stop``).

Nothing of this runs with ``DIOPTRA_LOCAL_SERVER=off``, ``PREFECT_API_URL`` set, or in a pod.
Files, in the shared server's folder: ``runner.lock`` (held by the live warm runner),
``runner.json`` (its PID, socket and runs served), ``runner.log``; the socket is
``runner.sock`` there, or in a private folder under the system's temporary directory when that
path is too long for a Unix socket. Only the same user may connect (checked with SO_PEERCRED).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SWITCH_ENV",
    "compatibility_key",
    "enabled",
    "ensure_started",
    "hand_off",
    "in_warm_child",
    "read_state",
]

SWITCH_ENV = "DIOPTRA_WARM_RUNNER"

# What a run imports before its first task; the child imports only the plugins and the rest.
PRELOAD = (
    "prefect",
    "prefect.flows",
    "prefect.tasks",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.client.orchestration",
    "prefect.events",
    "prefect.logging.handlers",
    "prefect.futures",
    "prefect.task_runners",
    "prefect.results",
    "dioptra.flow",
    "dioptra.pyplugs",
    "dioptra._prefect_engine",
    "dioptra_runner.cli",
    "dioptra_runner.run_command",
    "dioptra_runner.execution",
    "dioptra_runner.experiment",
    "dioptra_runner.summary",
    "dioptra_runner.reporter",
)
# Our packages: a source edited after the warm runner imported it makes it stale.
_OWN_PACKAGES = ("dioptra", "dioptra_runner", "dioptra_api", "dioptra_sync")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
_REQUEST_TIMEOUT = 10.0
_in_child = False


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``DIOPTRA_WARM_RUNNER=off``: every run imports Prefect itself."""
    return env.get(SWITCH_ENV, "").strip().lower() not in {"off", "0", "false", "no"}


def in_warm_child() -> bool:
    """True in a run forked by the warm runner (it must not hand itself off again)."""
    return _in_child


# -- where things are -------------------------------------------------------------------------


def _lock_path(folder: Path) -> Path:
    return folder / "runner.lock"


def _state_path(folder: Path) -> Path:
    return folder / "runner.json"


def _log_path(folder: Path) -> Path:
    return folder / "runner.log"


def socket_path(folder: Path) -> Path | None:
    """The socket's path; None when no private place short enough for it can be had."""
    near = folder / "runner.sock"
    if len(os.fsencode(near)) <= _MAX_SOCKET_PATH:
        return near
    digest = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"dioptra-{os.getuid()}-{digest}"
    with contextlib.suppress(FileExistsError):
        private.mkdir(mode=0o700)
    try:
        info = private.lstat()
    except OSError:
        return None
    mine = info.st_uid == os.getuid() and stat.S_ISDIR(info.st_mode)
    return private / "runner.sock" if mine and not info.st_mode & 0o077 else None


def read_state(folder: Path) -> dict[str, Any] | None:
    """What the live warm runner wrote about itself, or None when none runs."""
    if not _lock_held(folder):
        return None
    try:
        state = json.loads(_state_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _lock_held(folder: Path) -> bool:
    try:
        with open(_lock_path(folder), "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False  # closing drops our probe; nobody held it
    except OSError:
        return False


# -- the key --------------------------------------------------------------------------------


def _sources_stamp() -> list[Any]:
    """Count and newest modification time of our packages' sources (cheap: one scandir each)."""
    stamp: list[Any] = []
    for name in _OWN_PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        newest, count = 0, 0
        for location in locations:
            for root, _dirs, files in os.walk(location):
                for file in files:
                    if file.endswith(".py"):
                        newest = max(newest, os.stat(os.path.join(root, file)).st_mtime_ns)
                        count += 1
        stamp.append([name, locations, count, newest])
    return stamp


def _profile_stamp(env: Mapping[str, str]) -> list[Any]:
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        info = profiles.stat()
    except OSError:
        return [str(profiles), None]
    return [str(profiles), info.st_mtime_ns, info.st_size]


def compatibility_key(env: Mapping[str, str], path: Sequence[str]) -> str:
    """What must match for a fork of the warm runner to behave as a fresh process would."""
    from dioptra_runner.prefect_warmup import prefect_version

    relevant = sorted(
        (name, value)
        for name, value in env.items()
        if (name.startswith(("PYTHON", "PREFECT_")) and name != "PREFECT_API_URL")
    )
    key = {
        "python": sys.executable,
        "path": list(path),
        "env": relevant,
        "profile": _profile_stamp(env),
        "prefect": prefect_version(),
        "sources": _sources_stamp(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# -- starting one (by a run that used the shared server) --------------------------------------


def ensure_started(folder: Path, token: str, env: Mapping[str, str], path: Sequence[str]) -> None:
    """Start a warm runner for the shared server ``token`` unless one runs; never raises."""
    try:
        if not enabled(env) or _lock_held(folder) or socket_path(folder) is None:
            return
        launch = {
            **{k: v for k, v in env.items() if k != "PREFECT_API_URL"},
            "_DIOPTRA_WARM_PATH": json.dumps(list(path)),
            "_DIOPTRA_WARM_KEY": compatibility_key(env, path),
        }
        command = [sys.executable, "-m", "dioptra_runner.warm_runner", "serve"]
        with open(_log_path(folder), "ab") as log:
            subprocess.Popen(
                [*command, f"--state-dir={folder}", f"--token={token}"],
                env=launch,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C is not for it
            )
    except OSError:
        return  # the next run goes cold, as it would without us


# -- the warm runner ------------------------------------------------------------------------


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} dioptra warm runner [{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class _Refused(Exception):
    """A request this process cannot serve; the client runs cold."""


def serve(folder: Path, token: str, key: str) -> int:
    """Import, then fork a run for every compatible request until stale or the server goes."""
    lock = open(_lock_path(folder), "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another warm runner serves this folder
    where = socket_path(folder)
    if where is None:
        return 0
    started = time.monotonic()
    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(FileNotFoundError):
        where.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fsencode(where))
    os.chmod(where, 0o600)
    listener.listen(16)
    owner = os.getpid()
    state = {"pid": owner, "socket": str(where), "token": token, "served": 0}
    _write_state(folder, state)
    _say(f"ready in {time.monotonic() - started:.1f} s ({len(sys.modules)} modules imported)")
    try:
        child = _loop(folder, token, key, listener, state)
    finally:
        if os.getpid() == owner:
            listener.close()
            with contextlib.suppress(OSError):
                where.unlink()
                _state_path(folder).unlink()
    if child is None:
        return 0
    listener.close()  # the child's copies: the warm runner keeps its own
    lock.close()
    return _be_the_run(*child)


def _write_state(folder: Path, state: Mapping[str, Any]) -> None:
    partial = _state_path(folder).with_suffix(".partial")
    partial.write_text(json.dumps(state), encoding="utf-8")
    partial.replace(_state_path(folder))


def _server_gone(folder: Path, token: str) -> bool:
    from dioptra_runner.local_server import Paths, pid_alive, read_record

    record = read_record(Paths(folder))
    return record is None or record.token != token or not pid_alive(record.pid)


def _loop(
    folder: Path, token: str, key: str, listener: socket.socket, state: dict[str, Any]
) -> tuple[socket.socket, list[int], dict[str, Any]] | None:
    """Serve until stale; in a forked child, return what it must become."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    stale = ""
    try:
        while not stopping and not stale:
            for event, _mask in selector.select(timeout=1.0):
                if event.fileobj is listener:
                    stale, child = _accept(listener, key, children, state, folder)
                    if child is not None:  # this is the forked child now
                        for conn in children.values():
                            conn.close()
                        selector.close()
                        os.close(wake_read)
                        os.close(wake_write)
                        return child
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 512)
            _reap(children)
            if not stale and _server_gone(folder, token):
                stale = "its Prefect server stopped"
    finally:
        if not _in_child:
            signal.set_wakeup_fd(-1)
    _say(f"stopping: {stale or f'signal {stopping[0]}'}")
    for conn in children.values():  # runs still going keep running; their clients wait on
        conn.close()  # their PIDs instead (see hand_off)
    return None


def _accept(
    listener: socket.socket,
    key: str,
    children: dict[int, socket.socket],
    state: dict[str, Any],
    folder: Path,
) -> tuple[str, tuple[socket.socket, list[int], dict[str, Any]] | None]:
    """Read one request and fork its run; (why this process is stale, or "", the child)."""
    conn, _addr = listener.accept()
    fds: list[int] = []
    try:
        conn.settimeout(_REQUEST_TIMEOUT)
        _check_peer(conn)
        request, fds = _receive(conn)
        if request.get("client") in children:
            raise ValueError("a request from a run of ours")  # never fork from a fork
        if request.get("key") != key:
            raise _Refused("the client's environment or our sources changed")
        sys.stderr.flush()
        pid = os.fork()
    except (_Refused, OSError, ValueError) as refused:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"refused": str(refused)}).encode() + b"\n")
        conn.close()
        for fd in fds:
            os.close(fd)
        stale = str(refused) if isinstance(refused, _Refused) else ""
        return stale, None
    if pid == 0:
        global _in_child
        _in_child = True
        return "", (conn, fds, request)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    state["served"] += 1
    _write_state(folder, state)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _say(f"run {state['served']}: PID {pid} for client PID {request.get('client')}")
    return "", None


def _check_peer(conn: socket.socket) -> None:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise _Refused(f"a client of another user (uid {uid})")


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request (length-prefixed JSON) and the client's stdin, stdout and stderr."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < 4:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request without its streams")
    size = struct.unpack("!I", data[:4])[0]
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    request = json.loads(bytes(body))
    if not isinstance(request, dict):
        raise ValueError("a request that is not an object")
    return request, fds


def _reap(children: dict[int, socket.socket]) -> None:
    """Send each finished run's exit status to its client."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        conn.close()


def _be_the_run(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> int:
    """In the forked child: take the client's streams, place and environment, then run."""
    for signum in (*_FORWARDED, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)  # a signal to the warm runner's group is not for this run
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)  # type: ignore[union-attr]
    from dioptra_runner.prefect_warmup import refresh_prefect_settings

    refresh_prefect_settings()
    _forget_prefect_logging()
    threading.Thread(target=_stop_when_client_goes, args=(conn,), daemon=True).start()
    from dioptra_runner.cli import main

    try:
        main(sys.argv[1:])
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def _forget_prefect_logging() -> None:
    """Importing Prefect's engine configured its logging with the warm runner's settings; a
    run configures it with its own (the console quiet locally), so undo that setup and let
    the run's ``ensure_logging_setup`` do it afresh, as in a cold process."""
    from prefect.logging import configuration

    configuration.PROCESS_LOGGING_CONFIG = {}


def _stop_when_client_goes(conn: socket.socket) -> None:
    """The client holds its end until it has our exit status: EOF means it died."""
    conn.settimeout(None)
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


# -- the client -----------------------------------------------------------------------------


def hand_off(folder: Path, argv: Sequence[str]) -> int | None:
    """Have the warm runner run this command; its exit code, or None to run it here, cold."""
    where = socket_path(folder) if enabled() and _lock_held(folder) else None
    if where is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(_REQUEST_TIMEOUT)
        conn.connect(os.fsencode(where))
        request = {
            "argv": list(argv),
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "umask": _current_umask(),
            "path": list(sys.path),
            "key": compatibility_key(os.environ, sys.path),
            "client": os.getpid(),
        }
        body = json.dumps(request).encode()
        socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
        replies = _lines(conn)
        first = next(replies, None)
        if not first or "pid" not in first:
            return None
    except OSError:
        conn.close()
        return None
    pid = int(first["pid"])
    previous = {signum: signal.signal(signum, _forward_to(pid)) for signum in _FORWARDED}
    try:
        conn.settimeout(None)
        final = next(replies, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if final is None:  # the warm runner went away first: wait for the run itself
        while _alive(pid):
            time.sleep(0.1)
        return 1
    code = int(final["exit"])
    conn.close()
    if code < 0:  # ended by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _lines(conn: socket.socket) -> Iterator[dict[str, Any]]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)
        try:
            chunk = conn.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return
        buffer += chunk


def _forward_to(pid: int) -> Any:
    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    return forward


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- command line (the warm runner) -----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dioptra_runner.warm_runner",
        description="Keep Prefect imported and fork later local runs (started by dioptra run).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="wait for runs until stale")
    serve_parser.add_argument("--state-dir", type=Path, required=True)
    serve_parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)
    path = json.loads(os.environ.pop("_DIOPTRA_WARM_PATH", "null")) or sys.path
    key = os.environ.pop("_DIOPTRA_WARM_KEY", "")
    sys.path[:] = path
    return serve(args.state_dir, args.token, key)


if __name__ == "__main__":
    # Through the package's module, not this `__main__` copy: the forked run must see the
    # same `_in_child` as `dioptra_runner.cli` does.
    from dioptra_runner.warm_runner import main as package_main

    sys.exit(package_main())
