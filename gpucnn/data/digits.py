"""scikit-learn's 8x8 handwritten digits: the small dataset that ships offline with the library."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as images scaled to [0, 1] and their labels.

    Returns
    -------
    x : float32 array of shape (1797, 1, 8, 8), values in [0, 1]
    y : int64 array of shape (1797,), values in [0, 9]
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:  # scikit-learn is a dependency; this guards broken installs
        raise RuntimeError(
            f"the digits dataset needs scikit-learn ({exc}); pip install scikit-learn"
        ) from None
    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    return x, bunch.target.astype(np.int64)
