"""The runner and operator Dockerfiles: hadolint-clean, multi-stage, non-root, and building a
wheel that carries the CRD (no Docker daemon needed: the build steps are checked one by one)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from support.lock import locked_versions, normalized

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "runner": REPO / "runner-image" / "Dockerfile",
    "operator": REPO / "operator" / "Dockerfile",
}
EXPECTED = {
    "runner": {"extras": "[runner,builtins]", "entrypoint": '["dioptra"]'},
    "operator": {"extras": "[operator]", "entrypoint": '["dioptra-operator"]'},
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped (pure)."""
    joined: list[str] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(current)
            current = ""
    pairs = []
    for line in joined:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes a top-level path (last matching pattern wins; pure)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        core = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, core.rstrip("/")):
            excluded = not negate
    return excluded


def test_hadolint_finds_nothing_in_either_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), *map(str, DOCKERFILES.values())], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_is_multi_stage_on_slim_python_3_11(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in steps


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [args for word, args in final_stage(DOCKERFILES[image]) if word == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_installs_its_extras_and_starts_its_console_script(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert EXPECTED[image]["extras"] in runs
    assert ("ENTRYPOINT", EXPECTED[image]["entrypoint"]) in final_stage(DOCKERFILES[image])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_final_stage_installs_no_compilers_or_packages(image: str) -> None:
    runs = " ".join(args for word, args in final_stage(DOCKERFILES[image]) if word == "RUN")
    for forbidden in ("apt-get", "gcc", "build-essential", "pip install"):
        assert forbidden not in runs


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_carries_oci_labels(image: str) -> None:
    labels = " ".join(args for word, args in final_stage(DOCKERFILES[image]) if word == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_runner_image_sets_the_plugin_dir_and_prefect_home() -> None:
    env = " ".join(args for word, args in final_stage(DOCKERFILES["runner"]) if word == "ENV")
    assert "DIOPTRA_PLUGIN_DIR=/var/lib/dioptra/plugins" in env
    assert "PREFECT_HOME=/tmp/prefect" in env


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(image: str) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, args in instructions(DOCKERFILES[image]):
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), source
            assert not dockerignore_excludes(source.rstrip("/"), patterns), source


def test_the_dockerignore_check_sees_an_excluded_path() -> None:
    assert dockerignore_excludes(".venv", ["*", "!crds/"])
    assert not dockerignore_excludes("crds", ["*", "!crds/"])


@pytest.mark.slow
def test_the_runner_build_steps_produce_a_wheel_carrying_the_crd(tmp_path: Path) -> None:
    """Replays the runner build stage (the Dockerfile's own `cp` of the CRD into a package, then
    the wheel build) and checks that the installed package finds the CRD without the repository."""
    context = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for folder in ("crds", "operator", "runner-image"):
        shutil.copytree(REPO / folder, context / folder, ignore=ignore)
    crd = context / "crds" / "experiments.dioptra.dev.yaml"
    copy_step = re.search(
        r"cp (crds/\S+\.yaml) (\S+)/", (REPO / "runner-image/Dockerfile").read_text()
    )
    assert copy_step, "the runner Dockerfile no longer copies the CRD into a package"
    package_dir = context / copy_step.group(2)
    shutil.copy(context / copy_step.group(1), package_dir)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", "dist", "."],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (wheel,) = (context / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    shipped = site / package_dir.name / crd.name
    assert shipped.read_bytes() == crd.read_bytes()
    probe = "from dioptra_api.schema import find_crd_path; print(find_crd_path())"
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("DIOPTRA_CRD_PATH", None)
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.stdout.strip() == str(shipped), found.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_extras_and_console_script_exist_in_pyproject(image: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = EXPECTED[image]["extras"].strip("[]").split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    script = EXPECTED[image]["entrypoint"].strip('[]"')
    assert script in project["scripts"]


def _engine_chosen(tmp_path: Path, stubs: dict[str, int]) -> subprocess.CompletedProcess[str]:
    """`make engine` with only `stubs` on PATH: each a command that exits with its code."""
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    for name, code in stubs.items():
        stub = stub_bin / name
        stub.write_text(f"#!/bin/sh\nexit {code}\n")
        stub.chmod(0o755)
    # Only these tools and the stubs: the folders they live in may hold a real podman or docker.
    for tool in ("sh", "bash", "make", "echo", "test"):
        found = shutil.which(tool)
        if found and not (stub_bin / tool).exists():
            (stub_bin / tool).symlink_to(found)
    env = {"PATH": str(stub_bin), "HOME": str(tmp_path)}
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), "engine"], capture_output=True, text=True, env=env
    )


def test_make_images_passes_over_a_docker_client_whose_daemon_does_not_answer(
    tmp_path: Path,
) -> None:
    chosen = _engine_chosen(tmp_path, {"docker": 1, "podman": 0})
    assert (chosen.returncode, chosen.stdout.strip()) == (0, "podman")


def test_make_images_uses_docker_when_its_daemon_answers(tmp_path: Path) -> None:
    chosen = _engine_chosen(tmp_path, {"docker": 0, "podman": 0})
    assert chosen.stdout.strip() == "docker"


def test_make_images_without_an_engine_says_why_in_one_line(tmp_path: Path) -> None:
    chosen = _engine_chosen(tmp_path, {"docker": 1})
    assert chosen.returncode != 0
    assert "no container engine answers: docker's daemon is not running" in chosen.stderr


def test_the_test_environment_has_exactly_the_locked_versions() -> None:
    import importlib.metadata

    installed = {
        normalized(dist.metadata["Name"] or ""): dist.version
        for dist in importlib.metadata.distributions()
    }
    pins = locked_versions()
    differing = {
        name: (version, installed[name])
        for name, version in pins.items()
        if name in installed and installed[name] != version
    }
    assert differing == {}
    assert pins["kubernetes"] == installed["kubernetes"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_installs_the_locked_versions(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    assert 'pip install --no-cache-dir -c constraints.txt "$(ls /wheels/*.whl)' in text


def test_the_lock_settles_the_date_library_that_prefect_and_kubernetes_disagree_on() -> None:
    major = int(locked_versions()["python-dateutil"].split(".")[0])
    assert major < 3  # prefect and botocore need <3 (kubernetes 37.0.2 would need >=3)
