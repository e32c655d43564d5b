"""Each run's results are a Prefect table artifact on its flow run, read back from the real
Prefect server the run used (the session's)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from dioptra_runner.prefect_artifacts import artifact_key, result_table
from support.records import dioptra_run, records_experiment, records_workspace

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def session_client() -> Any:
    """A client of the session's Prefect server: Prefect read its settings when first imported,
    perhaps by an earlier test, before the fixture exported the server's URL."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


def artifacts(key: str) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with session_client() as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def flow_run(flow_run_id: Any) -> Any:
    with session_client() as client:
        return client.read_flow_run(flow_run_id)


def test_a_run_publishes_its_results_as_a_table_artifact_on_its_flow_run(
    tmp_path: Path,
) -> None:
    path = records_experiment(records_workspace(tmp_path), "artifact-single")

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 0, done.stderr
    [artifact] = artifacts("dioptra-artifact-single-results")
    assert artifact.type == "table"
    rows = {row["name"]: row["value"] for row in json.loads(artifact.data)}
    assert rows["loss"] == 0.6667  # the last value logged; MLflow keeps every step
    assert rows["accuracy"] == 0.875
    assert rows["recpkg.ops.steps.report.score"] == 2.0
    assert rows["recpkg.ops.steps.report.label"] == "n=4"
    # The flow run it is attached to is this run's (its parameters).
    assert {"n": 4, "rate": 0.5} in flow_run(artifact.flow_run_id).parameters.values()


def test_a_sweep_publishes_a_table_per_point_and_one_for_the_sweep(tmp_path: Path) -> None:
    path = records_experiment(
        records_workspace(tmp_path), "artifact-sweep", sweep={"grid": {"n": [2, 5]}}
    )

    done = dioptra_run(path, "--output", "json")

    assert done.returncode == 0, done.stderr
    points = {p["label"]: p for p in json.loads(done.stdout)["points"]}
    [table] = artifacts("dioptra-artifact-sweep-sweep")
    rows = {row["n"]: row for row in json.loads(table.data)}
    assert rows[2]["phase"] == rows[5]["phase"] == "Succeeded"
    assert rows[5]["accuracy"] == 0.9
    [plot_note] = artifacts("dioptra-artifact-sweep-sweep-plot")
    assert json.loads(done.stdout)["sweep"]["plot"] in plot_note.data
    summary = json.loads(done.stdout)["sweep"]["points"]
    for row in summary:
        [point] = artifacts(f"dioptra-artifact-sweep-{row['key']}-results")
        values = {r["name"]: r["value"] for r in json.loads(point.data)}
        assert values["recpkg.ops.steps.report.label"] == f"n={row['values']['n']}"
        assert point.flow_run_id is not None
    assert set(points) == {"n=2", "n=5"}


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("team-a", "Resizer.v2", "results"), "dioptra-team-a-resizer-v2-results"),
        ((None, "epsilon-sweep", "sweep"), "dioptra-epsilon-sweep-sweep"),
        (("ns", "a__b", None, "x"), "dioptra-ns-a-b-x"),
    ],
)
def test_artifact_keys_hold_only_lowercase_letters_digits_and_dashes(
    parts: tuple[str | None, ...], key: str
) -> None:
    assert artifact_key(*parts) == key


def test_the_table_shows_non_scalar_outputs_as_json() -> None:
    rows = result_table({"metrics": {"m": 1}, "outputs": {"t": [1, 2], "d": {"k": {"x": 1}}}})

    assert rows == [
        {"name": "m", "value": 1},
        {"name": "t", "value": "[1, 2]"},
        {"name": "d.k", "value": '{"x": 1}'},
    ]
