"""Array backends: choosing NumPy or CuPy, and everything that touches a device.

This is the only module that imports CuPy. Layer and functional code never names a library: it
asks :func:`namespace` for the array namespace ``xp`` of the arrays it was given and uses only
functions of the Python array API standard on it, so the same code runs on NumPy, CuPy and
``array_api_strict`` (the namespace the test suite uses to prove that claim).

Choosing a backend
------------------
``select_backend("auto")`` picks CuPy only when it imports *and* a CUDA device answers a tiny
allocation; otherwise NumPy, with the reason kept in :attr:`Backend.reason`. CuPy installed on a
machine without a driver imports fine and then fails at first use, which is why ``auto`` probes
a real allocation. An explicit ``"cupy"`` that cannot run raises :class:`BackendError`. The
environment variable ``GPUCNN_BACKEND`` (``numpy``, ``cupy`` or ``auto``) replaces ``"auto"``,
so a script that asks for ``auto`` can be pinned from outside; an explicit name in code wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # an array of whichever namespace is in use
BACKEND_ENV = "GPUCNN_BACKEND"
BACKEND_CHOICES = ("auto", "numpy", "cupy")


class BackendError(ValueError):
    """The requested backend cannot be used on this machine."""


@dataclass(frozen=True)
class Backend:
    """A chosen array namespace.

    Attributes
    ----------
    name : ``"numpy"``, ``"cupy"`` or the module name of a namespace passed in directly.
    xp : the array namespace module.
    reason : why this backend was chosen (printed by ``gpucnn info``).
    """

    name: str
    xp: ModuleType
    reason: str

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"


def probe_cupy() -> tuple[ModuleType | None, str]:
    """Return ``(cupy, reason)`` if CuPy can allocate on a device, else ``(None, reason)``."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc})"
    try:
        # A driverless machine fails here, not at import (CUDARuntimeError, CUDADriverError...).
        cupy.zeros(1, dtype=cupy.float32).sum().item()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable GPU"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            None,
            f"CuPy is installed but no CUDA device answered ({type(exc).__name__}: {message})",
        )
    return cupy, "CuPy found a CUDA device"


def select_backend(backend: str | ModuleType | Backend | None = "auto") -> Backend:
    """Resolve a backend request.

    Parameters
    ----------
    backend : ``"auto"``, ``"numpy"``, ``"cupy"``, None (same as ``"auto"``), an array namespace
        module (e.g. ``array_api_strict``) or an existing :class:`Backend`.
    """
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, ModuleType):
        return Backend(backend.__name__, backend, "namespace given explicitly")
    requested = "auto" if backend is None else str(backend).lower()
    from_env = False
    if requested == "auto" and os.environ.get(BACKEND_ENV):
        requested = os.environ[BACKEND_ENV].strip().lower()
        from_env = True
    source = f" (from {BACKEND_ENV})" if from_env else ""
    if requested not in BACKEND_CHOICES:
        what = f"{BACKEND_ENV}={requested!r}" if from_env else f"backend={requested!r}"
        raise BackendError(f"expected a backend in {BACKEND_CHOICES}; received {what}")
    if requested == "numpy":
        return Backend("numpy", np, f"NumPy requested{source}")
    cupy, why = probe_cupy()
    if requested == "cupy":
        if cupy is None:
            raise BackendError(f"backend 'cupy' was requested{source} but cannot run: {why}")
        return Backend("cupy", cupy, f"CuPy requested{source}")
    if cupy is None:
        return Backend("numpy", np, f"auto: fell back to NumPy because {why}")
    return Backend("cupy", cupy, f"auto: {why}")


def namespace(*arrays: Array) -> ModuleType:
    """The array API namespace of ``arrays`` (all must share it).

    Called by every op on every batch, so it asks each array once and builds nothing: on a GPU
    its host time adds to every step.
    """
    found = None
    for a in arrays:
        if a is None:
            continue
        space = _namespace_of(a)
        if found is None:
            found = space
        elif space is not found:
            raise ValueError("expected arrays of one namespace; received 2 or more namespaces")
    if found is None:
        raise ValueError("expected arrays of one namespace; received no arrays")
    return found


def _namespace_of(x: Array) -> ModuleType:
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__()
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    raise TypeError(f"expected an array with __array_namespace__; received {type(x).__name__}")


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def is_cupy(xp: ModuleType) -> bool:
    return xp.__name__.split(".")[0] == "cupy"


def to_device(x: Any, xp: ModuleType, dtype: Any = None) -> Array:
    """Move a host array (or anything ``numpy.asarray`` accepts) into namespace ``xp``."""
    if not is_numpy(xp) and _is_array_of(x, xp):
        return x if dtype is None else xp.astype(x, dtype)
    host = to_numpy(x) if hasattr(x, "__array_namespace__") else np.asarray(x)
    arr = xp.asarray(host)
    return arr if dtype is None or arr.dtype == dtype else xp.astype(arr, dtype)


def _is_array_of(x: Any, xp: ModuleType) -> bool:
    try:
        return _namespace_of(x) is xp
    except TypeError:
        return False


def to_numpy(x: Array) -> np.ndarray:
    """Copy an array of any namespace to a NumPy array on the host (no copy for NumPy)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


def synchronize(xp: ModuleType) -> None:
    """Wait for queued device work, so a host clock measures what ran (no-op on the CPU)."""
    if is_cupy(xp):
        xp.cuda.get_current_stream().synchronize()


def use_gpu(index: int) -> int | None:
    """Make CUDA device ``index % device_count`` current for CuPy (one GPU per process of a
    distributed run); returns its id, or None when CuPy or a device is missing."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver or no device: the CPU is used
        return None
    if count < 1:
        return None
    device = int(index) % count
    cupy.cuda.Device(device).use()
    return device


def device_info(backend: Backend) -> dict:
    """Name and memory of the device behind ``backend`` (for ``gpucnn info``)."""
    info: dict[str, Any] = {"backend": backend.name, "reason": backend.reason}
    if backend.is_gpu:
        cupy = backend.xp
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        free, total = cupy.cuda.runtime.memGetInfo()
        name = props["name"]
        info.update(
            device=name.decode() if isinstance(name, bytes) else str(name),
            memory_total_mib=round(total / 2**20),
            memory_free_mib=round(free / 2**20),
            cupy_version=cupy.__version__,
        )
    else:
        info["device"] = "CPU"
        try:  # POSIX: physical memory of the host
            info["memory_total_mib"] = round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
            )
        except (ValueError, OSError, AttributeError):
            pass
    info["numpy_version"] = np.__version__
    return info


def blas_info() -> dict[str, Any]:
    """The BLAS NumPy uses and its thread count."""
    info: dict[str, Any] = {}
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            info = {
                "blas": pools[0].get("internal_api"),
                "blas_version": pools[0].get("version"),
                "blas_threads": pools[0].get("num_threads"),
                "blas_core": pools[0].get("architecture"),
            }
    except ImportError:
        pass
    if not info:
        config = np.show_config(mode="dicts") or {}
        blas = config.get("Build Dependencies", {}).get("blas", {})
        info = {"blas": blas.get("name"), "blas_version": blas.get("version"), "blas_threads": None}
    info["cpu_count"] = os.cpu_count()
    return info
