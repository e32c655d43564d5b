"""End to end with every real part: control plane, operator, `dioptra plugins sync`, `dioptra run`.

An Experiment from `examples/` goes through the operator's Job, the real Job controller and
scheduler, the real plugin sync from a moto S3 server (the init container), the real runner on
Prefect 3 (the session's Prefect server, passed to the Job through the chart's
DIOPTRA_PREFECT_API_URL) and the runner's status write-back as the chart's runner
ServiceAccount. The stand-in kubelet is the only fake: it runs the containers as processes.
"""

from __future__ import annotations

import base64
import copy
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dioptra_api as c
import pytest
import yaml
from dioptra_sync import push_bundle
from support.cluster import ChartRbac, Cluster, OperatorProcess, operator_running, wait_until
from support.kubelet import CONTAINER_MARKER, NamespaceSettings, StandInKubelet
from support.s3 import FAKE_KEY, REGION, S3Server, start_moto_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
BUILTINS = REPO / "runner-image" / "dioptra_builtins"


def credentials_secret(api: Cluster, name: str, key: str, secret: str) -> None:
    def b64(value: str) -> str:
        return base64.b64encode(value.encode()).decode()

    api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {"AWS_ACCESS_KEY_ID": b64(key), "AWS_SECRET_ACCESS_KEY": b64(secret)},
        }
    )


def example(name: str, bucket: str, endpoint: str) -> dict[str, Any]:
    """An example Experiment, its S3 sources pointed at the test bucket."""
    manifest = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    manifest = copy.deepcopy(manifest)
    plugins = manifest["spec"].setdefault("plugins", {})
    plugins["sources"] = [
        f"s3://{bucket}/{source.split('/', 3)[3]}" for source in plugins.get("sources") or []
    ]
    plugins.update(
        endpointURL=endpoint, region=REGION, credentialsSecretRef={"name": "s3-credentials"}
    )
    return dict(manifest)


