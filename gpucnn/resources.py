"""Host process resources: the peak resident memory a run reports, memory checks before
large allocations, and how the C allocator keeps freed memory during training."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import resource
import sys
from typing import Any

import numpy as np

from .backend import is_cupy

LARGE = 1 << 28  # allocations below 256 MiB are not checked (reading /proc costs time)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_allocation(nbytes: int, what: str, device_nbytes: int = 0, xp=None) -> None:
    """Raise ``MemoryError`` saying what was asked when ``nbytes`` exceeds available memory,
    or, with CuPy as ``xp``, when ``device_nbytes`` exceeds the GPU's free memory.

    An allocation that cannot fit would otherwise succeed lazily and get the process killed
    by the operating system when touched, with no message at all.
    """
    if nbytes >= LARGE:
        available = available_memory()
        if available is not None and nbytes > available:
            raise MemoryError(
                f"{what} needs {nbytes / 2**30:.1f} GiB; {available / 2**30:.1f} GiB of memory is available"
            )
    if device_nbytes >= LARGE and xp is not None and is_cupy(xp):
        free = xp.cuda.runtime.memGetInfo()[0]
        if device_nbytes > free:
            raise MemoryError(
                f"{what} needs {device_nbytes / 2**30:.1f} GiB on the GPU; "
                f"{free / 2**30:.1f} GiB is free"
            )


def check_arrays(what: str, *arrays: tuple[tuple[int, ...], Any], xp=None) -> None:
    """:func:`check_allocation` for arrays about to be allocated together, given as
    ``(shape, dtype)`` pairs: against the GPU's free memory when ``xp`` is CuPy, else against
    the host's. Called before every large array an op allocates (forward, backward, the CPU
    threads' shared outputs), so a batch too large for memory is refused with one line
    instead of the process being killed when the pages are touched."""
    nbytes = sum(math.prod(shape) * _itemsize(dtype) for shape, dtype in arrays)
    if xp is not None and is_cupy(xp):
        check_allocation(0, what, device_nbytes=nbytes, xp=xp)
    else:
        check_allocation(nbytes, what)


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # a namespace's own dtype object (array-api-strict): 8 bytes at most
        return 8


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_retaining = False


def retain_freed_memory() -> bool:
    """Have glibc's allocator reuse freed memory instead of returning it to the system.

    A NumPy training step allocates and frees the same few-megabyte temporaries every step.
    By default glibc serves such sizes from fresh memory mappings and gives them back when
    freed, so every step takes the page faults of touching new memory again: on an Intel
    Xeon VM (AVX-512, 2 cores) a ``reference`` step at batch 128 took 31.9 ms that way and
    26.5 ms with this (median of 3 alternating runs of 30 steps; peak RSS unchanged). Here,
    allocations come from the heap (otherwise glibc maps anything of 32 MiB or more on its own,
    the threshold's maximum; in threads other than the main one it still maps 64 MiB or
    more), and up to 256 MiB freed at its top stays there for the next step. Measured with
    mappings still made for 32 MiB and more (AMD EPYC, 2 cores, batch 512, alternating
    processes of 30 steps): `lenet`'s 42 MB im2col array of its first layer was mapped,
    faulted in and unmapped every step (509 faults a step, none without); steps 2-11 took
    60.4 / 39.6 ms (mapped / not), steps 11-30 40.9 / 38.0 ms; `small_bn` 115.5 / 99.1 and
    92.8 / 93.9 ms; peak RSS 231 / 225 and 360 / 348 MiB.

    The price: memory freed below the heap's top (a large array freed while later ones live)
    is kept for reuse by this process, not returned, so the resident size stays near its
    high-water mark. A process-wide setting for every library in the process, made once and
    kept after training ends; :meth:`Trainer.fit <gpucnn.trainer.Trainer.fit>` calls it.
    Returns whether it applies (glibc only).
    """
    global _retaining
    if _retaining:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _retaining = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, 32 << 20),
            (_M_MMAP_MAX, 0),  # no mappings: the heap serves what it can (see above)
            (_M_TRIM_THRESHOLD, 256 << 20),
        )
    )
    return _retaining


__all__ = [
    "available_memory",
    "check_allocation",
    "check_arrays",
    "peak_rss_mib",
    "retain_freed_memory",
]
