"""scikit-learn models trained on an ``ArrayDataset`` and wrapped for ART attacks.

The wrapper (an ART ``ScikitlearnClassifier``) knows the model's input range and exposes the
loss gradients that gradient-based attacks such as FGSM and PGD need.
"""

from dioptra import pyplugs
from sklearn.linear_model import LogisticRegression

from dioptra_builtins._quiet import art_import
from dioptra_builtins.datasets.arrays import ArrayDataset

with art_import():
    from art.estimators.classification.scikitlearn import (
        ScikitlearnClassifier,
        ScikitlearnLogisticRegression,
    )


@pyplugs.register
def train_logistic_regression(
    data: ArrayDataset, c: float = 1.0, max_iter: int = 1000, seed: int = 0
) -> ScikitlearnClassifier:
    """Fit a multinomial logistic regression on the training split and wrap it for ART.

    ``c`` is scikit-learn's inverse regularisation strength ``C``. Returns the ART
    classifier, which attack, defence and metric tasks take as ``classifier``.
    """
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(data.x_train, data.y_train)
    return ScikitlearnLogisticRegression(model=model, clip_values=data.clip_values)
