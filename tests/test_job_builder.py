"""The pure Job builder: the operator -> pod contract of docs/architecture.md."""

from __future__ import annotations

import copy
import json
from typing import Any

import dioptra_api as c
import pytest
from dioptra_operator.job_builder import InvalidSpecError, build_job, job_name, spec_hash
from dioptra_operator.settings import Settings

SETTINGS = Settings(
    runner_image="registry.example/runner:1",
    default_s3_endpoint="http://s3.default:9000",
    default_s3_region="eu-west-1",
    default_credentials_secret="default-creds",
    prefect_api_url="http://prefect:4200/api",
)


def experiment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entryPoint": {"module": "acme.flows:flow"},
        "plugins": {
            "sources": ["s3://plugins/builtins", "s3://plugins/custom"],
            "endpointURL": "http://minio:9000",
            "region": "us-east-1",
            "credentialsSecretRef": {"name": "s3-creds"},
        },
    }
    base.update(spec)
    return {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "resizer", "namespace": "lab", "generation": 3, "uid": "u-1"},
        "spec": base,
    }


def containers(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return pod["initContainers"][0], pod["containers"][0]


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_job_name_is_experiment_name_and_generation() -> None:
    assert build_job(experiment(), SETTINGS)["metadata"]["name"] == "resizer-g3"


def test_long_job_names_are_shortened_to_a_dns_label_deterministically() -> None:
    long = "x" * 70
    name = job_name(long, 12)
    assert len(name) <= 63
    assert name.endswith("-g12")
    assert name == job_name(long, 12)
    assert name != job_name("y" * 70, 12)


def test_building_twice_gives_the_same_job() -> None:
    assert build_job(experiment(), SETTINGS) == build_job(experiment(), SETTINGS)


def test_init_container_syncs_every_source_in_order_into_the_plugin_dir() -> None:
    init, _ = containers(build_job(experiment(), SETTINGS))
    assert init["command"] == [
        "dioptra",
        "plugins",
        "sync",
        "--dest",
        "/var/lib/dioptra/plugins",
        "s3://plugins/builtins",
        "s3://plugins/custom",
    ]


def test_s3_credentials_come_only_from_the_secret() -> None:
    init, main = containers(build_job(experiment(), SETTINGS))
    values = env(init)
    assert values["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert values["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3-creds"
    assert "AWS_SECRET_ACCESS_KEY" not in env(main)


def test_secret_key_names_can_be_chosen_in_the_spec() -> None:
    spec = experiment()["spec"]
    spec["plugins"]["credentialsSecretRef"] = {
        "name": "s",
        "accessKeyIdKey": "id",
        "secretAccessKeyKey": "secret",
    }
    init, _ = containers(build_job(experiment(plugins=spec["plugins"]), SETTINGS))
    assert env(init)["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["key"] == "id"
    assert env(init)["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["key"] == "secret"


def test_spec_endpoint_and_region_win_over_chart_defaults() -> None:
    init, _ = containers(build_job(experiment(), SETTINGS))
    assert env(init)["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env(init)["AWS_DEFAULT_REGION"] == "us-east-1"


def test_chart_defaults_fill_in_missing_s3_settings() -> None:
    job = build_job(experiment(plugins={"sources": ["s3://plugins/x"]}), SETTINGS)
    values = env(containers(job)[0])
    assert values["AWS_ENDPOINT_URL"] == "http://s3.default:9000"
    assert values["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert values["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "default-creds"


def test_main_container_runs_the_in_cluster_runner_with_a_snapshot() -> None:
    _, main = containers(build_job(experiment(), SETTINGS))
    assert main["command"] == ["dioptra", "run", "--in-cluster"]
    values = env(main)
    snapshot = json.loads(values["DIOPTRA_EXPERIMENT"])
    assert snapshot["metadata"] == {
        "name": "resizer",
        "namespace": "lab",
        "generation": 3,
        "uid": "u-1",
    }
    assert snapshot["spec"]["entryPoint"] == {"module": "acme.flows:flow"}
    assert values["DIOPTRA_EXPERIMENT_NAME"] == "resizer"
    assert values["DIOPTRA_EXPERIMENT_NAMESPACE"] == "lab"
    assert values["DIOPTRA_PLUGIN_DIR"] == c.PLUGIN_DIR
    assert values["PREFECT_HOME"] == "/tmp/prefect"
    assert values["PREFECT_API_URL"] == "http://prefect:4200/api"


def test_no_prefect_api_url_when_the_chart_sets_none() -> None:
    _, main = containers(build_job(experiment(), Settings()))
    assert "PREFECT_API_URL" not in env(main)


def test_both_containers_mount_the_plugin_and_tmp_volumes() -> None:
    job = build_job(experiment(), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["plugins"] == {"name": "plugins", "emptyDir": {}}
    for container in containers(job):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"/var/lib/dioptra/plugins", "/tmp", "/var/cache/dioptra/deps"}


def test_pod_meets_the_restricted_pod_security_profile() -> None:
    job = build_job(experiment(), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(job):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}


def test_no_sources_means_no_init_container() -> None:
    spec = experiment()
    del spec["spec"]["plugins"]
    assert "initContainers" not in build_job(spec, SETTINGS)["spec"]["template"]["spec"]


def test_job_knobs_come_from_the_spec() -> None:
    job = build_job(
        experiment(
            backoffLimit=2,
            activeDeadlineSeconds=600,
            ttlSecondsAfterFinished=60,
            suspend=True,
            nodeSelector={"gpu": "yes"},
            tolerations=[{"key": "gpu", "operator": "Exists"}],
            serviceAccountName="special",
            runner={"image": "mine:2", "resources": {"limits": {"memory": "1Gi"}}},
        ),
        SETTINGS,
    )
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (2, 600)
    assert (spec["ttlSecondsAfterFinished"], spec["suspend"]) == (60, True)
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "special"
    assert pod["restartPolicy"] == "Never"
    init, main = containers(job)
    assert main["image"] == init["image"] == "mine:2"
    assert main["resources"] == {"limits": {"memory": "1Gi"}}


def test_defaults_are_no_retries_and_the_chart_runner_service_account() -> None:
    job = build_job(experiment(), SETTINGS)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["suspend"] is False
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "dioptra-runner"
    assert containers(job)[1]["image"] == "registry.example/runner:1"


def test_job_and_pods_are_labelled_with_the_experiment() -> None:
    job = build_job(experiment(queueName="team-a"), SETTINGS)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[c.LABEL_EXPERIMENT] == "resizer"
        assert labels[c.LABEL_KUEUE_QUEUE] == "team-a"


def test_no_queue_label_without_a_queue_name() -> None:
    assert c.LABEL_KUEUE_QUEUE not in build_job(experiment(), SETTINGS)["metadata"]["labels"]


def test_config_map_entry_point_is_mounted_read_only() -> None:
    job = build_job(
        experiment(entryPoint={"configMapRef": {"name": "flows", "key": "flow.py"}}), SETTINGS
    )
    _, main = containers(job)
    mount = {m["name"]: m for m in main["volumeMounts"]}["entrypoint"]
    assert mount == {"name": "entrypoint", "mountPath": "/etc/dioptra/entrypoint", "readOnly": True}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["entrypoint"] == {"name": "entrypoint", "configMap": {"name": "flows"}}


def test_extra_runner_env_is_appended_to_the_main_container() -> None:
    job = build_job(experiment(runner={"env": [{"name": "MODE", "value": "fast"}]}), SETTINGS)
    assert env(containers(job)[1])["MODE"] == "fast"


def test_spec_hash_ignores_suspend_only() -> None:
    spec = experiment()["spec"]
    suspended = {**copy.deepcopy(spec), "suspend": True}
    changed = {**copy.deepcopy(spec), "parameters": {"n": 2}}
    assert spec_hash(spec) == spec_hash(suspended)
    assert spec_hash(spec) != spec_hash(changed)


@pytest.mark.parametrize(
    ("entry_point", "fragment"),
    [
        ({}, "exactly one of"),
        ({"module": "a.b:c", "script": "x = 1"}, "found module, script"),
    ],
)
def test_entry_point_must_be_exactly_one_kind(entry_point: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidSpecError, match=fragment):
        build_job(experiment(entryPoint=entry_point), SETTINGS)


@pytest.mark.parametrize("source", ["./plugins", "/abs/plugins", "file:///x", "s3://"])
def test_local_plugin_sources_are_rejected_in_the_cluster(source: str) -> None:
    with pytest.raises(InvalidSpecError, match="s3://"):
        build_job(experiment(plugins={"sources": [source]}), SETTINGS)


def test_integer_quantities_reach_the_job_as_strings() -> None:
    resources = {"limits": {"cpu": 2, "memory": "2Gi"}, "requests": {"cpu": 0.5}}
    init, main = containers(build_job(experiment(runner={"resources": resources}), SETTINGS))
    wanted = {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "0.5"}}
    assert main["resources"] == init["resources"] == wanted


def test_a_failing_container_says_why_in_its_termination_message() -> None:
    init, main = containers(build_job(experiment(), SETTINGS))
    assert init["terminationMessagePolicy"] == main["terminationMessagePolicy"]
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"


# Plugin packages' own requirements: the dependency cache, the package index and its CA.

DEPS_SETTINGS = Settings(
    pip_index_url="https://pypi.internal/simple",
    pip_extra_index_url="https://extra.internal/simple",
    pip_trusted_ca="corp-ca",
    plugin_deps_claim="plugin-deps",
)


def mounts_by_name(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_both_containers_mount_the_deps_cache_at_the_path_the_sync_is_told() -> None:
    job = build_job(experiment(), SETTINGS)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["plugin-deps"] == {"name": "plugin-deps", "emptyDir": {}}
    for container in containers(job):
        assert mounts_by_name(container)["plugin-deps"]["mountPath"] == "/var/cache/dioptra/deps"
        assert env(container)["DIOPTRA_DEPS_CACHE"] == "/var/cache/dioptra/deps"


def test_a_deps_claim_makes_the_cache_a_volume_shared_by_runner_pods() -> None:
    job = build_job(experiment(), DEPS_SETTINGS)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["plugin-deps"] == {
        "name": "plugin-deps",
        "persistentVolumeClaim": {"claimName": "plugin-deps"},
    }


def test_the_package_index_settings_reach_both_containers() -> None:
    for container in containers(build_job(experiment(), DEPS_SETTINGS)):
        assert env(container)["PIP_INDEX_URL"] == "https://pypi.internal/simple"
        assert env(container)["PIP_EXTRA_INDEX_URL"] == "https://extra.internal/simple"


def test_no_index_settings_without_chart_values() -> None:
    for container in containers(build_job(experiment(), SETTINGS)):
        assert not {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT"} & set(env(container))


def test_a_trusted_ca_config_map_is_mounted_read_only_and_given_to_uv_only() -> None:
    job = build_job(experiment(), DEPS_SETTINGS)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["trusted-ca"] == {"name": "trusted-ca", "configMap": {"name": "corp-ca"}}
    for container in containers(job):
        mount = mounts_by_name(container)["trusted-ca"]
        assert mount["readOnly"] is True
        assert env(container)["PIP_CERT"] == f"{mount['mountPath']}/ca.crt"
        # SSL_CERT_FILE would also replace the S3 client's trust store.
        assert "SSL_CERT_FILE" not in env(container)


def test_the_plugin_deps_settings_come_from_the_charts_env() -> None:
    settings = Settings.from_env(
        {
            "DIOPTRA_PIP_INDEX_URL": "https://pypi.internal/simple",
            "DIOPTRA_PIP_EXTRA_INDEX_URL": "",
            "DIOPTRA_PIP_TRUSTED_CA": "corp-ca",
            "DIOPTRA_PIP_TRUSTED_CA_KEY": "bundle.pem",
            "DIOPTRA_PLUGIN_DEPS_CLAIM": "plugin-deps",
        }
    )
    assert settings.pip_index_url == "https://pypi.internal/simple"
    assert settings.pip_extra_index_url is None
    assert settings.pip_trusted_ca == "corp-ca"
    assert settings.pip_trusted_ca_key == "bundle.pem"
    assert settings.plugin_deps_claim == "plugin-deps"


SIDECAR_SETTINGS = Settings(runner_image="registry.example/runner:1", prefect_sidecar=True)


def init_containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["spec"]["template"]["spec"].get("initContainers") or [])


def test_the_prefect_sidecar_is_the_first_init_container_and_restarts_always() -> None:
    sidecar, sync = init_containers(build_job(experiment(), SIDECAR_SETTINGS))
    assert (sidecar["name"], sync["name"]) == (c.PREFECT_SIDECAR, c.INIT_CONTAINER)
    assert sidecar["restartPolicy"] == "Always"
    assert "restartPolicy" not in sync
    assert "startupProbe" not in sidecar, "a startupProbe would hold the sync back"
    assert sidecar["command"][-2:] == ["--listen", "127.0.0.1:4200"]
    assert sidecar["image"] == "registry.example/runner:1"
    assert sidecar["securityContext"] == sync["securityContext"]
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", "memory": "384Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_the_prefect_sidecar_has_a_tmp_volume_of_its_own() -> None:
    job = build_job(experiment(), SIDECAR_SETTINGS)
    pod = job["spec"]["template"]["spec"]
    [sidecar, sync] = pod["initContainers"]
    [mount] = sidecar["volumeMounts"]
    assert mount["mountPath"] == c.TMP_DIR
    others = [m["name"] for each in (sync, *pod["containers"]) for m in each["volumeMounts"]]
    assert mount["name"] not in others
    assert {"name": mount["name"], "emptyDir": {}} in pod["volumes"]


def test_the_runner_is_pointed_at_the_sidecar_and_told_it_may_be_starting() -> None:
    _, main = containers(build_job(experiment(), SIDECAR_SETTINGS))
    assert env(main)["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env(main)[c.PREFECT_SIDECAR_ENV] == "1"


def test_the_sidecar_runs_even_without_plugin_sources() -> None:
    spec = experiment()["spec"]
    del spec["plugins"]
    job = build_job({**experiment(), "spec": spec}, SIDECAR_SETTINGS)
    assert [i["name"] for i in init_containers(job)] == [c.PREFECT_SIDECAR]


def test_no_sidecar_when_it_is_disabled() -> None:
    job = build_job(experiment(), Settings(runner_image="registry.example/runner:1"))
    assert [i["name"] for i in init_containers(job)] == [c.INIT_CONTAINER]
    _, main = containers(job)
    assert "PREFECT_API_URL" not in env(main)
    assert c.PREFECT_SIDECAR_ENV not in env(main)


def test_no_sidecar_when_a_prefect_server_is_configured() -> None:
    settings = Settings(prefect_sidecar=True, prefect_api_url="http://prefect:4200/api")
    job = build_job(experiment(), settings)
    assert [i["name"] for i in init_containers(job)] == [c.INIT_CONTAINER]
    _, main = containers(job)
    assert env(main)["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert c.PREFECT_SIDECAR_ENV not in env(main)


def test_the_sidecar_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DIOPTRA_PREFECT_SIDECAR": "true",
            "DIOPTRA_PREFECT_SIDECAR_CPU_REQUEST": "250m",
            "DIOPTRA_PREFECT_SIDECAR_MEMORY_REQUEST": "300Mi",
            "DIOPTRA_PREFECT_SIDECAR_MEMORY_LIMIT": "600Mi",
        }
    )
    assert settings.prefect_sidecar
    assert (settings.prefect_sidecar_cpu_request, settings.prefect_sidecar_memory_limit) == (
        "250m",
        "600Mi",
    )
    assert not Settings.from_env({"DIOPTRA_PREFECT_SIDECAR": "false"}).prefect_sidecar
    assert not Settings.from_env({}).prefect_sidecar


def _script_of(size: int) -> dict[str, Any]:
    return {"script": "x = 1\n" + "#" * size, "flow": "flow"}


def test_a_spec_the_runner_could_not_receive_in_its_environment_is_refused_naming_the_field() -> (
    None
):
    # A 200 KiB script is within the CRD's limit but past the kernel's per-variable limit.
    with pytest.raises(InvalidSpecError) as refused:
        build_job(experiment(entryPoint=_script_of(200 * 1024)), SETTINGS)
    message = str(refused.value)
    assert "more than the 128 KiB" in message
    assert "largest: spec.entryPoint 200 KiB" in message
    assert "spec.entryPoint.configMapRef" in message


def test_a_sweep_listing_too_many_points_for_the_environment_is_refused() -> None:
    # 1,000 points (the most a sweep may have), each with a 200-character label.
    points = [{"epsilon": i / 1000, "label": f"{i:05d}" + "-" * 195} for i in range(1000)]
    with pytest.raises(InvalidSpecError, match=r"largest: spec\.sweep \d+ KiB"):
        build_job(experiment(sweep={"points": points}), SETTINGS)


def test_a_large_spec_within_the_limit_is_built() -> None:
    job = build_job(experiment(entryPoint=_script_of(100 * 1024)), SETTINGS)
    (main,) = job["spec"]["template"]["spec"]["containers"]
    snapshot = next(e["value"] for e in main["env"] if e["name"] == c.EXPERIMENT_ENV)
    assert len(snapshot) > 100 * 1024


def test_a_sweeps_pace_is_not_part_of_what_its_job_runs() -> None:
    sweep = {"grid": {"epsilon": [0.1, 0.2]}, "maxConcurrent": 1}
    faster = {**sweep, "maxConcurrent": 2}
    assert spec_hash({"sweep": sweep}) == spec_hash({"sweep": faster})
    assert spec_hash({"sweep": sweep}) != spec_hash({"sweep": {**sweep, "grid": {"epsilon": [1]}}})
