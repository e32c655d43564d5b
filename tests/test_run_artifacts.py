"""`dioptra run` with an artifact store: outputs kept by digest, reused when cached, taken as
inputs by a later run; a missing input or a failing store stops the run with its own reason."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.s3 import S3Server

pytestmark = pytest.mark.usefixtures("prefect_api_url")

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))

STEPS = """
from dioptra import pyplugs

@pyplugs.register
def make_items(n: int) -> dict:
    return {"items": list(range(n))}

@pyplugs.register
def total(data: dict) -> int:
    return sum(data["items"])
"""

FLOWS = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Totals") as flow:
    n = Parameter("n")
    items = pyplugs.call_task("artpkg.ops", "steps", "make_items", n=n)
    pyplugs.call_task("artpkg.ops", "steps", "total", data=items)

with Flow("Total of given items") as given:
    data = Parameter("data")
    pyplugs.call_task("artpkg.ops", "steps", "total", data=data)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    package = tmp_path / "plugins" / "artpkg"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "steps.py").write_text(STEPS)
    (package / "flows.py").write_text(FLOWS)
    return tmp_path


def run(
    folder: Path, flow: str, env: dict[str, str] | None = None, **spec: Any
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "totals"},
        "spec": {
            "entryPoint": {"module": f"artpkg.flows:{flow}"},
            "plugins": {"sources": ["./plugins/"]},
            **spec,
        },
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(folder / "cache"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        cwd=folder,
    )
    return done, json.loads(done.stdout)


def test_every_output_goes_to_the_s3_store_named_by_its_sha256(
    workspace: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    store = f"s3://{s3_bucket}/runs"
    artifacts = {"store": store, "endpointURL": s3_server.endpoint_url}

    done, document = run(
        workspace, "flow", s3_server.env(), parameters={"n": 4}, artifacts=artifacts
    )

    assert done.returncode == 0, done.stderr
    entries = document["artifacts"]
    assert [(e["task"], e["format"]) for e in entries] == [
        ("artpkg.ops.steps.make_items", "json"),
        ("artpkg.ops.steps.total", "json"),
    ]
    client = s3_server.client()
    for entry in entries:
        key = entry["uri"].removeprefix(f"s3://{s3_bucket}/")
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert entry["uri"] == f"{store}/objects/sha256/{entry['sha256']}.json"
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert entry["bytes"] == len(body)


def test_a_second_cached_run_reuses_every_output(workspace: Path) -> None:
    run(workspace, "flow", parameters={"n": 3}, cache=True)

    done, document = run(workspace, "flow", parameters={"n": 3}, cache=True)

    assert done.returncode == 0, done.stderr
    assert [t["state"] for t in document["tasks"]] == ["Cached", "Cached"]
    assert document["tasksCached"] == 2
    assert document["results"]["outputs"]["artpkg.ops.steps.total"] == 3
    assert all(e["cached"] for e in document["artifacts"])


def test_an_artifact_of_an_earlier_run_is_a_parameter_of_the_next(workspace: Path) -> None:
    store = {"store": str(workspace / "store")}
    _, first = run(workspace, "flow", parameters={"n": 5}, artifacts=store)
    items = next(e["uri"] for e in first["artifacts"] if e["task"].endswith("make_items"))

    done, document = run(workspace, "given", parameters={"data": {"artifact": items}})

    assert done.returncode == 0, done.stderr
    assert document["results"]["outputs"]["artpkg.ops.steps.total"] == 10


def test_a_missing_artifact_stops_the_run_before_any_task_naming_parameter_and_uri(
    workspace: Path,
) -> None:
    uri = (workspace / "store" / "objects" / "sha256" / f"{'0' * 64}.json").as_uri()

    done, document = run(workspace, "given", parameters={"data": {"artifact": uri}})

    assert done.returncode == 2
    assert document["error"]["reason"] == "InvalidArtifact"
    assert document["message"] == f"parameter 'data': artifact {uri} does not exist"
    assert "tasks" not in document
    assert f"dioptra run: parameter 'data': artifact {uri} does not exist\n" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_corrupt_artifact_is_refused_before_any_task(workspace: Path) -> None:
    store = workspace / "store" / "objects" / "sha256"
    store.mkdir(parents=True)
    forged = store / f"{hashlib.sha256(b'[1]').hexdigest()}.json"
    forged.write_text('{"items": [1, 2]}')

    done, document = run(workspace, "given", parameters={"data": {"artifact": forged.as_uri()}})

    assert done.returncode == 2
    assert document["error"]["reason"] == "InvalidArtifact"
    assert "is corrupt (its content does not match the digest in its name)" in document["message"]


def test_an_unreachable_store_fails_the_run_naming_the_store_not_the_credentials(
    workspace: Path,
) -> None:
    secrets = {"AWS_ACCESS_KEY_ID": "AKIDHIDDEN", "AWS_SECRET_ACCESS_KEY": "hidden-secret"}
    artifacts = {"store": "s3://art/runs", "endpointURL": "http://127.0.0.1:9"}

    done, document = run(
        workspace,
        "flow",
        {**secrets, "AWS_MAX_ATTEMPTS": "1"},
        parameters={"n": 2},
        artifacts=artifacts,
    )

    assert done.returncode == 1
    assert document["error"]["reason"] == "ArtifactStoreFailed"
    assert "artifact store s3://art/runs: cannot reach the S3 endpoint" in document["message"]
    log = Path(document["log"]).read_text()
    for text in (done.stdout, done.stderr, log):
        assert "hidden-secret" not in text and "AKIDHIDDEN" not in text


def _setup_for(spec: dict[str, Any], cached_step: bool, tmp_path: Path) -> Any:
    from types import SimpleNamespace

    from dioptra_runner.execution import _artifact_setup

    flow = SimpleNamespace(tasks=[SimpleNamespace(options=SimpleNamespace(cache=cached_step))])
    args = SimpleNamespace(in_cluster=True, cache_dir=tmp_path / "cache", plugin_cache=None)
    return _artifact_setup(SimpleNamespace(spec=spec), flow, args)  # type: ignore[arg-type]


def test_a_pod_caching_a_task_without_a_store_warns_that_its_outputs_stay_in_the_pod(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin's call_task(cache=True) is invisible to the operator: the runner says it.
    monkeypatch.delenv("DIOPTRA_ARTIFACT_STORE", raising=False)
    with caplog.at_level("WARNING", logger="dioptra.run"):
        setup = _setup_for({}, cached_step=True, tmp_path=tmp_path)
    assert setup.store is not None  # the run still caches, in the pod's own folder
    [warning] = [r.getMessage() for r in caplog.records if "artifact store" in r.getMessage()]
    assert "stay in this pod" in warning and "spec.artifacts.store" in warning


def test_a_pod_caching_into_a_named_store_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIOPTRA_ARTIFACT_STORE", raising=False)
    spec = {"cache": True, "artifacts": {"store": str(tmp_path / "store")}}
    with caplog.at_level("WARNING", logger="dioptra.run"):
        _setup_for(spec, cached_step=False, tmp_path=tmp_path)
    assert not [r for r in caplog.records if "stay in this pod" in r.getMessage()]
