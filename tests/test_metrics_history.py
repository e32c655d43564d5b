"""`log_metric` keeps every value in order, with its step, for MLflow (`recording()`)."""

from __future__ import annotations

import pytest
from dioptra import metrics


def test_every_value_is_recorded_in_order_with_its_step() -> None:
    with metrics.collecting() as latest, metrics.recording() as history:
        metrics.log_metric("loss", 0.9, step=0)
        metrics.log_metric("loss", 0.4, step=1)
        metrics.log_metric("accuracy", 0.8)

    assert latest == {"loss": 0.4, "accuracy": 0.8}
    assert [(v.name, v.value, v.step) for v in history] == [
        ("loss", 0.9, 0),
        ("loss", 0.4, 1),
        ("accuracy", 0.8, None),
    ]
    assert all(v.timestamp_ms > 0 for v in history)


@pytest.mark.parametrize("step", [1.5, "2", True])
def test_a_step_must_be_an_integer(step: object) -> None:
    with pytest.raises(TypeError, match="step must be an integer"):
        metrics.log_metric("loss", 0.1, step=step)  # type: ignore[arg-type]


def test_outside_a_recording_nothing_is_kept_but_the_latest_value() -> None:
    with metrics.collecting() as latest:
        metrics.log_metric("loss", 0.9, step=3)

    assert latest == {"loss": 0.9}
