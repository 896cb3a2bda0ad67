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
    table = _read_shipped_table()
    if table is None:  # not where scikit-learn has kept it: ask scikit-learn itself
        try:
            from sklearn.datasets import load_digits as sklearn_digits
        except ImportError as exc:  # scikit-learn is a dependency; this guards broken installs
            raise RuntimeError(
                f"the digits dataset needs scikit-learn ({exc}); pip install scikit-learn"
            ) from None
        bunch = sklearn_digits()
        table = np.column_stack([bunch.data, bunch.target])
    x = (table[:, :64].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    return x, table[:, 64].astype(np.int64)


def _read_shipped_table() -> np.ndarray | None:
    """The (1797, 65) table (64 pixels, then the label) from the file scikit-learn ships,
    ``sklearn/datasets/data/digits.csv.gz``, read without importing scikit-learn (which costs
    1.5-2 s at the start of every command); None where the file is not there."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as lines:
            table = np.loadtxt(lines, delimiter=",", dtype=np.float64)
    except (OSError, ValueError):
        return None
    return table if table.shape == (1797, 65) else None