def push_builtins(s3: S3Server, bucket: str) -> None:
    files = {
        str(path.relative_to(BUILTINS)): path.read_bytes()
        for path in BUILTINS.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    s3.put_files(bucket, "dioptra_builtins", files)


def status(api: Cluster, name: str) -> dict[str, Any]:
    return dict(api.get("experiments", name).get("status") or {})


def succeeded(
    api: Cluster, kubelet: StandInKubelet, name: str, *, timeout: float = 150
) -> dict[str, Any]:
    """Wait for the Experiment to end and return its status; it must have Succeeded (the
    message and the pods' logs say why not)."""
    final: dict[str, Any] = wait_until(
        lambda: (s := status(api, name)).get("phase") in c.Phase.TERMINAL and s,
        timeout=timeout,
        what="the experiment to finish",
    )
    assert final["phase"] == c.Phase.SUCCEEDED, (
        final.get("message"),
        kubelet.logs_in(api.namespace),
    )
    return final


def condition(current: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(cond for cond in current.get("conditions") or [] if cond["type"] == type_)


@pytest.fixture()
def builtins_bucket(cluster: Cluster, s3_server: S3Server) -> str:
    """A bucket holding the builtin plugins, and the Secret with credentials to read it."""
    bucket = s3_server.new_bucket()
    push_builtins(s3_server, bucket)
    credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
    return bucket


def test_an_example_experiment_succeeds_with_progress_and_results(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    cluster.create(example("random-integer", builtins_bucket, s3_server.endpoint_url))

    final = succeeded(cluster, kubelet, "random-integer")
    assert final["tasksTotal"] == final["tasksDone"] == 3
    assert {task["state"] for task in final["tasks"]} == {"Completed"}
    assert final["results"]
    assert final["plugins"], "the synced plugin versions are recorded"

    # The runner reports Succeeded first; the operator then mirrors the completed Job.
    def completed() -> dict[str, Any] | None:
        current = status(cluster, "random-integer")
        types = {cond["type"] for cond in current.get("conditions", [])}
        return current if c.ConditionType.COMPLETE in types else None

    final = wait_until(completed, what="the Complete condition")
    assert final["phase"] == c.Phase.SUCCEEDED
    assert condition(final, c.ConditionType.COMPLETE)["status"] == "True"
    assert condition(final, c.ConditionType.PLUGINS_SYNCED)["status"] == "True"


FLOW_SOURCE = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Random from a ConfigMap") as flow:
    seed = Parameter("seed")
    _, rng = pyplugs.call_task("dioptra_builtins.random", "rng", "init_rng", seed=seed)
    pyplugs.call_task("dioptra_builtins.random", "sample", "draw_random_integer", rng=rng)
"""


def test_a_configmap_entry_point_runs_from_the_mounted_file(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "random-flow"},
            "data": {"flow.py": FLOW_SOURCE},
        }
    )
    manifest = example("random-integer", builtins_bucket, s3_server.endpoint_url)
    manifest["metadata"]["name"] = "from-configmap"
    manifest["spec"]["entryPoint"] = {"configMapRef": {"name": "random-flow", "key": "flow.py"}}
    manifest["spec"]["parameters"] = {"seed": 7}
    cluster.create(manifest)

    final = succeeded(cluster, kubelet, "from-configmap")
    assert final["progress"] == "2/2"


def test_plugins_from_a_bundle_are_synced_in_the_job_and_recorded_by_their_digest(
    cluster: Cluster,
    runner_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    pushed = push_bundle(str(BUILTINS), f"s3://{bucket}/team")
    credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
    manifest = example("random-integer", bucket, s3_server.endpoint_url)
    manifest["spec"]["plugins"]["sources"] = [pushed.pointer_uri]
    cluster.create(manifest)

    final = succeeded(cluster, kubelet, "random-integer")
    [recorded] = final["plugins"]
    assert recorded["source"] == pushed.pointer_uri
    assert recorded["bundle"] == f"sha256:{pushed.info.digest}"
    assert recorded["files"] == pushed.info.files


@pytest.fixture()
def failed_sync(
    cluster: Cluster, operator_process: OperatorProcess, kubelet: StandInKubelet
) -> dict[str, Any]:
    """An Experiment whose init container met an S3 server that rejects its credentials."""
    strict = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # enforce credentials
    try:
        credentials_secret(cluster, "s3-credentials", "AKIDWRONG", "wrong-secret")
        cluster.create(example("random-integer", "plugins", strict.endpoint_url))
        final = wait_until(
            lambda: (s := status(cluster, "random-integer")).get("phase") == c.Phase.FAILED and s,
            timeout=60,
            what="the experiment to fail",
        )
    finally:
        strict.stop()
    return dict(final)


def test_bad_s3_credentials_fail_the_plugin_sync(
    failed_sync: dict[str, Any], cluster: Cluster, kubelet: StandInKubelet
) -> None:
    failed = condition(failed_sync, c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.PLUGIN_SYNC_FAILED
    assert condition(failed_sync, c.ConditionType.PLUGINS_SYNCED)["status"] == "False"
    assert "InvalidAccessKeyId" in failed_sync["message"]
    assert "Traceback" not in failed_sync["message"]
    assert "wrong-secret" not in str(failed_sync)
    sync_logs = [
        log for name, log in kubelet.logs_in(cluster.namespace).items() if name.endswith("/sync")
    ]
    assert sync_logs and "Traceback" not in sync_logs[0]


def test_a_failed_plugin_sync_is_announced_by_one_warning_event(
    failed_sync: dict[str, Any], cluster: Cluster, operator_process: OperatorProcess
) -> None:
    def announced() -> list[dict[str, Any]]:
        return [
            e
            for e in cluster.events_for("random-integer", kind=c.KIND)
            if e["reason"] == c.Reason.PLUGIN_SYNC_FAILED
        ]

    wait_until(announced, what="the PluginSyncFailed Event")
    operator_process.stop()  # nothing more can be posted: count what was
    assert [e["type"] for e in announced()] == ["Warning"]


# -- the Prefect API as a native sidecar (no Prefect server configured) -------------------------


@pytest.fixture()
def sidecar_operator(chart_rbac: ChartRbac, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The real operator as the chart runs it by default: no Prefect server, the sidecar on."""
    with operator_running(chart_rbac, {"DIOPTRA_PREFECT_SIDECAR": "true"}, tmp_path) as process:
        yield process


def the_pod(api: Cluster, job: str) -> dict[str, Any]:
    [pod] = api.list("pods", labelSelector=f"job-name={job}")
    return dict(pod)


def container_status(pod: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    return next(s for s in pod["status"][key] if s["name"] == name)


def test_an_experiment_runs_on_the_prefect_api_of_its_sidecar(
    cluster: Cluster,
    sidecar_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    cluster.create(example("random-integer", builtins_bucket, s3_server.endpoint_url))

    final = succeeded(cluster, kubelet, "random-integer")
    assert final["tasksTotal"] == final["tasksDone"] == 3
    assert final["results"]
    pod = the_pod(cluster, "random-integer-g1")
    names = [c_["name"] for c_ in pod["spec"]["initContainers"]]
    assert names == [c.PREFECT_SIDECAR, c.INIT_CONTAINER]
    runner_env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert runner_env[c.PREFECT_SIDECAR_ENV] == "1"
    sidecar_log = kubelet.log_of(cluster.namespace, pod["metadata"]["name"], c.PREFECT_SIDECAR)
    assert "serving the Prefect API" in sidecar_log


def test_the_prefect_sidecar_never_keeps_the_job_running(
    cluster: Cluster,
    sidecar_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    cluster.create(example("random-integer", builtins_bucket, s3_server.endpoint_url))

    job = cluster.wait_for(
        "jobs",
        "random-integer-g1",
        lambda j: (
            j is not None
            and any(
                cond["type"] == "Complete" and cond["status"] == "True"
                for cond in (j.get("status") or {}).get("conditions") or []
            )
        ),
        timeout=150,
        what="the Job to complete",
    )
    assert job["status"]["succeeded"] == 1
    pod = the_pod(cluster, "random-integer-g1")
    assert pod["status"]["phase"] == "Succeeded"
    sidecar = container_status(pod, "initContainerStatuses", c.PREFECT_SIDECAR)
    runner = container_status(pod, "containerStatuses", c.MAIN_CONTAINER)
    assert sidecar["restartCount"] == 0, "it ran through the whole run"
    stopped = sidecar["state"]["terminated"]
    assert stopped["exitCode"] in (0, 143), "stopped by SIGTERM, not killed"
    assert stopped["startedAt"] <= runner["state"]["terminated"]["startedAt"]
    assert stopped["finishedAt"] >= runner["state"]["terminated"]["finishedAt"]


def test_a_prefect_sidecar_that_cannot_start_fails_the_experiment_naming_it(
    cluster: Cluster,
    sidecar_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    # What a runner image without the sidecar's command does (spec.runner.image too old).
    broken = "import sys; sys.exit(\"prefect_warmup: error: invalid choice: 'serve'\")"
    kubelet.configure(
        cluster.namespace,
        NamespaceSettings(
            commands={c.PREFECT_SIDECAR: [sys.executable, "-c", broken]},
            env={c.PREFECT_SIDECAR_TIMEOUT_ENV: "5"},
        ),
    )
    try:
        cluster.create(example("random-integer", builtins_bucket, s3_server.endpoint_url))
        final = wait_until(
            lambda: (
                (s := status(cluster, "random-integer")).get("phase") == c.Phase.FAILED
                and any(
                    cond["type"] == c.ConditionType.FAILED for cond in s.get("conditions") or []
                )
                and s
            ),
            timeout=90,
            what="the experiment to fail",
        )
    finally:
        kubelet.forget(cluster.namespace)
    assert "the Prefect API sidecar did not answer" in final["message"]
    failed = condition(final, c.ConditionType.FAILED)
    assert failed["reason"] == c.Reason.PREFECT_API_FAILED
    assert "invalid choice: 'serve'" in failed["message"]


def test_a_crash_looping_prefect_sidecar_stalls_the_experiment_while_the_runner_waits(
    cluster: Cluster,
    sidecar_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    builtins_bucket: str,
) -> None:
    broken = "import sys; sys.exit('OSError: [Errno 28] No space left on device')"
    kubelet.configure(
        cluster.namespace,
        NamespaceSettings(
            commands={c.PREFECT_SIDECAR: [sys.executable, "-c", broken]},
            env={c.PREFECT_SIDECAR_TIMEOUT_ENV: "600"},  # the runner is still waiting throughout
        ),
    )
    try:
        cluster.create(example("random-integer", builtins_bucket, s3_server.endpoint_url))
        stalled = wait_until(
            lambda: next(
                (
                    cond
                    for cond in status(cluster, "random-integer").get("conditions") or []
                    if cond["type"] == c.ConditionType.STALLED and cond["status"] == "True"
                ),
                None,
            ),
            timeout=90,
            what="the experiment to say it is stalled",
        )
        now = status(cluster, "random-integer")
    finally:
        kubelet.forget(cluster.namespace)
    assert stalled["reason"] == c.Reason.PREFECT_API_FAILED
    assert "No space left on device" in stalled["message"]
    assert "CrashLoopBackOff" in stalled["message"]
    assert now["phase"] not in c.Phase.TERMINAL


BARRIER_PLUGIN = """
import time
from pathlib import Path

from dioptra import pyplugs


@pyplugs.register
def wait_for(path: str) -> str:
    barrier = Path(path)
    while not barrier.exists():  # the test creates it once the Prefect API is back
        time.sleep(0.05)
    return barrier.read_text()


@pyplugs.register
def echo(value: str) -> str:
    return value
"""

BARRIER_FLOW = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Across a Prefect API restart") as flow:
    opened = pyplugs.call_task("barrier", "wait", "wait_for", path=Parameter("barrier"))
    pyplugs.call_task("barrier", "wait", "echo", value=opened)
"""


def kill_container(pod: dict[str, Any], container: str) -> int:
    """SIGKILL every process of one of the stand-in kubelet's containers, as an OOM kill
    would; how many there were."""
    needle = f"{CONTAINER_MARKER}={pod['metadata']['uid']}/{container}\0".encode()
    killed = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours to read
    return killed


def test_a_prefect_sidecar_killed_mid_run_restarts_and_the_run_still_succeeds(
    cluster: Cluster,
    sidecar_operator: OperatorProcess,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put_files(bucket, "barrier", {"__init__.py": "", "wait.py": BARRIER_PLUGIN})
    credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
    barrier = tmp_path / "barrier"
    cluster.create(
        {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "metadata": {"name": "api-restart"},
            "spec": {
                "entryPoint": {"script": BARRIER_FLOW, "flow": "flow"},
                "parameters": {"barrier": str(barrier)},
                "plugins": {
                    "sources": [f"s3://{bucket}/barrier"],
                    "endpointURL": s3_server.endpoint_url,
                    "region": REGION,
                    "credentialsSecretRef": {"name": "s3-credentials"},
                },
            },
        }
    )
    wait_until(
        lambda: any(
            task.get("state") == "Running"
            for task in status(cluster, "api-restart").get("tasks") or []
        ),
        timeout=120,
        what="the first task to run",
    )
    pod = the_pod(cluster, "api-restart-g1")
    assert kill_container(pod, c.PREFECT_SIDECAR) >= 1
    pod_name = pod["metadata"]["name"]
    wait_until(
        lambda: (
            kubelet.log_of(cluster.namespace, pod_name, c.PREFECT_SIDECAR).count(
                "serving the Prefect API"
            )
            >= 2
        ),
        timeout=90,
        what="the restarted sidecar to serve again",
    )
    barrier.write_text("opened")

    final = succeeded(cluster, kubelet, "api-restart")
    assert final["tasksDone"] == 2
    sidecar = container_status(
        the_pod(cluster, "api-restart-g1"), "initContainerStatuses", c.PREFECT_SIDECAR
    )
    assert sidecar["restartCount"] == 1
    assert sidecar["lastState"]["terminated"]["exitCode"] == 137
