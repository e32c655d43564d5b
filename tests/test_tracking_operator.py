"""MLflow tracking on the operator's side: the chart value, the runner's env, the condition."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import dioptra_api as c
import yaml
from dioptra_api.conditions import find_condition
from dioptra_operator.job_builder import build_job
from dioptra_operator.settings import Settings
from dioptra_operator.status_mapping import Observation, status_patch, tracking_conditions
from test_chart import CHART, find_helm, operator_env
from test_job_builder import experiment

NOW = "2026-01-01T00:00:00Z"


def helm_template(values: dict[str, Any], folder: Path) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with these values (helm's homes in a temp folder)."""
    env = dict(os.environ)
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(folder / name.lower())
    values_file = folder / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [find_helm(), "template", "dioptra", str(CHART), "--values", str(values_file)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def runner_env(settings: Settings) -> dict[str, Any]:
    job = build_job(experiment(), settings)
    main = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}


def test_without_a_tracking_uri_the_runner_gets_no_mlflow_variables() -> None:
    env = runner_env(Settings())

    assert not [name for name in env if name.startswith("MLFLOW_")]


def test_the_tracking_uri_and_the_runner_image_reach_the_runner() -> None:
    env = runner_env(Settings(mlflow_tracking_uri="http://mlflow.mlflow:5000", runner_image="r:1"))

    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    assert env[c.RUNNER_IMAGE_ENV] == "r:1"


def test_mlflow_credentials_come_only_from_the_secret() -> None:
    settings = Settings(mlflow_tracking_uri="http://m:5000", mlflow_credentials_secret="mlflow")

    env = runner_env(settings)

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[key] == {"secretKeyRef": {"name": "mlflow", "key": key, "optional": True}}


def test_the_chart_value_becomes_the_operator_setting(tmp_path: Path) -> None:
    values = {"tracking": {"mlflowTrackingUri": "http://mlflow.ml:5000", "credentialsSecret": "m"}}

    rendered = helm_template(values, tmp_path)

    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    settings = Settings.from_env(operator_env(docs))
    assert settings.mlflow_tracking_uri == "http://mlflow.ml:5000"
    assert settings.mlflow_credentials_secret == "m"


def test_the_chart_refuses_credentials_in_the_tracking_uri(tmp_path: Path) -> None:
    values = {"tracking": {"mlflowTrackingUri": "http://u:p@mlflow:5000"}}

    rendered = helm_template(values, tmp_path)

    assert rendered.returncode != 0
    assert "mlflowTrackingUri" in rendered.stderr


def test_a_tracking_error_sets_the_tracking_failed_condition() -> None:
    status = {"tracking": {"mlflowTrackingUri": "http://m", "error": "ConnectionError: refused"}}

    [condition] = tracking_conditions(status, 2)

    assert condition["type"] == c.ConditionType.TRACKING_FAILED
    assert condition["status"] == "True"
    assert condition["reason"] == c.Reason.MLFLOW_UNAVAILABLE
    assert condition["message"].endswith("ConnectionError: refused")
    assert condition["observedGeneration"] == 2


def test_a_sweep_points_tracking_error_sets_the_condition_too() -> None:
    status = {
        "sweepPoints": {
            "a1": {"tracking": {"mlflowRunId": "r1"}},
            "b2": {"tracking": {"error": "HTTP 503"}},
        }
    }

    [condition] = tracking_conditions(status)

    assert condition["status"] == "True"
    assert "HTTP 503" in condition["message"]


def test_without_tracking_reports_there_is_no_tracking_condition() -> None:
    assert tracking_conditions({"results": {}}) == []


def test_a_tracked_run_adds_no_condition_but_clears_an_earlier_failure() -> None:
    tracked = {"tracking": {"mlflowRunId": "r1"}}
    failed = {"tracking": {"error": "refused"}}

    first, _ = status_patch(tracked, Observation(phase=c.Phase.RUNNING), NOW)
    after_failure, _ = status_patch(failed, Observation(phase=c.Phase.RUNNING), NOW)
    cleared, _ = status_patch(
        {**tracked, "conditions": after_failure["conditions"]},
        Observation(phase=c.Phase.RUNNING),
        NOW,
    )

    assert "conditions" not in first
    assert find_condition(after_failure["conditions"], "TrackingFailed")["status"] == "True"
    assert find_condition(cleared["conditions"], "TrackingFailed")["status"] == "False"
