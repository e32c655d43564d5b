"""Benchmark: `make demo`'s run against its plugin functions called directly (issue 17).

The demo runs examples/adversarial-digits.yaml (11 plugin calls: load, train, attack, defend,
measure). Here its plugins come from the local `runner-image/dioptra_builtins` folder instead
of S3, so only the run is measured. Each sample is a new process; medians of REPEATS, on a
fresh "laptop" (cache folder, pre-migrated PREFECT_HOME) per repeat:

  direct        `python -c` importing the builtins and calling the same 11 functions in the
                flow's order: what the work costs with no orchestration at all
  bare floor    `python -c` running an empty bare Prefect `@flow` against the shared local
                server (already up): the least any Prefect flow process pays
  dioptra       a second `dioptra run` of the Experiment: shared local server, forked by the
                warm runner (the laptop default)
  dioptra cold  the same with DIOPTRA_WARM_RUNNER=off: it imports Prefect itself

Goal (issue 17): dioptra within 1.5x of direct + bare floor.

Usage: .venv/bin/python bench/bench_demo.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOAL = 1.5

DIRECT = """
from dioptra_builtins.attacks.evasion import fgsm
from dioptra_builtins.datasets.digits import load_digits_split
from dioptra_builtins.defenses.preprocessing import feature_squeezing
from dioptra_builtins.estimators.sklearn_models import train_logistic_regression
from dioptra_builtins.metrics.distance import perturbation_distance
from dioptra_builtins.metrics.performance import accuracy
from dioptra_builtins.metrics.report import summarize

data = load_digits_split(test_size=0.25, seed=0)
classifier = train_logistic_regression(data=data, seed=0)
adversarial = fgsm(classifier=classifier, data=data, eps=0.2)
squeezed_clean = feature_squeezing(data=data, bit_depth=1)
squeezed_adversarial = feature_squeezing(data=adversarial, bit_depth=1)
print(summarize(
    epsilon=0.2,
    clean_accuracy=accuracy(classifier=classifier, data=data),
    adversarial_accuracy=accuracy(classifier=classifier, data=adversarial),
    defended_accuracy=accuracy(classifier=classifier, data=squeezed_adversarial),
    defended_clean_accuracy=accuracy(classifier=classifier, data=squeezed_clean),
    mean_linf_perturbation=perturbation_distance(clean=data, adversarial=adversarial, norm="linf"),
))
"""

BARE = """
from prefect import flow

@flow(persist_result=False)
def empty() -> None:
    pass

empty()
"""


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command[:3])} failed ({done.returncode}):\n{tail}")
    return elapsed


def write_experiment(folder: Path) -> Path:
    document = yaml.safe_load((REPO / "examples" / "adversarial-digits.yaml").read_text())
    document["spec"]["plugins"] = {"sources": [str(REPO / "runner-image" / "dioptra_builtins")]}
    path = folder / "adversarial-digits.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def wait_for_warm_runner(cache: Path, timeout: float = 120.0) -> None:
    from dioptra_runner.warm_runner import read_state

    deadline = time.monotonic() + timeout
    while read_state(cache / "prefect-server") is None and time.monotonic() < deadline:
        time.sleep(0.05)


def one_laptop(root: Path, template: Path) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="laptop-", dir=root))
    experiment = write_experiment(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DIOPTRA_"))}
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        DIOPTRA_CACHE_DIR=str(work / "cache"),
        DIOPTRA_PREFECT_TEMPLATE=str(template),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users' Pythons cache bytecode
    dioptra = [str(BIN / "dioptra"), "run", str(experiment)]
    sample: dict[str, float] = {}
    try:
        timed(dioptra, env, work)  # the first run: starts the server, leaves the warm runner
        wait_for_warm_runner(work / "cache")
        sample["dioptra"] = timed(dioptra, env, work)
        sample["dioptra cold"] = timed(dioptra, {**env, "DIOPTRA_WARM_RUNNER": "off"}, work)
        from dioptra_runner.local_server import Paths, read_record

        record = read_record(Paths(work / "cache" / "prefect-server"))
        assert record is not None, "the shared local server is not running"
        bare_env = {**env, "PREFECT_API_URL": record.api_url}
        sample["bare floor"] = timed([sys.executable, "-c", BARE], bare_env, work)
        sample["direct"] = timed([sys.executable, "-c", DIRECT], env, work)
    finally:
        subprocess.run(
            [str(BIN / "dioptra"), "server", "stop"], env=env, capture_output=True, check=False
        )
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    from dioptra_runner.prefect_warmup import build_template

    template = root / "template"
    build_template(template)
    samples = [one_laptop(root, template) for _ in range(args.repeats)]
    median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    budget = median["direct"] + median["bare floor"]
    load = os.getloadavg()[0]
    print(f"\nthe demo's run, wall seconds (medians of {args.repeats}; load avg {load:.1f})")
    print(f"{'direct':>8} {'bare floor':>11} {'dioptra':>8} {'dioptra cold':>13} "
          f"{'dioptra / (direct + floor)':>27}")  # fmt: skip
    print(f"{median['direct']:>8.2f} {median['bare floor']:>11.2f} {median['dioptra']:>8.2f} "
          f"{median['dioptra cold']:>13.2f} {median['dioptra'] / budget:>26.2f}x"
          f"  (goal <= {GOAL}x)")  # fmt: skip


if __name__ == "__main__":
    main()
