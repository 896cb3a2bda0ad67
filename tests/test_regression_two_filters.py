"""The original code's reported failure: with two filters it trained to 15 % accuracy.

A one-conv-layer network with 2 filters must reach > 90 % on scikit-learn's digits in a few
epochs of plain SGD, which needs correct backprop through and between the filters.
"""

import numpy as np

from gpucnn import SGD, Sequential
from gpucnn.data import load_digits
from gpucnn.layers import Conv2D, Dense, Flatten, ReLU


def test_two_filter_network_learns_digits():
    x, y = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1400], order[1400:]
    model = Sequential(
        [Conv2D(2, 3, padding=1), ReLU(), Flatten(), Dense(10)],
        input_shape=(1, 8, 8),
        backend="numpy",
        seed=0,
    )
    optimizer = SGD(lr=0.1)
    for _epoch in range(5):
        shuffled = rng.permutation(train)
        for start in range(0, len(shuffled), 16):
            batch = shuffled[start : start + 16]
            model.loss_and_backward(x[batch], y[batch])
            optimizer.step(model)
    accuracy = np.mean(model.predict(x[test]) == y[test])
    assert accuracy > 0.90, f"accuracy {accuracy:.3f}"
    assert (
        np.abs(model.layers[0].params["weight"][0] - model.layers[0].params["weight"][1]).max()
        > 1e-3
    )
