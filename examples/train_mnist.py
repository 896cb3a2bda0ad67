"""Train the reference network on MNIST with the Trainer API and report test accuracy.

Run:  python examples/train_mnist.py --data-dir /path/to/mnist   (the four IDX .gz files)
Without --data-dir the files are looked up in $GPUCNN_DATA or ~/.cache/gpucnn and downloaded
there (SHA-256 verified) when missing. The same recipe as `gpucnn train --dataset mnist`.
"""

import argparse

from gpucnn import SGD, Sequential
from gpucnn.architectures import architecture
from gpucnn.data import load_mnist, train_val_split
from gpucnn.optim import CosineLR
from gpucnn.trainer import Trainer, evaluate

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--backend", default="auto")
args = parser.parse_args()

(x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir, download=True)
(x_fit, y_fit), (x_val, y_val) = train_val_split(x_train, y_train, val_fraction=0.1, seed=1)

model = Sequential.from_config(
    architecture("reference", (1, 28, 28), 10), backend=args.backend, seed=0
)
model.summary()
trainer = Trainer(model, SGD(lr=0.05, momentum=0.9), schedule=CosineLR(args.epochs), seed=0)
trainer.fit(x_fit, y_fit, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=128)
loss, accuracy = evaluate(model, x_test, y_test)
print(f"test accuracy {accuracy:.4f} (loss {loss:.4f})")
