"""Check a run's parameter values against the plugins' type annotations before any task runs.

A value of the wrong type (``n: "ten"`` for ``def make_items(n: int)``) would otherwise fail
in the middle of the run, after the tasks before it, with an error from inside the plugin
that does not name the parameter. Annotations are read with pydantic (Prefect's own
dependency): a value fits when pydantic accepts it strictly, or, for anything but a string,
when it accepts it at all (a YAML list for a ``tuple[int, int]``, an int for a ``float``).
Annotations pydantic cannot check (arbitrary classes, unresolvable names) are skipped.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dioptra.graph import Parameter, TaskNode

__all__ = ["type_problems"]

_SHOWN_VALUE_LIMIT = 60


def type_problems(tasks: Iterable[TaskNode], values: Mapping[str, Any]) -> list[str]:
    """One line per parameter whose value does not fit an argument it is passed to."""
    problems: list[str] = []
    for node in tasks:
        for argument, parameter, hint in _parameter_arguments(node):
            if parameter.name not in values:
                continue
            value = values[parameter.name]
            if not _fits(value, hint):
                problems.append(
                    f"parameter {parameter.name!r} = {_shown(value)} is not "
                    f"{_type_name(hint)}, the type of argument {argument!r} of task {node.task}"
                )
    return list(dict.fromkeys(problems))


def _parameter_arguments(node: TaskNode) -> list[tuple[str, Parameter, Any]]:
    """(argument name, Parameter, annotation) for each argument given a Parameter as is."""
    if node.func is None:
        return []
    try:
        signature = inspect.signature(node.func)
        hints = typing.get_type_hints(node.func)
        bound = signature.bind_partial(*node.args, **node.kwargs)
    except Exception:  # unresolvable annotations, or a call the flow's own checks report
        return []
    return [
        (argument, value, hints[argument])
        for argument, value in bound.arguments.items()
        if isinstance(value, Parameter) and argument in hints
    ]


def _fits(value: Any, hint: Any) -> bool:
    try:
        validate = _validator(hint)
    except TypeError:  # an annotation that cannot be a cache key
        validate = _validator.__wrapped__(hint)
    if validate is None:
        return True
    if validate(value, strict=True):
        return True
    return not isinstance(value, str) and validate(value, strict=False)


@functools.lru_cache(maxsize=256)
def _validator(hint: Any) -> Callable[..., bool] | None:
    """A ``(value, strict) -> bool`` for the annotation, or None when pydantic cannot tell."""
    import pydantic

    try:
        adapter = pydantic.TypeAdapter(hint)
    except Exception:
        return None

    def validate(value: Any, *, strict: bool) -> bool:
        try:
            adapter.validate_python(value, strict=strict)
        except pydantic.ValidationError:
            return False
        except Exception:  # a validator of the plugin's own that cannot run here
            return True
        return True

    return validate


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return "an " + hint.__name__ if hint.__name__[0] in "aeiou" else "a " + hint.__name__
    return f"a {hint}".replace("typing.", "")


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_LIMIT else text[: _SHOWN_VALUE_LIMIT - 3] + "..."
