"""Expand ``spec.sweep`` into run points and summarize their outcomes (pure functions, no I/O).

A sweep runs the same entry point once per point::

    sweep:
      grid: {epsilon: [0.05, 0.1, 0.2], seed: [0, 1]}   # the cartesian product, 6 points
      # or: points: [{epsilon: 0.05}, {epsilon: 0.1, seed: 3}]
      maxConcurrent: 2

API, shared by ``dioptra run --parallel N`` and the operator (one Indexed Job per sweep):

- ``expand_sweep(sweep, base_parameters, *, known_parameters=None) -> list[SweepPoint]``:
  every point in a stable order (grid: first parameter varies slowest; points: as written).
  ``SweepPoint.parameters`` is ``base_parameters`` overlaid with the point's values;
  ``values`` is the point's own values; ``label`` reads ``epsilon=0.05,seed=0``; ``key`` is a
  10-character ``[a-z0-9]`` digest of the point's values, the same for the same values in any
  sweep, for ``status.sweepPoints.<key>``. Raises :class:`SweepError` listing every
  problem with its path (``spec.sweep.grid.epsilon: ...``): no or both of grid/points, empty
  grid or lists, non-list grid values, empty or non-mapping points, duplicate points (their
  reports would share a key), more than :data:`MAX_POINTS` points, names outside
  ``known_parameters`` when the caller knows the flow's parameters, a bad ``maxConcurrent``.
- ``cluster_points(sweep, base_parameters) -> list[SweepPoint]``: the points in the order of
  the cluster's Indexed Job (index i runs point i): a grid's parameters taken in sorted name
  order, so that the operator and every Pod's runner agree whatever order their copy has.
- ``point_for_index(sweep, base_parameters, index) -> SweepPoint``: the point one Pod of that
  Job runs (``index`` as ``JOB_COMPLETION_INDEX`` gives it); SweepError in one line when the
  index is missing or out of range, or the sweep does not expand.
- ``max_concurrent(sweep) -> int``: how many points may run at once (default 1).
- ``summarize_points(points, outcomes, *, max_rows=100) -> dict``: a status summary small
  enough for ``status.sweep``: ``{"total", "counts": {phase: n}, "points": [row...],
  "omitted"}``. ``outcomes`` maps a point's index (or key) to ``{"phase", "results",
  "message"}``; a point without an outcome is Pending. Each row holds the point's index, key,
  values, phase, its headline results (scalars only, at most :data:`MAX_HEADLINES`) and a short
  message. Rows beyond ``max_rows`` are left out and counted in ``omitted``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dioptra_api.vocabulary import Phase

__all__ = [
    "MAX_HEADLINES",
    "MAX_POINTS",
    "SweepError",
    "SweepPoint",
    "cluster_points",
    "expand_sweep",
    "max_concurrent",
    "point_for_index",
    "summarize_points",
]

BASE = "spec.sweep"
MAX_POINTS = 1000
MAX_HEADLINES = 8
_PHASES = (Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED)
_FIELDS = ("grid", "points", "maxConcurrent")
_MESSAGE_CHARS = 200
_STRING_CHARS = 64


class SweepError(ValueError):
    """The sweep cannot be expanded; ``problems`` holds one line per problem, with its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep."""

    index: int
    values: dict[str, Any]
    parameters: dict[str, Any] = field(repr=False)
    label: str
    key: str


def expand_sweep(
    sweep: Mapping[str, Any],
    base_parameters: Mapping[str, Any],
    *,
    known_parameters: Collection[str] | None = None,
) -> list[SweepPoint]:
    """Every point of the sweep, or SweepError naming each problem with its path."""
    problems: list[str] = []
    if not isinstance(sweep, Mapping):
        raise SweepError([f"{BASE}: must be a mapping with grid or points, got {_kind(sweep)}"])
    problems.extend(
        f"{BASE}.{key}: unknown field (a sweep has: grid, points, maxConcurrent)"
        for key in sweep
        if key not in _FIELDS
    )
    _check_max_concurrent(sweep, problems)
    if ("grid" in sweep) == ("points" in sweep):
        problems.append(f"{BASE}: set exactly one of grid or points")
        raise SweepError(problems)
    if "grid" in sweep:
        combos = _grid(sweep["grid"], known_parameters, problems)
    else:
        combos = _points(sweep["points"], known_parameters, problems)
    if problems:
        raise SweepError(problems)
    points = [_point(i, values, base_parameters) for i, values in enumerate(combos)]
    _check_duplicates(points, "grid" in sweep, problems)
    if problems:
        raise SweepError(problems)
    return points


def cluster_points(
    sweep: Mapping[str, Any], base_parameters: Mapping[str, Any]
) -> list[SweepPoint]:
    """Every point, in the order of the sweep's Indexed Job: index ``i`` runs point ``i``.

    The API server returns an object's keys sorted and the Job's snapshot is written sorted,
    but a grid's order decides the points' order: taking its parameters in sorted name order
    here makes the operator's index and each runner's the same point by construction.
    """
    if isinstance(sweep, Mapping) and isinstance(sweep.get("grid"), Mapping):
        sweep = {**sweep, "grid": dict(sorted(sweep["grid"].items(), key=lambda kv: str(kv[0])))}
    return expand_sweep(sweep, base_parameters)


def point_for_index(
    sweep: Mapping[str, Any], base_parameters: Mapping[str, Any], index: str | int | None
) -> SweepPoint:
    """The point that the Pod with completion index ``index`` runs (``cluster_points``).

    SweepError with a single line when the index is not a number in range or the sweep does
    not expand: it becomes that Pod's (and so that point's) failure message.
    """
    text = str(index).strip() if index is not None else ""
    if not text.isdigit():
        raise SweepError(
            [
                f"{BASE}: this Pod runs no sweep point: JOB_COMPLETION_INDEX is "
                f"{text or 'unset'!r} (a sweep runs as an Indexed Job, which sets it)"
            ]
        )
    try:
        points = cluster_points(sweep, base_parameters)
    except SweepError as error:
        raise SweepError(["; ".join(error.problems)]) from None
    number = int(text)
    if number >= len(points):
        raise SweepError(
            [
                f"{BASE}: completion index {number} is out of range: the sweep has "
                f"{len(points)} point{'s' if len(points) != 1 else ''} "
                f"(indexes 0-{len(points) - 1})"
            ]
        )
    return points[number]


def max_concurrent(sweep: Mapping[str, Any]) -> int:
    """How many points may run at the same time (``maxConcurrent``, default 1)."""
    problems: list[str] = []
    _check_max_concurrent(sweep, problems)
    if problems:
        raise SweepError(problems)
    return int(sweep.get("maxConcurrent") or 1)


def summarize_points(
    points: Sequence[SweepPoint],
    outcomes: Mapping[Any, Mapping[str, Any]],
    *,
    max_rows: int = 100,
) -> dict[str, Any]:
    """Counts by phase and a capped table of points with their headline results."""
    counts = dict.fromkeys(_PHASES, 0)
    rows: list[dict[str, Any]] = []
    for point in points:
        outcome = outcomes.get(point.index) or outcomes.get(point.key) or {}
        phase = str(outcome.get("phase") or Phase.PENDING)
        counts[phase] = counts.get(phase, 0) + 1
        if len(rows) >= max_rows:
            continue
        row: dict[str, Any] = {
            "index": point.index,
            "key": point.key,
            "values": point.values,
            "phase": phase,
        }
        headline = _headline(outcome.get("results"))
        if headline:
            row["results"] = headline
        message = str(outcome.get("message") or "")
        if message:
            row["message"] = message.splitlines()[0][:_MESSAGE_CHARS]
        rows.append(row)
    return {
        "total": len(points),
        "counts": counts,
        "points": rows,
        "omitted": max(0, len(points) - len(rows)),
    }


# -- expansion ----------------------------------------------------------------------------------


def _grid(grid: Any, known: Collection[str] | None, problems: list[str]) -> list[dict[str, Any]]:
    path = f"{BASE}.grid"
    if not isinstance(grid, Mapping) or not grid:
        problems.append(f"{path}: must be a non-empty mapping of parameter -> list of values")
        return []
    axes: list[tuple[str, list[Any]]] = []
    for name, values in grid.items():
        name_path = f"{path}.{name}"
        _check_name(name, name_path, known, problems)
        if not isinstance(values, list) or not values:
            problems.append(f"{name_path}: must be a non-empty list of values, got {_kind(values)}")
            continue
        axes.append((str(name), values))
    size = math.prod(len(values) for _, values in axes) if axes else 0
    if size > MAX_POINTS:
        sizes = " x ".join(str(len(values)) for _, values in axes)
        problems.append(f"{path}: {sizes} = {size} points, more than the limit of {MAX_POINTS}")
    if problems:
        return []
    names = [name for name, _ in axes]
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))
    ]


def _points(
    points: Any, known: Collection[str] | None, problems: list[str]
) -> list[dict[str, Any]]:
    path = f"{BASE}.points"
    if not isinstance(points, list) or not points:
        problems.append(f"{path}: must be a non-empty list of parameter mappings")
        return []
    if len(points) > MAX_POINTS:
        problems.append(f"{path}: {len(points)} points, more than the limit of {MAX_POINTS}")
        return []
    for index, point in enumerate(points):
        if not isinstance(point, Mapping) or not point:
            problems.append(
                f"{path}[{index}]: must be a non-empty mapping of parameter -> value, "
                f"got {_kind(point)}"
            )
            continue
        for name in point:
            _check_name(name, f"{path}[{index}].{name}", known, problems)
    return [] if problems else [dict(point) for point in points]


def _check_name(name: Any, path: str, known: Collection[str] | None, problems: list[str]) -> None:
    if not isinstance(name, str) or not name:
        problems.append(f"{path}: parameter names must be non-empty strings")
    elif known is not None and name not in known:
        listing = ", ".join(sorted(known)) or "none"
        problems.append(f"{path}: unknown parameter {name!r} (the flow declares: {listing})")


def _check_max_concurrent(sweep: Mapping[str, Any], problems: list[str]) -> None:
    value = sweep.get("maxConcurrent") if isinstance(sweep, Mapping) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"{BASE}.maxConcurrent: must be an integer >= 1, got {value!r}")


def _check_duplicates(points: list[SweepPoint], grid: bool, problems: list[str]) -> None:
    first: dict[str, int] = {}
    for point in points:
        if point.key in first:
            where = f"{BASE}.grid" if grid else f"{BASE}.points[{point.index}]"
            problems.append(
                f"{where}: point {point.label} is listed twice (also point {first[point.key]}); "
                "each point must differ"
            )
        else:
            first[point.key] = point.index


def _point(index: int, values: dict[str, Any], base: Mapping[str, Any]) -> SweepPoint:
    return SweepPoint(
        index=index,
        values=values,
        parameters={**base, **values},
        label=",".join(f"{name}={_show(value)}" for name, value in values.items()),
        key=_key(values),
    )


def _key(values: Mapping[str, Any]) -> str:
    """A digest of the values: the same point always gets the same key, in any sweep."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=repr)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:10]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=repr)


# -- summary ------------------------------------------------------------------------------------


def _headline(results: Any) -> dict[str, Any]:
    """The first few scalar results: metrics first, then small task outputs.

    ``results`` is the runner's ``status.results`` shape (``{"metrics": {...}, "outputs":
    {task: value}}``); any other mapping is read as flat name -> value pairs.
    """
    if not isinstance(results, Mapping):
        return {}
    sections = [results.get("metrics"), results.get("outputs")]
    if not any(isinstance(section, Mapping) for section in sections):
        sections = [results]
    picked: dict[str, Any] = {}
    for section in sections:
        if not isinstance(section, Mapping):
            continue
        for name, value in section.items():
            if len(picked) >= MAX_HEADLINES:
                return picked
            if _is_small_scalar(value):
                picked.setdefault(str(name), value)
    return picked


def _is_small_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _STRING_CHARS
    return value is None or isinstance(value, bool | int | float)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
