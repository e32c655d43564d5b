"""The operator's console script says in one line what is missing when it has no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OPERATOR = str(Path(sys.executable).with_name("dioptra-operator"))


def run_operator(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script outside any pod, with `home` as HOME (no ~/.kube/config) and `env`."""
    environment = {
        k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")
    }
    environment.update(HOME=str(home), **env)
    return subprocess.run(
        [OPERATOR, "--standalone", "--all-namespaces"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def test_without_a_cluster_the_operator_says_so_in_one_line(tmp_path: Path) -> None:
    done = run_operator(tmp_path)

    assert done.returncode == 2
    assert done.stderr.startswith("dioptra-operator: no Kubernetes API to talk to")
    assert "set KUBECONFIG" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_a_kubeconfig_that_does_not_parse_is_named_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n")
    done = run_operator(tmp_path, KUBECONFIG=str(broken))

    assert done.returncode == 2
    assert f"{broken} is not valid YAML" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
