"""Seeded train/validation splits and standardisation."""

from __future__ import annotations

import numpy as np


def train_val_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Shuffle with ``seed`` and hold out ``val_fraction`` of the samples.

    Returns ``(x_train, y_train), (x_val, y_val)``; the validation part may be empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"expected val_fraction in [0, 1); received {val_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def standardize(x_train: np.ndarray, *others: np.ndarray):
    """Subtract the training mean and divide by its std (one scalar each, from ``x_train``).

    Returns the standardised training array followed by ``others`` transformed alike.
    """
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return tuple(((a - mean) / std).astype(np.float32) for a in (x_train, *others))
