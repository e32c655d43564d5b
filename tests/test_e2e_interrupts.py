"""End to end: a running Experiment suspended or deleted stops its runner cleanly.

Kubernetes stops a Job's pod with SIGTERM (suspension, deletion, a deadline); the runner must
cancel the flow run, write its own account (`status.run`: Cancelled, what ran) and exit 143
within the grace period, without a traceback. Everything is real but the kubelet, which runs
the containers as processes and delivers SIGTERM as a container runtime does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
from support.cluster import Cluster, OperatorProcess, wait_until
from support.kubelet import StandInKubelet
from support.s3 import FAKE_KEY, REGION, S3Server
from test_e2e_experiment import credentials_secret

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HOLD = '''
import time
from pathlib import Path
from dioptra import pyplugs

@pyplugs.register
def hold(marker: str) -> str:
    """Say it started, then wait (bounded) for a release that never comes."""
    Path(marker).touch()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not Path(marker + ".release").exists():
        time.sleep(0.05)
    return "released"

@pyplugs.register
def after(value: str, marker: str) -> str:
    Path(marker + ".after").touch()
    return value
'''

FLOW = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Hold") as flow:
    marker = Parameter("marker")
    held = pyplugs.call_task("holdpkg", "steps", "hold", marker=marker)
    pyplugs.call_task("holdpkg", "steps", "after", value=held, marker=marker)
"""


@pytest.fixture()
def held_experiment(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> Path:
    """A running Experiment whose first task has started and holds; returns its marker file."""
    bucket = s3_server.new_bucket()
    s3_server.put_files(bucket, "holdpkg", {"__init__.py": b"", "steps.py": HOLD.encode()})
    credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
    marker = tmp_path / "held"
    manifest: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": "held"},
        "spec": {
            "entryPoint": {"script": FLOW},
            "parameters": {"marker": str(marker)},
            "plugins": {
                "sources": [f"s3://{bucket}/holdpkg"],
                "endpointURL": s3_server.endpoint_url,
                "region": REGION,
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
        },
    }
    cluster.create(manifest)
    wait_until(marker.exists, timeout=120, what="the first task to start")
    return marker


def runner_exit(kubelet: StandInKubelet, namespace: str) -> tuple[int, str]:
    """The runner container's exit code and output, once it exited."""

    def exited() -> str | None:
        for key in kubelet.exit_codes:
            if key.startswith(f"{namespace}/held-") and key.endswith(f"/{c.MAIN_CONTAINER}"):
                return key
        return None

    key = wait_until(exited, timeout=60, what="the runner to exit")
    return kubelet.exit_codes[key], kubelet.logs.get(key, "")


def test_suspending_a_running_experiment_cancels_its_run_and_says_what_ran(
    cluster: Cluster, kubelet: StandInKubelet, held_experiment: Path
) -> None:
    cluster.patch("experiments", "held", {"spec": {"suspend": True}})

    code, output = runner_exit(kubelet, cluster.namespace)
    final = cluster.wait_for(
        "experiments",
        "held",
        lambda e: (
            ((e or {}).get("status") or {}).get("phase") == c.Phase.SUSPENDED
            and (e["status"].get("run") or {}).get("phase") == "Cancelled"
        ),
        what="the suspension and the runner's account",
    )["status"]
    assert code == 143, output
    assert "Traceback" not in output
    assert final["run"]["reason"] == "Interrupted"
    assert final["run"]["message"].startswith("stopped by SIGTERM after 0 of 2 tasks")
    assert not Path(f"{held_experiment}.after").exists()  # the next task never started


def test_deleting_a_running_experiment_stops_its_runner_with_143(
    cluster: Cluster, kubelet: StandInKubelet, held_experiment: Path
) -> None:
    cluster.delete("experiments", "held")

    code, output = runner_exit(kubelet, cluster.namespace)
    assert code == 143, output
    assert "stopped by SIGTERM" in output
    assert "Traceback" not in output
    assert not Path(f"{held_experiment}.after").exists()
