"""Draws from a seeded generator, as small plain Python values."""

import numpy as np
from dioptra import pyplugs


@pyplugs.register
def draw_random_integer(rng: np.random.Generator, low: int = 0, high: int = 2**31 - 1) -> int:
    """Draw one integer from ``[low, high)`` with the flow's generator.

    Returns a plain ``int`` (not a numpy scalar) so the result is JSON-serialisable.
    """
    if high <= low:
        raise ValueError(f"high ({high}) must be greater than low ({low})")
    return int(rng.integers(low=low, high=high))
