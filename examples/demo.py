"""`make demo`: the adversarial-digits Experiment end to end through a local S3 server.

1. start `moto_server` (a real S3-compatible server) on a free port on 127.0.0.1;
2. `dioptra plugins push` the builtin plugins to s3://dioptra-plugins/dioptra_builtins;
3. `dioptra run examples/adversarial-digits.yaml`: sync the plugins from S3, run the flow on
   Prefect 3 with a live progress view, print the metrics table;
4. stop the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "dioptra-plugins"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_s3(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("demo: the local S3 server did not start")


def main() -> int:
    port = free_port()
    cache = REPO / ".cache"
    env = {
        **os.environ,
        # Demo-only credentials for the throwaway local server; real runs use the standard
        # AWS chain (env, profiles, IRSA) and, in a cluster, a Secret.
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(cache / "prefect")),
        "DIOPTRA_CACHE_DIR": str(cache / "dioptra"),
    }
    env.pop("AWS_CA_BUNDLE", None)
    print(f"demo: starting a local S3 server on 127.0.0.1:{port}", flush=True)
    server = start_s3(port)
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="demo",
            aws_secret_access_key="demo-secret",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        shutil.rmtree(cache / "dioptra" / "plugins" / "adversarial-digits", ignore_errors=True)
        steps = [
            [
                str(BIN / "dioptra"),
                "plugins",
                "push",
                str(REPO / "runner-image" / "dioptra_builtins"),
                f"s3://{BUCKET}/dioptra_builtins",
            ],
            [str(BIN / "dioptra"), "run", str(REPO / "examples" / "adversarial-digits.yaml")],
        ]
        for command in steps:
            print("$ " + " ".join(Path(c).name if c.startswith(str(BIN)) else c for c in command))
            code = subprocess.call(command, env=env, cwd=REPO)
            if code != 0:
                return code
        return 0
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
