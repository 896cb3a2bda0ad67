"""Test helpers: naive loop references (NCHW, float64) and central-difference gradients.

The references are written independently of ``gpucnn.functional``: plain loops over samples,
filters and output pixels, in the public (N, C, H, W) layout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from gpucnn.backend import to_device, to_numpy


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same': output ceil(size / stride); odd totals put the extra at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d_naive(x, w, b, stride, pads):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,), pads (PT, PB, PL, PR) -> (N, F, OH, OW)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    SH, SW = stride
    PT, PB, PL, PR = pads
    padded = np.zeros((N, C, H + PT + PB, W + PL + PR))
    padded[:, :, PT : PT + H, PL : PL + W] = x
    OH = (H + PT + PB - KH) // SH + 1
    OW = (W + PL + PR - KW) // SW + 1
    out = np.zeros((N, F, OH, OW))
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    window = padded[n, :, i * SH : i * SH + KH, j * SW : j * SW + KW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out


def pool_naive(x, pool, stride, reduce):
    """x (N, C, H, W) -> (N, C, OH, OW) with ``reduce`` (np.max or np.mean) per window."""
    N, C, H, W = x.shape
    KH, KW = pool
    SH, SW = stride
    OH, OW = (H - KH) // SH + 1, (W - KW) // SW + 1
    out = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    out[n, c, i, j] = reduce(x[n, c, i * SH : i * SH + KH, j * SW : j * SW + KW])
    return out


def cross_entropy_naive(logits, labels):
    total = 0.0
    for row, label in zip(logits, labels, strict=True):
        m = max(row)
        total += -(row[label] - m - np.log(sum(np.exp(v - m) for v in row)))
    return total / len(labels)


def numeric_gradient(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    eps: float = 1e-6,
    max_entries: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of scalar ``f`` at float64 ``x``.

    Returns ``(indices, grads)``: flat indices checked (all, or a random ``max_entries`` of
    them) and the numeric derivative at each.
    """
    flat = x.reshape(-1)
    indices = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        indices = np.random.default_rng(seed).choice(flat.size, max_entries, replace=False)
    grads = np.empty(len(indices))
    for k, idx in enumerate(indices):
        saved = flat[idx]
        flat[idx] = saved + eps
        up = f(x)
        flat[idx] = saved - eps
        down = f(x)
        flat[idx] = saved
        grads[k] = (up - down) / (2 * eps)
    return indices, grads


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``||a - n|| / (||a|| + ||n||)``, 0 when both vanish."""
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return 0.0 if denom == 0 else float(np.linalg.norm(analytic - numeric) / denom)


def assert_gradient(f, x, analytic, max_entries=None, tol=1e-6, atol=0.0):
    """Check ``analytic`` (NumPy, same shape as ``x``) against central differences of ``f``.

    ``atol`` accepts a gradient that is zero by construction (a bias before a BatchNorm):
    there the relative error compares rounding noise with rounding noise."""
    indices, numeric = numeric_gradient(f, x, max_entries=max_entries)
    picked = np.asarray(analytic).reshape(-1)[indices]
    err = relative_error(picked, numeric)
    if atol and np.max(np.abs(picked - numeric), initial=0.0) < atol:
        return
    assert err < tol, f"relative gradient error {err:.2e} >= {tol:.0e}"


def on(xp, a):
    """A host array moved into namespace ``xp``."""
    return to_device(np.asarray(a), xp)


def host(a) -> np.ndarray:
    return to_numpy(a)


def python_path(root) -> str:
    """``root`` first, then the caller's own PYTHONPATH: a child process imports this checkout
    and still finds packages the caller found through PYTHONPATH."""
    import os

    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(root), inherited] if inherited else [str(root)])


# ---------------------------------------------------------------------- MPI ranks as threads
class ThreadGroup:
    """Ranks as threads of this process: collective calls meet at a barrier."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots = [None] * size


class ThreadComm:
    """The few mpi4py communicator calls MPICommunicator makes, for ranks that are threads
    (buffers may be NumPy or CuPy arrays, as with a CUDA-aware MPI)."""

    def __init__(self, group, rank):
        self.group, self.rank = group, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.group.size

    def Split_type(self, kind, key=0):
        return self

    def Free(self):
        pass

    def Allreduce(self, _in_place, buffer, op):
        group = self.group
        group.slots[self.rank] = buffer.copy()
        group.barrier.wait()
        total = group.slots[0]
        for part in group.slots[1:]:  # rank order, as MPI's reduction of two ranks
            total = total + part
        group.barrier.wait()
        buffer[...] = total

    def Bcast(self, buffer, root):
        group = self.group
        group.slots[self.rank] = buffer.copy()
        group.barrier.wait()
        value = group.slots[root]
        group.barrier.wait()
        buffer[...] = value

    def Abort(self, code):
        raise SystemExit(code)


class FakeMPI:
    IN_PLACE, SUM, COMM_TYPE_SHARED, COMM_WORLD = object(), object(), 0, None
