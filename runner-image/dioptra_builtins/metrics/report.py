"""Gather a flow's headline numbers into one small JSON dict for ``status.results``."""

import math
import numbers

from dioptra import pyplugs

Scalar = bool | int | float | str | None


@pyplugs.register
def summarize(decimals: int = 4, **metrics: object) -> dict[str, Scalar]:
    """Combine named metrics into one JSON-ready dict, floats rounded to ``decimals`` places.

    Make it a flow's last step: the runner stores its return value in ``status.results``,
    which ``kubectl get experiment -o yaml`` and ``dioptra run`` show. numpy scalars become
    plain numbers and NaN or infinity becomes None (JSON has neither); anything that is not
    a number, string, bool or None is rejected by name.
    """
    summary: dict[str, Scalar] = {}
    for name, value in metrics.items():
        summary[name] = _scalar(name, value, decimals)
    return summary


def _scalar(name: str, value: object, decimals: int) -> Scalar:
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        value = item()  # a numpy scalar or 0-d array
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return round(number, decimals) if math.isfinite(number) else None
    raise TypeError(
        f"metric {name!r} is a {type(value).__name__}, not a number, string, bool or None"
    )
