"""How far adversarial inputs moved from the clean ones."""

from typing import Any

import numpy as np
from dioptra import pyplugs

_ORDERS: dict[str, float] = {"l1": 1, "l2": 2, "linf": np.inf}


@pyplugs.register
def perturbation_distance(clean: Any, adversarial: Any, norm: str = "l2") -> float:
    """Mean per-sample ``norm`` (``l1``, ``l2`` or ``linf``) of ``adversarial - clean``.

    Takes two datasets (their test inputs are compared) or two arrays of the same shape
    whose first axis indexes samples. Returns a plain float.
    """
    clean_x, adversarial_x = _inputs(clean), _inputs(adversarial)
    if clean_x.shape != adversarial_x.shape:
        raise ValueError(
            f"clean and adversarial inputs differ in shape: {clean_x.shape} vs "
            f"{adversarial_x.shape}"
        )
    try:
        order = _ORDERS[norm]
    except KeyError:
        raise ValueError(f"norm must be one of {', '.join(_ORDERS)}, got {norm!r}") from None
    difference = (adversarial_x - clean_x).reshape(len(clean_x), -1)
    return float(np.mean(np.linalg.norm(difference, ord=order, axis=1)))


def _inputs(value: Any) -> np.ndarray:
    """A dataset's test inputs, or the value itself as a float array."""
    return np.asarray(getattr(value, "x_test", value), dtype=np.float64)
