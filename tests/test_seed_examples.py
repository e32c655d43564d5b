"""The seed's two examples work on Prefect 3 with at most their import line changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("prefect_server_env")

# The seed's Image Resizer, with `from prefect import Flow, Parameter` changed to our import
# (and the seed's typos fixed: closing parentheses, `training_dir` -> `data_dir`).
IMAGE_RESIZER = """
from dioptra.flow import Flow, Parameter
from dioptra import pyplugs

with Flow("Image Resizer") as flow:
    data_dir, image_size = Parameter("data_dir"), Parameter("image_size")
    resize_output = pyplugs.call_task(
        "dioptra_builtins.data",    # namespace.package import path
        "images",                      # module to import
        "resize",                      # function to call
        data_dir=data_dir,             # Named argument of resize()
        image_size=image_size,         # Named argument of resize()
    )
    rotated_image = pyplugs.call_task( # Task won't run until resize_output is available
        "dioptra_builtins.data",    # namespace.package import path
        "images",                      # module to import
        "rotate",                      # function to call
        data=resize_output,            # Named argument of rotate()
        image_size=image_size,         # Named argument of rotate()
    )
"""


def test_the_image_resizer_flow_resizes_then_rotates_real_images(tmp_path: Path) -> None:
    from dioptra import pyplugs

    images = pyplugs.call(
        "dioptra_builtins.data",
        "images",
        "make_sample_images",
        output_dir=str(tmp_path / "images"),
        count=3,
        size=[40, 30],
    )
    namespace: dict[str, object] = {}
    exec(compile(IMAGE_RESIZER, "<seed>", "exec"), namespace)
    flow = namespace["flow"]

    state = flow.run(parameters={"data_dir": images, "image_size": [28, 20]})  # type: ignore[attr-defined]

    assert state.is_successful(), state.message
    resized = state.result[namespace["resize_output"]].result
    rotated = state.result[namespace["rotated_image"]].result
    resized_files = sorted(Path(resized).iterdir())
    rotated_files = sorted(Path(rotated).iterdir())
    assert len(resized_files) == len(rotated_files) == 3
    assert {Image.open(f).size for f in resized_files} == {(28, 20)}
    # rotate() keeps the requested size (a quarter turn is fitted back into image_size).
    assert {Image.open(f).size for f in rotated_files} == {(28, 20)}
    for before, after in zip(resized_files, rotated_files, strict=True):
        assert Image.open(before).tobytes() != Image.open(after).tobytes()


def test_draw_random_integer_is_registered_and_callable_directly() -> None:
    from dioptra import pyplugs

    seed, rng = pyplugs.call("dioptra_builtins.random", "rng", "init_rng", seed=7)
    value = pyplugs.call(
        "dioptra_builtins.random", "sample", "draw_random_integer", rng=rng, low=0, high=100
    )

    assert seed == 7
    assert value == int(np.random.default_rng(7).integers(0, 100))  # the seeded draw
    assert "draw_random_integer" in pyplugs.funcs("dioptra_builtins.random", "sample")


def test_draw_random_integer_runs_as_a_task_and_is_reproducible() -> None:
    from dioptra import pyplugs
    from dioptra.flow import Flow, Parameter

    with Flow("Random Integer") as flow:
        seed = Parameter("seed")
        _, rng = pyplugs.call_task("dioptra_builtins.random", "rng", "init_rng", seed=seed)
        value = pyplugs.call_task(
            "dioptra_builtins.random", "sample", "draw_random_integer", rng=rng, low=0, high=1000
        )

    first = flow.run(parameters={"seed": 42})
    second = flow.run(parameters={"seed": 42})

    assert first.is_successful(), first.message
    assert first[value].result == second[value].result
    assert first[value].result == int(np.random.default_rng(42).integers(0, 1000))
