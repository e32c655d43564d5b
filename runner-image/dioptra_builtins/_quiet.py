"""Silence the one known-irrelevant warning the adversarial-robustness-toolbox prints at import."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# ART's certification subpackage warns when PyTorch is absent. The builtins use ART with
# scikit-learn models only, so the warning says nothing about this run; every other
# warning still reaches the user.
_ART_TORCH_WARNING = r"PyTorch not found\."


@contextmanager
def art_import() -> Iterator[None]:
    """Import ART modules inside this block to drop only its PyTorch-missing warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ART_TORCH_WARNING, category=UserWarning)
        yield
