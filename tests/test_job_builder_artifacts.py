"""The runner container learns its artifact store: URI, endpoint, region, credentials by ref."""

from __future__ import annotations

from typing import Any

import dioptra_api as c
import jsonschema
from dioptra_api.schema import crd_version_schema, load_crd, to_json_schema
from dioptra_operator.job_builder import build_job
from dioptra_operator.settings import Settings

SETTINGS = Settings(
    runner_image="registry.example/runner:1",
    default_s3_endpoint="http://s3.default:9000",
    default_s3_region="eu-west-1",
    default_credentials_secret="default-creds",
)
PLUGINS = {
    "sources": ["s3://plugins/builtins"],
    "endpointURL": "http://minio:9000",
    "region": "us-east-1",
    "credentialsSecretRef": {"name": "s3-creds"},
}


def experiment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "resizer", "namespace": "lab", "generation": 3, "uid": "u-1"},
        "spec": {"entryPoint": {"module": "acme.flows:flow"}, "plugins": PLUGINS, **spec},
    }


def runner_env(job: dict[str, Any]) -> dict[str, Any]:
    main = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}


def test_without_a_store_the_runner_gets_no_artifact_settings() -> None:
    env = runner_env(build_job(experiment(), SETTINGS))

    assert not [name for name in env if name.startswith(("DIOPTRA_ARTIFACT", "AWS_"))]


def test_a_spec_store_uses_the_plugins_endpoint_region_and_secret() -> None:
    env = runner_env(build_job(experiment(artifacts={"store": "s3://art/runs"}), SETTINGS))

    assert env[c.ARTIFACT_STORE_ENV] == "s3://art/runs"
    assert env["DIOPTRA_ARTIFACTS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["DIOPTRA_ARTIFACTS_DEFAULT_REGION"] == "us-east-1"
    assert env["DIOPTRA_ARTIFACTS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["DIOPTRA_ARTIFACTS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }


def test_the_stores_own_endpoint_region_and_secret_win_over_the_plugins() -> None:
    artifacts = {
        "store": "s3://art/runs",
        "endpointURL": "http://artifacts:9000",
        "region": "eu-central-1",
        "credentialsSecretRef": {"name": "art-creds", "accessKeyIdKey": "id"},
    }
    env = runner_env(build_job(experiment(artifacts=artifacts), SETTINGS))

    assert env["DIOPTRA_ARTIFACTS_ENDPOINT_URL"] == "http://artifacts:9000"
    assert env["DIOPTRA_ARTIFACTS_DEFAULT_REGION"] == "eu-central-1"
    assert env["DIOPTRA_ARTIFACTS_ACCESS_KEY_ID"]["secretKeyRef"] == {
        "name": "art-creds",
        "key": "id",
    }


def test_the_charts_store_and_s3_defaults_apply_when_the_spec_names_none() -> None:
    settings = Settings(**{**SETTINGS.__dict__, "artifacts_store": "s3://chart-art/exp"})
    spec = experiment()
    spec["spec"]["plugins"] = {"sources": ["s3://plugins/builtins"]}

    env = runner_env(build_job(spec, settings))

    assert env[c.ARTIFACT_STORE_ENV] == "s3://chart-art/exp"
    assert env["DIOPTRA_ARTIFACTS_ENDPOINT_URL"] == "http://s3.default:9000"
    assert env["DIOPTRA_ARTIFACTS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "default-creds"


def test_store_credentials_reach_the_runner_only_by_secret_reference() -> None:
    job = build_job(experiment(artifacts={"store": "s3://art/runs"}), SETTINGS)
    main = job["spec"]["template"]["spec"]["containers"][0]

    secrets = [e for e in main["env"] if "KEY" in e["name"] or "TOKEN" in e["name"]]

    assert secrets
    assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in secrets)


def test_the_operator_reads_the_charts_store_from_its_environment() -> None:
    settings = Settings.from_env({"DIOPTRA_DEFAULT_ARTIFACTS_STORE": "s3://chart-art/exp"})

    assert settings.artifacts_store == "s3://chart-art/exp"


def test_the_schema_accepts_artifacts_cache_and_a_cached_step() -> None:
    spec = experiment(artifacts={"store": "s3://art/runs"}, cache=True)["spec"]
    spec["entryPoint"] = {
        "taskGraph": {"steps": [{"name": "a", "task": "acme.ops.steps.make", "cache": True}]}
    }

    schema = to_json_schema(crd_version_schema(load_crd()))
    jsonschema.Draft202012Validator(schema).validate({**experiment(), "spec": spec})
