"""CUDA fast paths for CuPy arrays: one kernel launch where the standard code needs many.

The standard array-API code of each op stays the reference; on CuPy an op calls the matching
launcher here (through :func:`gpucnn.functional._dispatch.cuda_kernels`) instead. Why: on a
GPU the reference network's training step was bound by kernel launches (about 10 us of host
time each, ~170 per step), not by arithmetic, so every launcher below replaces a chain of
small element-wise kernels by one pass over memory.

Layout and shape symbols are those of :mod:`gpucnn.functional.im2col` (channels-last images).
Every kernel is full CUDA C in :data:`SOURCE`, compiled once per element type ``T`` (float
or double) by NVRTC through :class:`cupy.RawModule`; the test suite compiles the same source
on machines without a GPU. Kernels index with 32-bit ints: a launcher returns None (the
caller falls back to the standard code) for arrays of 2**31 elements or more. Gathers are
written so that every output element is produced by one thread (no atomics), so results are
deterministic.

This module imports CuPy and is imported only when CuPy is the backend.
"""

from __future__ import annotations

from functools import cache

import cupy
import numpy as np

THREADS = 256
INT_LIMIT = 2**31 - 1

SOURCE = r"""
// ---- im2col: one thread per element of the (N*OH*OW, K [+1]) matrix; padding read as 0.
extern "C" __global__ void im2col_nhwc(
    const T* __restrict__ x, T* __restrict__ cols, const int total,
    const int H, const int W, const int C, const int KW, const int SH, const int SW,
    const int PT, const int PL, const int OH, const int OW, const int K, const int K1)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int k = idx % K1;
        int row = idx / K1;
        const int ow = row % OW;
        row /= OW;
        const int oh = row % OH;
        const int n = row / OH;
        T value = (T)1;  // the bias column
        if (k < K) {
            const int c = k % C;
            const int offset = k / C;
            const int h = oh * SH - PT + offset / KW;
            const int w = ow * SW - PL + offset % KW;
            value = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * H + h) * W + w) * C + c]
                                                         : (T)0;
        }
        cols[idx] = value;
    }
}

// ---- col2im: one thread per input element gathers every window position that covers it,
// in kernel-offset order, from the pixel-major gradient columns (row stride ld); the
// gradient of the padding is never formed.
extern "C" __global__ void col2im_nhwc(
    const T* __restrict__ grad_cols, T* __restrict__ grad_x, const int total,
    const int H, const int W, const int C, const int KH, const int KW, const int SH,
    const int SW, const int PT, const int PL, const int OH, const int OW, const int ld)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int c = idx % C;
        int rest = idx / C;
        const int w = rest % W;
        rest /= W;
        const int h = rest % H;
        const int n = rest / H;
        T sum = (T)0;
        for (int i = 0; i < KH; ++i) {
            const int t = h + PT - i;
            if (t < 0 || t % SH != 0 || t / SH >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int u = w + PL - j;
                if (u < 0 || u % SW != 0 || u / SW >= OW) continue;
                const int row = (n * OH + t / SH) * OW + u / SW;
                sum += grad_cols[row * ld + (i * KW + j) * C + c];
            }
        }
        grad_x[idx] = sum;
    }
}

// ---- max pooling (optionally followed by ReLU): one thread per output element.
// NaN propagates as in maximum(); ReLU maps every non-positive maximum to 0.
extern "C" __global__ void max_pool_nhwc(
    const T* __restrict__ x, T* __restrict__ out, const int total, const int H, const int W,
    const int C, const int KH, const int KW, const int SH, const int SW, const int OH,
    const int OW, const int relu)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int c = idx % C;
        int rest = idx / C;
        const int ow = rest % OW;
        rest /= OW;
        const int oh = rest % OH;
        const int n = rest / OH;
        const T* corner = x + ((n * H + oh * SH) * W + ow * SW) * C + c;
        T best = corner[0];
        for (int i = 0; i < KH; ++i) {
            for (int j = 0; j < KW; ++j) {
                const T v = corner[(i * W + j) * C];
                if (v > best || v != v) best = v;
                if (best != best) break;
            }
        }
        out[idx] = (relu && best <= (T)0) ? (T)0 : best;
    }
}

// ---- max-pool backward: one thread per input element; it receives the gradient of every
// window whose FIRST maximum (row-major) it is. With relu, `out` is the ReLU output and
// windows whose output is not positive pass no gradient.
extern "C" __global__ void max_pool_backward_nhwc(
    const T* __restrict__ grad_out, const T* __restrict__ x, const T* __restrict__ out,
    T* __restrict__ grad_x, const int total, const int H, const int W, const int C,
    const int KH, const int KW, const int SH, const int SW, const int OH, const int OW,
    const int relu)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int c = idx % C;
        int rest = idx / C;
        const int w = rest % W;
        rest /= W;
        const int h = rest % H;
        const int n = rest / H;
        const T value = x[idx];
        const int oh_first = h >= KH ? (h - KH) / SH + 1 : 0;
        const int ow_first = w >= KW ? (w - KW) / SW + 1 : 0;
        const int oh_last = min(h / SH, OH - 1);
        const int ow_last = min(w / SW, OW - 1);
        T sum = (T)0;
        for (int oh = oh_first; oh <= oh_last; ++oh) {
            for (int ow = ow_first; ow <= ow_last; ++ow) {
                const int o = ((n * OH + oh) * OW + ow) * C + c;
                const T best = out[o];
                if (value != best || (relu && !(best > (T)0))) continue;
                const int i0 = h - oh * SH, j0 = w - ow * SW;
                const T* corner = x + ((n * H + oh * SH) * W + ow * SW) * C + c;
                bool first = true;
                for (int i = 0; i <= i0 && first; ++i) {
                    const int stop = i < i0 ? KW : j0;
                    for (int j = 0; j < stop; ++j) {
                        if (corner[(i * W + j) * C] == best) { first = false; break; }
                    }
                }
                if (first) sum += grad_out[o];
            }
        }
        grad_x[idx] = sum;
    }
}

// ---- ReLU backward: grad * (out > 0), one pass.
extern "C" __global__ void relu_backward(
    const T* __restrict__ grad_out, const T* __restrict__ out, T* __restrict__ grad_x,
    const int total)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        grad_x[idx] = grad_out[idx] * (T)(out[idx] > (T)0);
    }
}

// ---- softmax cross-entropy: ONE block; each thread takes rows r, r + blockDim.x, ...,
// writes their gradient (softmax - onehot) / N, and the block sums the row losses in a fixed
// tree order (deterministic). Also counts rows whose first largest logit is the label.
extern "C" __global__ void softmax_cross_entropy(
    const T* __restrict__ logits, const long long* __restrict__ labels,
    T* __restrict__ grad, T* __restrict__ loss, long long* __restrict__ correct,
    const int N, const int K)
{
    __shared__ T partial[THREADS];
    __shared__ int hits[THREADS];
    T total = (T)0;
    int right = 0;
    const T inv_n = (T)1 / (T)N;
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        const T* row = logits + (long long)r * K;
        T top = row[0];
        int arg = 0;
        for (int k = 1; k < K; ++k) {
            if (row[k] > top) { top = row[k]; arg = k; }
        }
        T sum = (T)0;
        for (int k = 0; k < K; ++k) sum += EXP(row[k] - top);
        const T lse = LOG(sum);
        const long long label = labels[r];
        for (int k = 0; k < K; ++k) {
            const T p = EXP(row[k] - top - lse);
            grad[(long long)r * K + k] = (p - (T)(k == label)) * inv_n;
        }
        if (label >= 0 && label < K) total -= row[label] - top - lse;
        right += (arg == label);
    }
    partial[threadIdx.x] = total;
    hits[threadIdx.x] = right;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            hits[threadIdx.x] += hits[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        loss[0] = partial[0] * inv_n;
        correct[0] = hits[0];
    }
}

// ---- SGD with momentum (PyTorch convention), weight decay folded into the gradient.
// first != 0: the velocity buffer starts as the gradient.
extern "C" __global__ void sgd_momentum(
    T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ velocity,
    const int total, const T lr, const T momentum, const T decay, const int nesterov,
    const int first)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const T g = grad[idx] + decay * param[idx];
        const T v = first ? g : velocity[idx] * momentum + g;
        velocity[idx] = v;
        param[idx] -= lr * (nesterov ? g + momentum * v : v);
    }
}

// ---- Adam with bias correction (step = lr / (1 - beta1**t)); decoupled weight decay
// (AdamW) applied to the parameter before the Adam step.
extern "C" __global__ void adam(
    T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m, T* __restrict__ v,
    const int total, const T step, const T beta1, const T beta2, const T eps,
    const T root_correction2, const T decay_step)
{
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const T g = grad[idx];
        const T m_new = m[idx] * beta1 + ((T)1 - beta1) * g;
        const T v_new = v[idx] * beta2 + ((T)1 - beta2) * (g * g);
        m[idx] = m_new;
        v[idx] = v_new;
        T p = param[idx];
        p -= decay_step * p;
        param[idx] = p - step * (m_new / (SQRT(v_new) / root_correction2 + eps));
    }
}
"""

