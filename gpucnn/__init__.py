"""gpucnn: a from-scratch CNN library whose layers run unchanged on NumPy (CPU) and CuPy (GPU).

>>> from gpucnn import Sequential
>>> from gpucnn.layers import Conv2D, MaxPool2D, Dense, ReLU, Flatten
>>> model = gpucnn.load_model("runs/my-run")   # a run folder or a model.npz; model.save(path)
"""

from .backend import Backend, BackendError, select_backend
from .model import Sequential, load_model
from .optim import SGD, Adam, AdamW
from .parameter import Parameter

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "Backend",
    "BackendError",
    "Parameter",
    "SGD",
    "Sequential",
    "__version__",
    "load_model",
    "select_backend",
]
