"""A sweep's picture: each metric against the swept parameter, as a PNG.

What is plotted: the metrics the points logged (``dioptra.metrics.log_metric``); a sweep
whose plugins log none (the epsilon sweep returns its numbers from a final ``summarize``
step) gets the numeric outputs of its final tasks instead, dict outputs by key. A metric
named like a swept parameter is left out (it would be a diagonal line).

How: the first swept parameter is the x axis (numbers on a numeric axis, anything else as
evenly spaced labels). One swept parameter: one axes, one line per metric, y axis "value"
(plugins log no units). Two or more: small multiples, one panel per metric, one line per
value of the other swept parameters. Failed points leave a gap. Title: the Experiment's name.

matplotlib (Agg backend, no display) is imported only when a sweep ends.

For other stores (e.g. an artifact store): :func:`render_sweep_plot` returns the PNG's bytes
from plain data; :func:`sweep_plot_points` takes it from the execution's PointRuns.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["point_numbers", "render_sweep_plot", "sweep_plot_points", "write_sweep_plot"]


def sweep_plot_points(
    runs: Sequence[Any], final_tasks: Sequence[str]
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """``(point values, {metric: number})`` for each point, failed points with no numbers."""
    logged = any(r.results.get("metrics") for r in runs)
    swept = {name for r in runs for name in r.point.values}
    points = []
    for run_ in runs:
        numbers: dict[str, float] = {}
        if run_.result is not None and run_.result.is_successful():
            numbers = point_numbers(run_.results, swept, logged=logged, final_tasks=final_tasks)
        points.append((dict(run_.point.values), numbers))
    return points


def point_numbers(
    results: Mapping[str, Any],
    swept: Collection[str],
    *,
    logged: bool,
    final_tasks: Collection[str] | None = None,
) -> dict[str, float]:
    """A point's numbers to plot: its logged metrics when the sweep logged some (``logged``),
    else the numbers among its task outputs (only the final tasks' when they are known), dict
    outputs by key; a swept parameter's own name is left out."""
    source = (results.get("metrics") or {}) if logged else _outputs(results, final_tasks)
    return {
        str(name): float(value)
        for name, value in source.items()
        if name not in swept and _is_number(value)
    }


def _outputs(results: Mapping[str, Any], final_tasks: Collection[str] | None) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for task, value in (results.get("outputs") or {}).items():
        if final_tasks is not None and task not in final_tasks:
            continue
        if isinstance(value, Mapping):
            flat.update({str(k): v for k, v in value.items()})
        else:
            flat[str(task)] = value
    return flat


def _is_number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(float(value))
    )


def render_sweep_plot(
    experiment_name: str, points: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]]
) -> bytes | None:
    """The PNG of the sweep's points, or None when no point has a number to plot."""
    metrics = list(dict.fromkeys(name for _, numbers in points for name in numbers))
    if not metrics or not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    swept = list(dict.fromkeys(name for values, _ in points for name in values))
    x_name, others = swept[0], swept[1:]
    xs_raw = list(dict.fromkeys(_key(values.get(x_name)) for values, _ in points))
    numeric = all(_is_number(_unkey(x)) for x in xs_raw)
    if numeric:
        xs_raw.sort(key=lambda x: float(_unkey(x)))
    position = {x: (float(_unkey(x)) if numeric else i) for i, x in enumerate(xs_raw)}

    panels = metrics if others else [None]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(
        figsize=(6.4 * columns if columns > 1 else 8, 4.6 * rows), dpi=110, layout="constrained"
    )
    axes_list = figure.subplots(rows, columns, squeeze=False).flatten()
    for axes, metric in zip(axes_list, panels, strict=False):
        if metric is None:  # one swept parameter: one line per metric
            lines = {name: _line(points, x_name, position, name, {}) for name in metrics}
            axes.set_ylabel("value")
            legend_title = "metric"
        else:  # small multiples: one line per value of the other swept parameters
            groups = list(dict.fromkeys(_key({n: v.get(n) for n in others}) for v, _ in points))
            lines = {}
            for group in groups:
                fixed = dict(_unkey(group))
                label = ", ".join(f"{n}={_text(fixed[n])}" for n in others)
                lines[label] = _line(points, x_name, position, metric, fixed)
            axes.set_ylabel(f"{metric} (value)")
            axes.set_title(metric, fontsize=11)
            legend_title = ", ".join(others)
        for label, (xs, ys) in lines.items():
            axes.plot(xs, ys, marker="o", linewidth=2, markersize=6, label=label)
        axes.set_xlabel(x_name)
        if not numeric:
            axes.set_xticks(list(position.values()), [_text(_unkey(x)) for x in xs_raw])
        else:
            axes.set_xticks(sorted(position.values()))
        axes.grid(True, alpha=0.3)
        axes.legend(title=legend_title, fontsize=9, title_fontsize=9, loc="best")
    for axes in axes_list[len(panels) :]:
        axes.set_visible(False)
    what = ", ".join(metrics) if len(metrics) <= 3 else f"{len(metrics)} metrics"
    title = plot_title(experiment_name, what, x_name, figure.get_figwidth())
    figure.suptitle(title, fontsize=13)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_title(experiment_name: str, what: str, x_name: str, inches: float) -> str:
    """The figure's title, wrapped to its width (about 9 characters of 13 pt per inch): a long
    one would otherwise run off both edges of the picture."""
    return textwrap.fill(f"{experiment_name}: {what} against {x_name}", width=int(9 * inches))


def _line(
    points: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]],
    x_name: str,
    position: Mapping[Any, float],
    metric: str,
    fixed: Mapping[str, Any],
) -> tuple[list[float], list[float]]:
    """x and y of one line; a point without the metric (a failed point) is a gap (NaN)."""
    found: dict[float, float] = {}
    for values, numbers in points:
        if any(values.get(name) != value for name, value in fixed.items()):
            continue
        found[position[_key(values.get(x_name))]] = numbers.get(metric, math.nan)
    xs = sorted(found)
    return xs, [found[x] for x in xs]


def _key(value: Any) -> Any:
    """A hashable stand-in for a parameter value (lists and dicts as tuples)."""
    if isinstance(value, Mapping):
        return ("__map__", tuple((k, _key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__seq__", tuple(_key(v) for v in value))
    return value


def _unkey(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__map__":
        return {k: _unkey(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__seq__":
        return [_unkey(v) for v in value[1]]
    return value


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_sweep_plot(
    experiment_name: str, runs: Sequence[Any], final_tasks: Sequence[str], path: Path
) -> Path | None:
    """Render the sweep's plot to ``path``; None when there is nothing to plot."""
    png = render_sweep_plot(experiment_name, sweep_plot_points(runs, final_tasks))
    if png is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(png)
    partial.replace(path)
    return path
