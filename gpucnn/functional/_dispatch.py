"""Which fast path an op takes: its CUDA kernels on CuPy arrays, else its own code.

``GPUCNN_CUDA_KERNELS=0`` turns the CUDA kernels off (every op then runs its standard array-API
code on CuPy too), for comparison and as an escape hatch.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from types import ModuleType

from ..backend import is_cupy
from ._numpy_kernels import matmul_fast

CUDA_KERNELS_ENV = "GPUCNN_CUDA_KERNELS"


def cuda_kernels(xp: ModuleType) -> ModuleType | None:
    """:mod:`gpucnn.functional._cuda_kernels` when ``xp`` is CuPy and kernels are on, else None."""
    if not is_cupy(xp) or os.environ.get(CUDA_KERNELS_ENV, "1").strip() == "0":
        return None
    from . import _cuda_kernels  # imports CuPy: only reached with CuPy arrays

    return _cuda_kernels


_capture = threading.local()  # .active while this thread records a CUDA graph


@contextmanager
def graph_capture():
    """While active (in this thread), every GEMM of the ops goes through
    :func:`_cuda_kernels.gemm`: CuPy refuses to call cuBLAS while a stream is being captured
    into a CUDA graph."""
    _capture.active = True
    try:
        yield
    finally:
        _capture.active = False


def matmul(xp: ModuleType, a, b):
    """``xp.matmul(a, b)`` for 2-D operands.

    On CuPy with the CUDA kernels on (and always inside :func:`graph_capture`) cuBLAS is
    called directly: a step replayed from a CUDA graph then runs the very GEMMs of an eager
    step, so both give the same bits (a run resumed with an eager first step equals one that
    never stopped). An operand layout that call does not take falls back to ``xp.matmul``,
    or inside a capture raises, which abandons the capture. On NumPy the rows are split
    over the CPU threads inside :func:`._cpu_threads.parallel`.
    """
    capturing = getattr(_capture, "active", False)
    if capturing or cuda_kernels(xp) is not None:
        from . import _cuda_kernels

        out = _cuda_kernels.gemm(a, b)
        if out is not None:
            return out
        if capturing:
            raise NotImplementedError(
                f"expected C- or F-contiguous float operands for a captured GEMM; received "
                f"shapes {a.shape} and {b.shape}"
            )
    out = matmul_fast(a, b)
    return out if out is not None else xp.matmul(a, b)
