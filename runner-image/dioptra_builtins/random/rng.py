"""Seeded random number generators: the one place a flow's randomness starts.

Following Dioptra's convention, ``init_rng`` returns both the seed it used and the
generator, so a run started without a seed still records the seed that reproduces it.
"""

import numpy as np
from dioptra import pyplugs


@pyplugs.register
@pyplugs.task_nout(2)
def init_rng(seed: int = -1) -> tuple[int, np.random.Generator]:
    """Create a numpy random generator and report the seed that reproduces it.

    A negative ``seed`` (the default) draws a fresh 32-bit seed from the operating system's
    entropy; the returned seed is then the one to pass next time for the same run.
    """
    if seed < 0:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
    return seed, np.random.default_rng(seed)
