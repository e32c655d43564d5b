"""How well a classifier does on a dataset's test split."""

import numpy as np
from dioptra import pyplugs

from dioptra_builtins._quiet import art_import
from dioptra_builtins.datasets.arrays import ArrayDataset

with art_import():
    from art.estimators.classification.scikitlearn import ScikitlearnClassifier


@pyplugs.register
def accuracy(classifier: ScikitlearnClassifier, data: ArrayDataset) -> float:
    """Fraction of test inputs the classifier labels correctly (a plain float in [0, 1]).

    Works the same on clean, adversarial and defended datasets, since they differ only
    in their test inputs.
    """
    predicted = np.argmax(classifier.predict(data.x_test), axis=1)
    return float(np.mean(predicted == data.y_test))
