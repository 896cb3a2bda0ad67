"""Quick start: build a small CNN, train it for a few epochs with a minimal loop, print accuracy.

Run:  python examples/quickstart.py
Uses scikit-learn's 8x8 digits (offline) and whichever backend is available (CuPy on a GPU,
otherwise NumPy).
"""

import time

import numpy as np

from gpucnn import SGD, Sequential
from gpucnn.data import load_digits
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

x, y = load_digits()  # x: (1797, 1, 8, 8) float32 in [0, 1]; y: (1797,) int64
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
train, test = order[:1500], order[1500:]

model = Sequential(
    [
        Conv2D(16, 3, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Conv2D(32, 3, padding="same"),
        ReLU(),
        Flatten(),
        Dense(10),
    ],
    input_shape=(1, 8, 8),
    backend="auto",
    seed=0,
)
model.summary()
optimizer = SGD(lr=0.05, momentum=0.9)

for epoch in range(1, 6):
    start = time.perf_counter()
    shuffled = rng.permutation(train)
    for first in range(0, len(shuffled), 32):
        batch = shuffled[first : first + 32]
        loss, _ = model.loss_and_backward(x[batch], y[batch])  # forward + loss + backward
        optimizer.step(model)  # in-place parameter update
    accuracy = np.mean(model.predict(x[test]) == y[test])
    print(
        f"epoch {epoch}: last batch loss {float(loss):.3f}, test accuracy {accuracy:.3f}, {time.perf_counter() - start:.2f} s"
    )
