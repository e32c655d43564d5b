"""The in-memory dataset that the adversarial-ML plugins pass to each other.

Not a plugin module (it registers nothing): it is the shared vocabulary of
``datasets``, ``estimators``, ``attacks``, ``defenses`` and ``metrics``.
"""

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A train/test split of flat feature vectors that are really small images.

    Features are flat (``n_samples x n_features``) because scikit-learn models want
    them that way; ``image_shape`` (height, width, channels) lets image defences view
    each row as a picture. Attacks and defences transform ``x_test`` only and return
    a new dataset, so the clean one stays available to compare against.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int]
    clip_values: tuple[float, float] = (0.0, 1.0)

    def with_test_inputs(self, x_test: np.ndarray, suffix: str) -> "ArrayDataset":
        """A copy whose test inputs are replaced, named after the transformation."""
        if x_test.shape != self.x_test.shape:
            raise ValueError(
                f"new test inputs have shape {x_test.shape}, expected {self.x_test.shape}"
            )
        return replace(self, name=f"{self.name}+{suffix}", x_test=x_test)

    def test_images(self) -> np.ndarray:
        """The test inputs viewed as a batch of images (``n x height x width x channels``)."""
        return self.x_test.reshape((-1, *self.image_shape))

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, image_shape={self.image_shape})"
        )
