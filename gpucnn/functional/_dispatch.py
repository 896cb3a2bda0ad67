"""Which fast path an op takes: its CUDA kernels on CuPy arrays, else its own code.

``GPUCNN_CUDA_KERNELS=0`` turns the CUDA kernels off (every op then runs its standard array-API
code on CuPy too), for comparison and as an escape hatch.
"""

from __future__ import annotations

import os
from types import ModuleType

from ..backend import is_cupy

CUDA_KERNELS_ENV = "GPUCNN_CUDA_KERNELS"


def cuda_kernels(xp: ModuleType) -> ModuleType | None:
    """:mod:`gpucnn.functional._cuda_kernels` when ``xp`` is CuPy and kernels are on, else None."""
    if not is_cupy(xp) or os.environ.get(CUDA_KERNELS_ENV, "1").strip() == "0":
        return None
    from . import _cuda_kernels  # imports CuPy: only reached with CuPy arrays

    return _cuda_kernels
