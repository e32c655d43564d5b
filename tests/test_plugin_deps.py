"""Plugin packages bring their own Python requirements: installed with uv from a package index
(here a local one the test serves from wheels it builds), once per resolved set, and importable
by the flow's tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dioptra_sync import SyncError, sync_sources
from dioptra_sync.deps import install_plugin_deps, read_record
from dioptra_sync.uv_install import Uv, find_uv, installed_distributions
from support.cluster import ChartRbac, Cluster, OperatorProcess
from support.kubelet import StandInKubelet
from support.package_index import Index, build_wheel
from support.s3 import FAKE_KEY, REGION, S3Server
from test_e2e_experiment import credentials_secret, succeeded

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    """The only index uv sees (no PyPI, no user config), with a uv cache in tmp_path."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "tinylib", "1.0", "VALUE = 'tiny one'\n")
    build_wheel(wheels, "tinylib", "2.0", "VALUE = 'tiny two'\n")
    build_wheel(wheels, "otherlib", "0.3", "def shout(text):\n    return text.upper()\n")
    served = Index(wheels)
    for name in list(os.environ):
        if name.startswith(("UV_", "PIP_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("UV_INDEX_URL", served.url)
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_NO_CONFIG", "1")
    yield served
    served.close()


def plugin_source(tmp_path: Path, files: dict[str, str]) -> Path:
    """A local plugin source folder holding `files` (paths relative to it)."""
    source = tmp_path / "plugins"
    for relative, text in files.items():
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return source


def sync_with_deps(source: Path, dest: Path, cache: Path) -> list[str]:
    """What the init container does: sync the files, then install their requirements."""
    sync_sources([f"{source}/"], dest)
    report = install_plugin_deps(dest, cache)
    return report.paths if report is not None else []


def cache_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_pyproject_dependencies_are_installed_into_an_importable_folder(
    tmp_path: Path, index: Index
) -> None:
    pyproject = '[project]\nname = "acme"\nversion = "1"\ndependencies = ["otherlib>=0.1"]\n'
    source = plugin_source(tmp_path, {"acme/pyproject.toml": pyproject, "acme/ops.py": ""})

    paths = sync_with_deps(source, tmp_path / "dest", tmp_path / "cache")

    assert len(paths) == 1
    assert (Path(paths[0]) / "otherlib" / "__init__.py").is_file()
    assert (read_record(tmp_path / "dest") or {}).get("packages") == ["otherlib==0.3"]


def test_a_second_sync_with_the_same_requirements_installs_nothing(
    tmp_path: Path, index: Index
) -> None:
    source = plugin_source(tmp_path, {"acme/requirements.txt": "tinylib>=1\n"})
    cache = tmp_path / "cache"
    first = sync_with_deps(source, tmp_path / "dest", cache)
    folders = cache_folders(cache)
    downloads = len(index.wheel_downloads())
    (Path(first[0]) / "first-install").touch()  # gone if the folder were installed again

    second = sync_with_deps(source, tmp_path / "dest", cache)

    assert downloads > 0
    assert second == first
    assert cache_folders(cache) == folders
    assert len(index.wheel_downloads()) == downloads
    assert (Path(second[0]) / "first-install").exists()


def test_changed_requirements_get_a_new_folder(tmp_path: Path, index: Index) -> None:
    source = plugin_source(tmp_path, {"acme/requirements.txt": "tinylib==1.0\n"})
    cache = tmp_path / "cache"
    first = sync_with_deps(source, tmp_path / "dest", cache)
    (source / "acme" / "requirements.txt").write_text("tinylib==2.0\n")

    second = sync_with_deps(source, tmp_path / "dest", cache)

    assert second != first
    assert len(cache_folders(cache)) == 2
    assert "tiny two" in (Path(second[0]) / "tinylib" / "__init__.py").read_text()


def test_plugins_sharing_a_library_are_resolved_together_and_a_conflict_names_the_plugin(
    tmp_path: Path, index: Index
) -> None:
    source = plugin_source(
        tmp_path,
        {"acme/requirements.txt": "tinylib==1.0\n", "beta/requirements.txt": "tinylib>=2\n"},
    )
    sync_sources([f"{source}/"], tmp_path / "dest")

    with pytest.raises(SyncError) as caught:
        install_plugin_deps(tmp_path / "dest", tmp_path / "cache")

    message = str(caught.value)
    assert message.startswith(
        "plugin beta: requirement 'tinylib>=2' cannot be installed: "
        "conflicts with the requirements of plugin(s) acme"
    ), message
    assert "\n" not in message


def test_an_unresolvable_requirement_fails_the_sync_command_with_one_line(
    tmp_path: Path, index: Index
) -> None:
    source = plugin_source(
        tmp_path, {"acme/requirements.txt": "tinylib>=1\nnosuchlib>=1  # the culprit\n"}
    )
    cache = ["--deps-cache", str(tmp_path / "cache")]

    done = subprocess.run(
        [DIOPTRA, "plugins", "sync", "--dest", str(tmp_path / "dest"), f"{source}/", *cache],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "dioptra plugins sync: plugin acme: requirement 'nosuchlib>=1' cannot be installed: "
        f"no version found on {index.url}"
    ], done.stderr
    assert cache_folders(tmp_path / "cache") == []


def test_plugins_without_requirements_never_start_or_import_uv(
    tmp_path: Path, index: Index
) -> None:
    source = plugin_source(tmp_path, {"acme/ops.py": "X = 1\n", "acme/README.txt": "no deps"})
    fake = tmp_path / "bin" / "uv"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'uv-started'}\nexit 1\n")
    fake.chmod(0o755)
    probe = (
        "import sys\n"
        "from dioptra_sync.command import main\n"
        f"code = main(['sync', '--dest', {str(tmp_path / 'dest')!r}, {f'{source}/'!r}])\n"
        "print('uv imported' if 'uv' in sys.modules else 'uv not imported')\n"
        "sys.exit(code)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "uv not imported"
    assert not (tmp_path / "uv-started").exists()
    assert not (tmp_path / "dest" / ".dioptra-deps.json").exists()


def test_an_install_that_lost_the_race_keeps_the_winners_folder(
    tmp_path: Path, index: Index
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    uv = Uv(find_uv(), cache, installed_distributions())
    requirements = {"acme": ["tinylib==1.0"]}
    resolution = uv.resolve(requirements)
    winner = cache / "the-folder"
    (winner / "tinylib").mkdir(parents=True)
    (winner / "tinylib" / "__init__.py").write_text("VALUE = 'the winner'\n")

    uv.install(resolution.lines, winner, requirements, resolution)

    assert (winner / "tinylib" / "__init__.py").read_text() == "VALUE = 'the winner'\n"
    assert sorted(p.name for p in cache.iterdir() if p.name != ".uv-cache") == ["the-folder"]


STEPS = """
from dioptra import pyplugs

@pyplugs.register
def tiny_value() -> str:
    import tinylib
    return tinylib.VALUE
"""

FLOW = """
from dioptra import pyplugs
from dioptra.flow import Flow

with Flow("Tiny") as flow:
    pyplugs.call_task("acme", "steps", "tiny_value")
"""


@pytest.mark.usefixtures("prefect_api_url")
def test_a_plugin_imports_its_requirement_inside_a_flow_task(tmp_path: Path, index: Index) -> None:
    plugin_source(
        tmp_path,
        {
            "acme/__init__.py": "",
            "acme/steps.py": STEPS,
            "acme/requirements.txt": "tinylib>=2\n",
        },
    )
    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "tiny"},
        "spec": {"entryPoint": {"script": FLOW}, "plugins": {"sources": ["./plugins/"]}},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    done = subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(tmp_path / "cache"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["results"]["outputs"]
    assert outputs == {"acme.steps.tiny_value": "tiny two"}, outputs
    assert "plugin requirements: 1 from acme; installed 1 package(s)" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_in_a_job_the_init_container_installs_what_the_runner_imports(
    index: Index,
    cluster: Cluster,
    chart_rbac: ChartRbac,
    prefect_api_url: str,
    kubelet: StandInKubelet,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put_files(
        bucket,
        "acme",
        {"__init__.py": b"", "steps.py": STEPS.encode(), "requirements.txt": b"tinylib==1.0\n"},
    )
    credentials_secret(cluster, "s3-credentials", FAKE_KEY, FAKE_KEY)
    settings = {"DIOPTRA_PREFECT_API_URL": prefect_api_url, "DIOPTRA_PIP_INDEX_URL": index.url}
    operator = OperatorProcess(chart_rbac, settings, tmp_path / "operator.log").start()
    try:
        cluster.create(
            {
                "apiVersion": "dioptra.dev/v1alpha1",
                "kind": "Experiment",
                "metadata": {"name": "tiny"},
                "spec": {
                    "entryPoint": {"script": FLOW},
                    "plugins": {
                        "sources": [f"s3://{bucket}/acme"],
                        "endpointURL": s3_server.endpoint_url,
                        "region": REGION,
                        "credentialsSecretRef": {"name": "s3-credentials"},
                    },
                },
            }
        )
        final = succeeded(cluster, kubelet, "tiny", timeout=200)
    finally:
        operator.stop()
    assert final["results"]["outputs"] == {"acme.steps.tiny_value": "tiny one"}
    assert [p for p in index.wheel_downloads() if "tinylib-1.0" in p]


def test_without_uv_a_plugin_with_requirements_fails_with_one_line(
    tmp_path: Path, index: Index
) -> None:
    source = plugin_source(tmp_path, {"acme/requirements.txt": "tinylib>=1\n"})
    probe = (
        "import sys\n"
        "sys.modules['uv'] = None  # as if the uv package were not installed\n"
        "from dioptra_sync.command import main\n"
        f"sys.exit(main(['sync', '--dest', {str(tmp_path / 'dest')!r}, {f'{source}/'!r}]))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no uv there
    )

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "dioptra plugins sync: plugin requirements need uv, which is neither on PATH nor "
        "installed as the `uv` Python package (pip install uv)"
    ], done.stderr


def test_an_install_removes_temp_folders_abandoned_a_day_ago_only(
    tmp_path: Path, index: Index
) -> None:
    cache = tmp_path / "cache"
    abandoned, running = cache / ".dioptra-tmp-evicted", cache / ".dioptra-tmp-other-pod"
    abandoned.mkdir(parents=True)
    running.mkdir()
    two_days_ago = abandoned.stat().st_mtime - 2 * 24 * 3600
    os.utime(abandoned, (two_days_ago, two_days_ago))
    source = plugin_source(tmp_path, {"acme/requirements.txt": "tinylib>=1\n"})

    sync_with_deps(source, tmp_path / "dest", cache)

    assert not abandoned.exists()
    assert running.is_dir()
