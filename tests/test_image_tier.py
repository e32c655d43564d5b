"""The image tier never passes silently: a machine that cannot run it is told why, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import podman


def _stub_podman(tmp_path: Path, script: str) -> None:
    stub = tmp_path / "podman"
    stub.write_text(f"#!/bin/sh\n{script}\n")
    stub.chmod(0o755)


def test_a_podman_that_cannot_start_containers_is_named_with_its_own_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_podman(
        tmp_path,
        'case "$1" in image) exit 0;; run) echo "Error: crun: setrlimit: not permitted" >&2;'
        " exit 126;; esac",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    reason = podman.unusable_reason()
    assert reason == "podman cannot run a container here: Error: crun: setrlimit: not permitted"


def test_images_not_built_are_named_with_the_command_that_builds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_podman(tmp_path, "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    reason = podman.unusable_reason() or ""
    assert reason.startswith(f"{podman.RUNNER_IMAGE}, {podman.OPERATOR_IMAGE} not built")
    assert reason.endswith("run bash tests/images/build.sh")


def test_a_machine_without_podman_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "podman is not installed" in (podman.unusable_reason() or "")
