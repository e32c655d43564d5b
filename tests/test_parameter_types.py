"""Parameter values are checked against the plugins' annotations before any task runs."""

from __future__ import annotations

from typing import Any

import numpy as np
from dioptra import pyplugs
from dioptra.flow import Flow, Parameter
from dioptra_runner.parameter_types import type_problems


def make_items(n: int, scale: float = 1.0) -> list[float]:
    return [i * scale for i in range(n)]


def resize(image: np.ndarray, size: tuple[int, int]) -> Any:
    return image


def label(name: str) -> str:
    return name


for function in (make_items, resize, label):
    function.__module__ = "typed_pkg.ops"

REGISTRY = pyplugs.Registry.of(make_items, resize, label)


def problems_for(values: dict[str, Any]) -> list[str]:
    with pyplugs.using(REGISTRY), Flow("typed") as flow:
        pyplugs.call_task(
            "typed_pkg", "ops", "make_items", n=Parameter("n"), scale=Parameter("scale", 2.0)
        )
        pyplugs.call_task(
            "typed_pkg", "ops", "resize", image=Parameter("image", None), size=Parameter("size")
        )
        pyplugs.call_task("typed_pkg", "ops", "label", name=Parameter("name", "x"))
    return type_problems(flow.tasks, values)


GOOD = {"n": 3, "scale": 2.0, "image": None, "size": [28, 28], "name": "x"}


def test_values_that_fit_their_annotations_raise_no_problem() -> None:
    assert problems_for(GOOD) == []


def test_a_string_for_an_int_names_the_parameter_the_type_and_the_task() -> None:
    assert problems_for({**GOOD, "n": "ten"}) == [
        "parameter 'n' = \"ten\" is not an int, the type of argument 'n' of task "
        "typed_pkg.ops.make_items"
    ]


def test_an_int_for_a_float_and_a_list_for_a_tuple_fit() -> None:
    assert problems_for({**GOOD, "scale": 2, "size": [1, 2]}) == []


def test_a_list_of_the_wrong_length_for_a_tuple_does_not_fit() -> None:
    (problem,) = problems_for({**GOOD, "size": [1, 2, 3]})
    assert problem.startswith("parameter 'size' = [1, 2, 3] is not a tuple[int, int]")


def test_a_number_for_a_string_does_not_fit() -> None:
    (problem,) = problems_for({**GOOD, "name": 7})
    assert "parameter 'name' = 7 is not a str" in problem


def test_every_mismatch_is_listed() -> None:
    assert len(problems_for({**GOOD, "n": "ten", "name": 7})) == 2


def test_an_annotation_pydantic_cannot_check_is_skipped() -> None:
    assert problems_for({**GOOD, "image": "not an array"}) == []


def test_a_long_value_is_shortened_in_the_message() -> None:
    (problem,) = problems_for({**GOOD, "n": "x" * 10_000})
    assert len(problem) < 200
