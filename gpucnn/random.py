"""The seeded source of initial weights and dropout masks, identical on every backend."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .backend import Array, to_device
from .resources import check_allocation

MASK64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: the splitmix64 increment


def splitmix64(z: int) -> int:
    """The splitmix64 finaliser of one 64-bit integer (Python int arithmetic)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def draw_key(seed: int, draw: int) -> int:
    """The 64-bit key of draw number ``draw`` of a :class:`Random` seeded with ``seed``."""
    return splitmix64((splitmix64(seed & MASK64) + draw * GOLDEN) & MASK64)


def hashed_uniform(key: int, size: int, dtype: Any) -> np.ndarray:
    """``size`` uniform [0, 1) samples, element ``i`` a pure function of ``(key, i)``.

    Element i is ``splitmix64(key + (i + 1) * GOLDEN)``, its top 24 bits scaled by 2**-24
    for float32 or its top 53 bits by 2**-53 for float64: exactly the numbers the CUDA kernel
    ``hashed_uniform`` computes, so a mask is the same on the CPU and on a GPU.
    """
    z = np.arange(1, size + 1, dtype=np.uint64) * np.uint64(GOLDEN) + np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    if np.dtype(dtype) == np.float64:
        return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


class Random:
    """A seeded source of randomness for one model, identical on every backend.

    Weights are drawn on the host from a NumPy ``Generator`` and then moved, so one seed gives
    the same initial weights on NumPy, CuPy and ``array_api_strict``. Dropout masks come from
    a counter-based hash of ``(seed, draw number, element index)`` (:func:`hashed_uniform`),
    computed on the device by one kernel on CuPy and on the host otherwise: the same masks on
    every backend, no generator object to rebuild per draw, and a state of two numbers (plus
    the host generator's for weights) that a checkpoint restores exactly.

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
        size = math.prod(shape)
        what = f"an array of shape {tuple(shape)}"
        # checked against the GPU first: the host draw of a model that cannot fit takes minutes
        check_allocation(0, what, device_nbytes=8 * size, xp=self.xp)
        check_allocation(8 * size, what)
        return to_device(self.host.normal(0.0, std, size=shape), self.xp, dtype)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """Uniform [0, 1) samples of ``shape`` in namespace ``xp`` (float32 or float64)."""
        from .functional._dispatch import cuda_kernels

        self.draws += 1
        key = draw_key(self.seed, self.draws)
        size = math.prod(shape)
        check_allocation(8 * size, f"an array of shape {tuple(shape)}")
        cuda = cuda_kernels(self.xp)
        drawn = cuda.hashed_uniform(key, shape, dtype) if cuda else None
        if drawn is not None:
            return drawn
        host_dtype = np.float64 if dtype == self.xp.float64 else np.float32
        return to_device(hashed_uniform(key, size, host_dtype).reshape(shape), self.xp, dtype)

    def get_state(self) -> dict:
        """JSON-serialisable state, restored exactly by :meth:`set_state`."""
        return {"seed": self.seed, "draws": self.draws, "host": self.host.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.draws = int(state["draws"])
        self.host.bit_generator.state = state["host"]
