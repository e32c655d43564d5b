"""A sweep's summary in the cluster, the pure parts: when its Job exists, its manifest, and what
`dioptra sweep summarize` takes from the status.

The whole path (points, summary Job, MLflow parent run, plot in the store) runs on the real
control plane in tests/test_e2e_sweep_summary.py.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import dioptra_api as c
import pytest
from dioptra_api.sweep import cluster_points
from dioptra_operator.settings import Settings
from dioptra_operator.sweep_summary import (
    SUMMARY_COMMAND,
    build_summary_job,
    is_summary,
    summary_destination,
    summary_failed_condition,
    summary_job_name,
    summary_record,
    wants_summary_job,
)
from dioptra_runner import sweep_summary as runner_summary

P = c.Phase
SWEEP = {"grid": {"epsilon": [0.1, 0.2]}, "maxConcurrent": 2}
BARE = Settings(runner_image="registry.example/runner:1")
TRACKED = Settings(
    runner_image="registry.example/runner:1",
    mlflow_tracking_uri="http://mlflow.example:5000",
    mlflow_credentials_secret="mlflow-credentials",
)
STORED = Settings(
    runner_image="registry.example/runner:1",
    artifacts_store="s3://results/dioptra",
    default_s3_endpoint="http://s3.example:9000",
    default_credentials_secret="s3-credentials",
)
JOB = "sweep-g1-summary"


def experiment(name: str = "sweep", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "lab", "generation": 1, "uid": "u-1"},
        "spec": {
            "entryPoint": {"module": "acme.flows:flow"},
            "parameters": {"epsilon": 0.0, "seed": 7},
            "sweep": SWEEP,
            **spec,
        },
    }


# -- when the Job exists --------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [P.PENDING, P.RUNNING, P.SUSPENDED])
def test_no_summary_before_every_point_is_done(phase: str) -> None:
    assert not wants_summary_job(phase, {}, TRACKED, None, JOB)


@pytest.mark.parametrize("phase", [P.SUCCEEDED, P.FAILED])
def test_a_finished_sweep_with_a_destination_gets_its_summary(phase: str) -> None:
    assert wants_summary_job(phase, {}, TRACKED, None, JOB)
    assert wants_summary_job(phase, {}, STORED, None, JOB)
    assert wants_summary_job(phase, {"artifacts": {"store": "s3://own/x"}}, BARE, None, JOB)


def test_no_summary_without_mlflow_or_a_store() -> None:
    assert summary_destination({}, BARE) is None
    assert not wants_summary_job(P.SUCCEEDED, {}, BARE, None, JOB)
    assert summary_destination({}, TRACKED) == "mlflow"
    assert summary_destination({"artifacts": {"store": "s3://b"}}, TRACKED) == "mlflow+store"


def test_a_recorded_summary_is_never_created_twice() -> None:
    recorded = {"job": JOB, "phase": P.SUCCEEDED}
    assert not wants_summary_job(P.SUCCEEDED, {}, TRACKED, recorded, JOB)
    # Its Job removed by its TTL: the record still says it ran.
    assert not wants_summary_job(P.SUCCEEDED, {}, TRACKED, {"job": JOB}, JOB)
    # A record of another run's summary does not count for this run.
    assert wants_summary_job(P.SUCCEEDED, {}, TRACKED, {"job": "sweep-g0-summary"}, JOB)


def test_the_summary_job_name_is_deterministic_and_a_dns_label() -> None:
    assert summary_job_name("sweep", 3) == "sweep-g3-summary"
    long = "x" * 70
    name = summary_job_name(long, 12)
    assert len(name) <= c.DNS_LABEL_MAX and name.endswith("-g12-summary")
    assert name == summary_job_name(long, 12) != summary_job_name("x" * 71, 12)


# -- its manifest ---------------------------------------------------------------------------------


def _env(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def test_the_manifest_runs_the_summary_command_as_the_points_do() -> None:
    exp = experiment(runner={"env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]})
    job = build_summary_job(exp, TRACKED, 1)
    assert job["metadata"]["name"] == JOB
    assert is_summary(job["metadata"]["labels"])
    assert job["metadata"]["labels"][c.LABEL_EXPERIMENT] == "sweep"
    assert job["metadata"]["labels"][c.LABEL_GENERATION] == "1"
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dioptra-runner"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "initContainers" not in pod, "no plugin sync, no Prefect sidecar"
    (container,) = pod["containers"]
    assert container["command"] == SUMMARY_COMMAND
    assert container["image"] == "registry.example/runner:1"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = _env(job)
    snapshot = json.loads(env[c.EXPERIMENT_ENV]["value"])
    assert snapshot["spec"]["sweep"] == SWEEP and snapshot["metadata"]["uid"] == "u-1"
    assert env[c.NAME_ENV]["value"] == "sweep" and env[c.NAMESPACE_ENV]["value"] == "lab"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.example:5000"
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert "PREFECT_API_URL" not in env


def test_the_manifest_names_credentials_only_by_secret_key_ref() -> None:
    job = build_summary_job(experiment(), Settings(**{**TRACKED.__dict__, **_store()}), 1)
    env = _env(job)
    assert env[c.ARTIFACT_STORE_ENV]["value"] == "s3://results/dioptra"
    for name in (
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        f"{c.ARTIFACTS_ENV_PREFIX}ACCESS_KEY_ID",
        f"{c.ARTIFACTS_ENV_PREFIX}SECRET_ACCESS_KEY",
    ):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"]
    literal = [item for item in env.values() if "value" in item]
    assert not any(
        word in item["name"] for item in literal for word in ("SECRET", "PASSWORD", "TOKEN")
    )


def _store() -> dict[str, Any]:
    return {
        "artifacts_store": STORED.artifacts_store,
        "default_s3_endpoint": STORED.default_s3_endpoint,
        "default_credentials_secret": STORED.default_credentials_secret,
    }


def test_the_manifest_asks_little_whatever_the_points_need() -> None:
    exp = experiment(
        runner={"resources": {"limits": {"nvidia.com/gpu": 1}}},
        nodeSelector={"pool": "gpu"},
        ttlSecondsAfterFinished=60,
        queueName="team-a",
    )
    job = build_summary_job(exp, TRACKED, 4)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert c.LABEL_KUEUE_QUEUE not in job["metadata"]["labels"]
    assert job["metadata"]["name"] == "sweep-g4-summary"


# -- what the operator records of it -------------------------------------------------------------


def _job(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    return {"metadata": {"name": JOB}, "status": {"conditions": conditions}}


def _pod(phase: str, message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if phase == "Failed":
        state = {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}]},
    }


def test_the_record_follows_the_summary_job() -> None:
    assert summary_record(JOB, None, [], None) == {"job": JOB, "phase": P.PENDING}
    assert summary_record(JOB, _job(None), [], {"job": JOB})["phase"] == P.PENDING
    assert summary_record(JOB, _job(None), [_pod("Running")], None)["phase"] == P.RUNNING
    assert summary_record(JOB, _job("Complete"), [], None) == {"job": JOB, "phase": P.SUCCEEDED}
    failed = summary_record(
        JOB, _job("Failed"), [_pod("Failed", "dioptra sweep summarize: MLflow: refused")], None
    )
    assert failed["phase"] == P.FAILED
    assert "dioptra sweep summarize: MLflow: refused" in failed["message"]


def test_a_finished_record_outlives_its_job_and_a_vanished_job_fails() -> None:
    done = {"job": JOB, "phase": P.SUCCEEDED}
    assert summary_record(JOB, None, [], done) == done
    gone = summary_record(JOB, None, [], {"job": JOB, "phase": P.RUNNING})
    assert gone["phase"] == P.FAILED and JOB in gone["message"]


def test_a_failed_summary_is_a_tracking_condition_with_one_line() -> None:
    record = {"job": JOB, "phase": P.FAILED, "message": "exit code 1: line one\nthe last line"}
    condition = summary_failed_condition(record, 2)
    assert condition is not None
    assert condition["type"] == c.ConditionType.TRACKING_FAILED
    assert condition["status"] == "True"
    assert condition["reason"] == c.Reason.SWEEP_SUMMARY_FAILED
    assert condition["message"].endswith(": the last line") and JOB in condition["message"]
    assert condition["observedGeneration"] == 2
    assert summary_failed_condition({"job": JOB, "phase": P.SUCCEEDED}) is None
    assert summary_failed_condition(None) is None


# -- the command's pure parts --------------------------------------------------------------------


POINTS = cluster_points(SWEEP, {"epsilon": 0.0, "seed": 7})


def _entry(phase: str, results: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"job": "sweep-g1", "jobPhase": phase, "phase": phase}
    entry["results"] = results
    if run_id:
        entry["tracking"] = {"mlflowRunId": run_id}
    return entry


def _status(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "jobName": "sweep-g1",
        "sweepPoints": {p.key: e for p, e in zip(POINTS, entries, strict=True)},
    }


def test_plot_input_takes_each_points_values_and_logged_metrics() -> None:
    status = _status(
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.9, "epsilon": 0.1}, "outputs": {"a": 3}}),
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.7}}),
    )
    entries = runner_summary.point_entries(POINTS, status)
    assert runner_summary.plot_input(POINTS, entries) == [
        ({"epsilon": 0.1}, {"accuracy": 0.9}),
        ({"epsilon": 0.2}, {"accuracy": 0.7}),
    ]


def test_plot_input_falls_back_to_numeric_outputs_and_leaves_failed_points_a_gap() -> None:
    status = _status(
        _entry(P.SUCCEEDED, {"outputs": {"score": {"clean": 0.9, "label": "x"}, "n": 4}}),
        _entry(P.FAILED, {"outputs": {"n": 5}}),
    )
    entries = runner_summary.point_entries(POINTS, status)
    assert runner_summary.plot_input(POINTS, entries) == [
        ({"epsilon": 0.1}, {"clean": 0.9, "n": 4.0}),
        ({"epsilon": 0.2}, {}),
    ]


def test_entries_of_another_run_are_left_out() -> None:
    status = _status(_entry(P.SUCCEEDED, {}), {**_entry(P.SUCCEEDED, {}), "job": "sweep-g0"})
    assert list(runner_summary.point_entries(POINTS, status)) == [POINTS[0].key]


def test_the_children_and_the_parent_parameters_come_from_the_points() -> None:
    status = _status(_entry(P.SUCCEEDED, {}, "run-a"), _entry(P.FAILED, {}))
    entries = runner_summary.point_entries(POINTS, status)
    assert runner_summary.child_run_ids(POINTS, entries) == {POINTS[0].key: "run-a"}
    assert runner_summary.parent_parameters(POINTS) == {"seed": 7, "sweep.epsilon": [0.1, 0.2]}
    assert runner_summary.sweep_outcome(POINTS, entries) == (
        P.FAILED,
        "1/2 sweep points succeeded",
    )


def test_summarize_stores_the_png_by_digest_and_reports_the_mlflow_parent(tmp_path: Any) -> None:
    snapshot = experiment(artifacts={"store": str(tmp_path / "store")})
    status = _status(
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.9}}, "run-a"),
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.8}}, "run-b"),
    )
    seen: dict[str, Any] = {}

    def render(name: str, points: Any) -> bytes:
        seen["render"] = (name, points)
        return b"\x89PNG fake"

    def track(snapshot: Any, parameters: Any, children: Any, **kwargs: Any) -> dict[str, Any]:
        seen["track"] = (parameters, children, kwargs)
        return {"mlflowRunId": "parent", "mlflowChildRunIds": children}

    summary = runner_summary.summarize(
        snapshot, status, {"MLFLOW_TRACKING_URI": "http://m"}, render=render, track=track
    )
    assert not summary.errors
    assert seen["render"][0] == "sweep"
    _, children, kwargs = seen["track"]
    assert children == {POINTS[0].key: "run-a", POINTS[1].key: "run-b"}
    assert kwargs["plot"] == ("sweep.png", b"\x89PNG fake")
    assert kwargs["phase"] == P.SUCCEEDED
    fields = summary.status()
    plot = fields["sweep"]["plot"]
    import hashlib

    digest = hashlib.sha256(b"\x89PNG fake").hexdigest()
    assert plot["sha256"] == digest and plot["bytes"] == 9 and plot["format"] == "png"
    assert plot["uri"].endswith(f"/objects/sha256/{digest}.png")
    assert (tmp_path / "store" / "objects" / "sha256" / f"{digest}.png").read_bytes() == (
        b"\x89PNG fake"
    )
    assert plot["mlflowArtifactUri"] == "runs:/parent/plots/sweep.png"
    assert fields["tracking"]["mlflowRunId"] == "parent"


def test_summarize_without_mlflow_never_tracks_and_a_tracking_error_is_one_error() -> None:
    status = _status(_entry(P.SUCCEEDED, {"metrics": {"a": 1}}), _entry(P.SUCCEEDED, {}))

    def track(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("not without MLFLOW_TRACKING_URI")

    quiet = runner_summary.summarize(
        experiment(), status, {}, render=lambda *_: b"png", track=track
    )
    assert quiet.tracking is None and not quiet.errors
    assert quiet.plot is not None and quiet.status() == {}, "a plot with nowhere to be kept"

    def failing(*_: Any, **__: Any) -> dict[str, Any]:
        return {"mlflowTrackingUri": "http://m", "error": "ConnectionError: refused"}

    loud = runner_summary.summarize(
        experiment(),
        status,
        {"MLFLOW_TRACKING_URI": "http://m"},
        render=lambda *_: None,
        track=failing,
    )
    assert loud.errors == ["MLflow: ConnectionError: refused"]
    assert loud.status() == {
        "tracking": {"mlflowTrackingUri": "http://m", "error": "ConnectionError: refused"}
    }


def test_summarize_draws_a_real_png_into_a_local_store(tmp_path: Any) -> None:
    status = _status(
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.9}}),
        _entry(P.SUCCEEDED, {"metrics": {"accuracy": 0.8}}),
    )
    snapshot = experiment(artifacts={"store": str(tmp_path / "store")})

    summary = runner_summary.summarize(snapshot, status, {})

    assert not summary.errors and summary.plot is not None
    stored = tmp_path / "store" / "objects" / "sha256" / f"{summary.plot.sha256}.png"
    assert stored.read_bytes().startswith(b"\x89PNG")
    assert summary.status()["sweep"]["plot"]["uri"] == stored.as_uri()


def test_an_unusable_store_is_one_error_and_the_rest_goes_on(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    snapshot = experiment(artifacts={"store": str(blocker / "store")})
    status = _status(_entry(P.SUCCEEDED, {"metrics": {"a": 1}}), _entry(P.SUCCEEDED, {}))

    summary = runner_summary.summarize(snapshot, status, {}, render=lambda *_: b"png")

    assert len(summary.errors) == 1 and "artifact store" in summary.errors[0]
    assert summary.plot is not None and summary.plot.uri is None


def test_the_command_without_a_snapshot_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(c.EXPERIMENT_ENV, raising=False)

    code = runner_summary.summarize_command(argparse.Namespace(in_cluster=True))

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("dioptra sweep summarize: ")
    assert "Traceback" not in err


def test_the_parent_run_adopts_the_points_runs_as_children(tmp_path: Any) -> None:
    """MLflow's own client on a SQLite store (no server needed to see the tags and artifact)."""
    from dioptra_runner.tracking import track_sweep_parent
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        "lab/sweep", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    children = {}
    for point in POINTS:
        run = client.create_run(experiment_id, run_name=point.label)
        client.set_terminated(run.info.run_id)
        children[point.key] = run.info.run_id
    snapshot = experiment()
    env = {"MLFLOW_TRACKING_URI": uri, c.EXPERIMENT_ENV: json.dumps(snapshot)}

    tracking = track_sweep_parent(
        snapshot,
        runner_summary.parent_parameters(POINTS),
        children,
        phase=P.SUCCEEDED,
        message="2/2 sweep points succeeded",
        sweep_points=2,
        plot=("sweep.png", b"\x89PNG fake"),
        environ=env,
    )

    assert tracking is not None and "error" not in tracking, tracking
    assert tracking["mlflowExperimentId"] == experiment_id
    assert tracking["mlflowChildRunIds"] == children
    parent = client.get_run(tracking["mlflowRunId"])
    assert parent.data.params == {"seed": "7", "sweep.epsilon": "[0.1,0.2]"}
    assert parent.data.tags["dioptra.experiment.uid"] == "u-1"
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/sweep.png"
    ]
    for run_id in children.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
