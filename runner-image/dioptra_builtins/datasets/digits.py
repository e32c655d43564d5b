"""scikit-learn's handwritten digits (8x8 greyscale, 10 classes) as a train/test split.

The data ships inside scikit-learn, so flows using it need no download and no network.
"""

import numpy as np
from dioptra import pyplugs
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dioptra_builtins.datasets.arrays import ArrayDataset


@pyplugs.register
def load_digits_split(test_size: float = 0.25, seed: int = 0) -> ArrayDataset:
    """Load the digits dataset, scaled to [0, 1], as a stratified train/test split.

    ``seed`` fixes the split, so two runs with the same parameters see the same test set.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, digits.target, test_size=test_size, random_state=seed, stratify=digits.target
    )
    return ArrayDataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        image_shape=(8, 8, 1),
    )
