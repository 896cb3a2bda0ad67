"""The seeded source of initial weights and dropout masks, identical on every backend."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .backend import Array, is_cupy, to_device


class Random:
    """A seeded source of randomness for one model, identical on every backend.

    Weights are drawn on the host from a NumPy ``Generator`` and then moved, so one seed gives
    the same initial weights on NumPy, CuPy and ``array_api_strict``. Dropout masks come from
    the same host generator on the CPU; on a GPU each draw uses a CuPy generator seeded from
    ``(seed, draw number)``, so masks are made on the device yet the whole state is two
    numbers and a host generator state, which a checkpoint can restore exactly.

    Parameters
    ----------
    seed : int seeding every draw.
    xp : the array namespace the drawn arrays live in.
    """

    def __init__(self, seed: int, xp: ModuleType):
        self.xp = xp
        self.seed = int(seed)
        self.host = np.random.default_rng(self.seed)
        self.draws = 0

    def normal(self, shape: tuple[int, ...], std: float, dtype: Any) -> Array:
        """Normal(0, std) samples of ``shape`` in namespace ``xp``."""
        return to_device(self.host.normal(0.0, std, size=shape), self.xp, dtype)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """Uniform [0, 1) samples of ``shape`` in namespace ``xp``."""
        self.draws += 1
        if is_cupy(self.xp):
            seed = np.random.SeedSequence([self.seed, self.draws]).generate_state(1)[0]
            return self.xp.random.default_rng(int(seed)).random(shape, dtype=dtype)
        return to_device(self.host.random(shape, dtype=np.float32), self.xp, dtype)

    def get_state(self) -> dict:
        """JSON-serialisable state, restored exactly by :meth:`set_state`."""
        return {"seed": self.seed, "draws": self.draws, "host": self.host.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.draws = int(state["draws"])
        self.host.bit_generator.state = state["host"]

