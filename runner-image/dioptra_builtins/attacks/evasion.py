"""Evasion attacks: perturb test inputs within an epsilon budget to fool a classifier.

Each attack returns a new ``ArrayDataset`` whose ``x_test`` holds the adversarial inputs;
the training split and labels are untouched, so metrics can compare clean and attacked data.
"""

import numpy as np
from dioptra import pyplugs

from dioptra_builtins._quiet import art_import
from dioptra_builtins.datasets.arrays import ArrayDataset

with art_import():
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification.scikitlearn import ScikitlearnClassifier

_NORMS: dict[str, float] = {"l1": 1, "l2": 2, "linf": np.inf}


@pyplugs.register
def fgsm(
    classifier: ScikitlearnClassifier, data: ArrayDataset, eps: float = 0.1, norm: str = "linf"
) -> ArrayDataset:
    """Fast Gradient Sign Method: one gradient step of size ``eps`` on every test input.

    ``norm`` (``linf``, ``l2`` or ``l1``) bounds the perturbation; inputs stay within the
    dataset's clip values.
    """
    attack = FastGradientMethod(classifier, norm=_norm(norm), eps=eps)
    adversarial = attack.generate(x=data.x_test).astype(data.x_test.dtype)
    return data.with_test_inputs(adversarial, f"fgsm(eps={eps})")


@pyplugs.register
def pgd(
    classifier: ScikitlearnClassifier,
    data: ArrayDataset,
    eps: float = 0.1,
    eps_step: float = 0.02,
    max_iter: int = 10,
    norm: str = "linf",
) -> ArrayDataset:
    """Projected Gradient Descent: ``max_iter`` steps of ``eps_step``, kept within ``eps``.

    Stronger than FGSM for the same budget. It starts from the clean inputs (no random
    start), so the same arguments always give the same adversarial data.
    """
    attack = ProjectedGradientDescent(
        classifier,
        norm=_norm(norm),
        eps=eps,
        eps_step=eps_step,
        max_iter=max_iter,
        num_random_init=0,
        verbose=False,
    )
    adversarial = attack.generate(x=data.x_test).astype(data.x_test.dtype)
    return data.with_test_inputs(adversarial, f"pgd(eps={eps})")


def _norm(name: str) -> float:
    try:
        return _NORMS[name]
    except KeyError:
        raise ValueError(f"norm must be one of {', '.join(_NORMS)}, got {name!r}") from None