PRELUDE = {
    "float32": "typedef float T;\n#define EXP expf\n#define LOG logf\n#define SQRT sqrtf\n",
    "float64": "typedef double T;\n#define EXP exp\n#define LOG log\n#define SQRT sqrt\n",
}


def full_source(dtype_name: str) -> str:
    """The complete CUDA C source for element type ``dtype_name`` ("float32" or "float64")."""
    return PRELUDE[dtype_name] + f"#define THREADS {THREADS}\n" + SOURCE


@cache
def _module(dtype_name: str) -> cupy.RawModule:
    return cupy.RawModule(code=full_source(dtype_name), options=("--std=c++11",))


def _kernel(name: str, dtype) -> cupy.RawKernel:
    return _module(np.dtype(dtype).name).get_function(name)


def _supported(*arrays) -> bool:
    """True when every array is float32/float64, C-contiguous and small enough for int32."""
    return all(
        a.dtype.name in PRELUDE and a.flags.c_contiguous and a.size <= INT_LIMIT for a in arrays
    )


def _launch(name: str, dtype, total: int, args: tuple) -> None:
    blocks = min(max(-(-total // THREADS), 1), 65535 * 32)
    _kernel(name, dtype)((blocks,), (THREADS,), args)


def _ints(*values: int) -> tuple:
    return tuple(np.int32(v) for v in values)


def im2col(x, kernel, stride, padding, bias_column: bool):
    """Padded im2col in one launch: x (N, H, W, C) -> (N, OH, OW, KH*KW*C [+ 1]); or None."""
    N, H, W, C = x.shape
    (KH, KW), (SH, SW), (PT, PB, PL, PR) = kernel, stride, padding
    OH, OW = (H + PT + PB - KH) // SH + 1, (W + PL + PR - KW) // SW + 1
    K = KH * KW * C
    cols = cupy.empty((N, OH, OW, K + int(bias_column)), dtype=x.dtype)
    if not _supported(x, cols):
        return None
    _launch(
        "im2col_nhwc",
        x.dtype,
        cols.size,
        (x, cols, *_ints(cols.size, H, W, C, KW, SH, SW, PT, PL, OH, OW, K, cols.shape[3])),
    )
    return cols


def col2im(grad_cols, x_shape, kernel, stride, padding):
    """Gradient of :func:`im2col` w.r.t. the unpadded input, one thread per input element.

    grad_cols : (N*OH*OW, ld) pixel-major, its first KH*KW*C columns ordered (KH, KW, C).
    Returns (N, H, W, C), or None if not applicable.
    """
    N, H, W, C = x_shape
    (KH, KW), (SH, SW), (PT, PB, PL, PR) = kernel, stride, padding
    OH, OW = (H + PT + PB - KH) // SH + 1, (W + PL + PR - KW) // SW + 1
    grad_x = cupy.empty(x_shape, dtype=grad_cols.dtype)
    if not _supported(grad_cols, grad_x):
        return None
    ld = grad_cols.shape[1]
    _launch(
        "col2im_nhwc",
        grad_x.dtype,
        grad_x.size,
        (grad_cols, grad_x, *_ints(grad_x.size, H, W, C, KH, KW, SH, SW, PT, PL, OH, OW, ld)),
    )
    return grad_x


def max_pool(x, pool, stride, relu: bool):
    """Max pooling (then ReLU if asked) in one launch: (N, H, W, C) -> (N, OH, OW, C)."""
    N, H, W, C = x.shape
    (KH, KW), (SH, SW) = pool, stride
    OH, OW = (H - KH) // SH + 1, (W - KW) // SW + 1
    out = cupy.empty((N, OH, OW, C), dtype=x.dtype)
    if not _supported(x, out):
        return None
    _launch(
        "max_pool_nhwc",
        x.dtype,
        out.size,
        (x, out, *_ints(out.size, H, W, C, KH, KW, SH, SW, OH, OW, int(relu))),
    )
    return out


def max_pool_backward(grad_out, x, out, pool, stride, relu: bool):
    """Route each output gradient to its window's first maximum, gathered per input element."""
    N, H, W, C = x.shape
    (KH, KW), (SH, SW) = pool, stride
    _, OH, OW, _ = out.shape
    grad_x = cupy.empty(x.shape, dtype=grad_out.dtype)
    if not _supported(grad_out, x, out, grad_x) or len({grad_out.dtype, x.dtype}) != 1:
        return None
    _launch(
        "max_pool_backward_nhwc",
        x.dtype,
        grad_x.size,
        (grad_out, x, out, grad_x, *_ints(grad_x.size, H, W, C, KH, KW, SH, SW, OH, OW, relu)),
    )
    return grad_x


def relu_backward(grad_out, out):
    """``grad_out * (out > 0)`` in one launch, or None."""
    if grad_out.shape != out.shape or grad_out.dtype != out.dtype:
        return None
    grad_x = cupy.empty_like(grad_out)
    if not _supported(grad_out, out, grad_x):
        return None
    _launch("relu_backward", out.dtype, out.size, (grad_out, out, grad_x, np.int32(out.size)))
    return grad_x


def softmax_cross_entropy(logits, labels):
    """Mean loss (0-d), gradient (N, K) and the count of correct argmaxes (0-d int64), or None.

    One block of :data:`THREADS` threads: a training batch has few rows, and one block sums
    the row losses in a fixed order without atomics.
    """
    N, K = logits.shape
    if not _supported(logits) or N == 0:
        return None
    labels = cupy.ascontiguousarray(labels.astype(cupy.int64, copy=False))
    grad = cupy.empty_like(logits)
    loss = cupy.empty((), dtype=logits.dtype)
    correct = cupy.empty((), dtype=cupy.int64)
    _kernel("softmax_cross_entropy", logits.dtype)(
        (1,), (THREADS,), (logits, labels, grad, loss, correct, *_ints(N, K))
    )
    return loss, grad, correct


def sgd_momentum(param, grad, velocity, lr, momentum, decay, nesterov: bool, first: bool):
    """One fused SGD-with-momentum update of ``param`` and ``velocity`` in place; False if
    not applicable (nothing changed)."""
    if not _supported(param, grad, velocity) or len({param.dtype, grad.dtype}) != 1:
        return False
    t = param.dtype.type
    _launch(
        "sgd_momentum",
        param.dtype,
        param.size,
        (param, grad, velocity, np.int32(param.size), t(lr), t(momentum), t(decay),
         np.int32(nesterov), np.int32(first)),
    )  # fmt: skip
    return True


def adam(param, grad, m, v, step, beta1, beta2, eps, root_correction2, decay_step):
    """One fused Adam update of ``param``, ``m`` and ``v`` in place; False if not applicable."""
    if not _supported(param, grad, m, v) or len({param.dtype, grad.dtype}) != 1:
        return False
    t = param.dtype.type
    _launch(
        "adam",
        param.dtype,
        param.size,
        (param, grad, m, v, np.int32(param.size), t(step), t(beta1), t(beta2), t(eps),
         t(root_correction2), t(decay_step)),
    )  # fmt: skip
    return True
