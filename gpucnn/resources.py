"""Host process resources: the peak resident memory a run reports."""

from __future__ import annotations

import resource
import sys

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


__all__ = ["available_memory", "check_allocation", "peak_rss_mib"]
