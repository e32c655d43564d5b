"""A small plugin tree and Experiment files for the tests of what a run records (Prefect
artifacts, MLflow tracking, sweep plots), and ``dioptra run`` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DIOPTRA", "dioptra_run", "records_experiment", "records_workspace"]

DIOPTRA = str(Path(sys.executable).with_name("dioptra"))

STEPS = '''
from dioptra import pyplugs
from dioptra import metrics

@pyplugs.register
def train(n: int, rate: float = 0.5) -> dict:
    """Log a loss per epoch (with its step) and an accuracy (without one)."""
    for epoch in range(3):
        metrics.log_metric("loss", round(n * rate / (epoch + 1), 4), step=epoch)
    metrics.log_metric("accuracy", round(1 - rate / n, 4))
    return {"n": n, "score": n * rate}

@pyplugs.register
def report(model: dict) -> dict:
    return {"score": model["score"], "label": f"n={model['n']}"}
'''

FLOWS = """
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter

with Flow("Records") as flow:
    n = Parameter("n")
    rate = Parameter("rate")
    model = pyplugs.call_task("recpkg.ops", "steps", "train", n=n, rate=rate)
    pyplugs.call_task("recpkg.ops", "steps", "report", model=model)
"""


def records_workspace(folder: Path) -> Path:
    package = folder / "plugins" / "recpkg"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "steps.py").write_text(STEPS)
    (package / "flows.py").write_text(FLOWS)
    return folder


def records_experiment(folder: Path, name: str, **spec: Any) -> Path:
    document = {
        "apiVersion": "dioptra.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "entryPoint": {"module": "recpkg.flows:flow"},
            "parameters": {"n": 4, "rate": 0.5},
            "plugins": {"sources": ["./plugins/"]},
            **spec,
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def dioptra_run(
    path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    if not (env or {}).get("MLFLOW_TRACKING_URI"):
        environ.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [DIOPTRA, "run", str(path), "--plugin-cache", str(path.parent / "cache"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        cwd=path.parent,
    )
