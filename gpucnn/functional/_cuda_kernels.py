"""CUDA fast paths for CuPy arrays: one kernel launch where the standard code needs many.

The standard array-API code of each op stays the reference; on CuPy an op calls the matching
launcher here (through :func:`gpucnn.functional._dispatch.cuda_kernels`) instead. Why: on a
GPU the reference network's training step was bound by kernel launches (about 10 us of host
time each, ~170 per step), not by arithmetic, so every launcher below replaces a chain of
small element-wise kernels by one pass over memory.

Layout and shape symbols are those of :mod:`gpucnn.functional.im2col` (channels-last images).
Every kernel is full CUDA C compiled by NVRTC through :class:`cupy.RawModule`: those of
:data:`SOURCE` and :data:`OPTIMIZER_SOURCE` once per element type ``T`` (float or double),
those of :data:`SHAPED_SOURCE` once per layer shape as well, with every size a constant; the
test suite compiles them on machines without a GPU. Kernels index with 32-bit ints: a
launcher returns None (the caller falls back to the standard code) for arrays of
``INT_LIMIT`` (about 1.6e9) elements or more. Every output element is written by one thread
(no atomics), so results are deterministic. The GEMMs go through :func:`gemm`, cuBLAS called
directly (see :class:`_Cublas`).

This module imports CuPy and is imported only when CuPy is the backend.
"""

from __future__ import annotations

import threading
from functools import cache

import cupy
import numpy as np

THREADS = 256
MAX_BLOCKS = 65535 * 32
# 32-bit indices: an array's last index plus one grid stride must still fit in an int
INT_LIMIT = 2**31 - 1 - THREADS * MAX_BLOCKS

COMMON = r"""
// Every kernel gives one thread each output element, striding over the grid when the grid is
// smaller than the output.
#define FOR_EACH(idx, total) \
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (total); \
         idx += blockDim.x * gridDim.x)

// The coordinates (a, b, c, d) of a row-major index into an array of shape (., B, C, D).
__device__ __forceinline__ void unravel4(int idx, const int B, const int C, const int D,
                                         int& a, int& b, int& c, int& d)
{
    d = idx % D;
    idx /= D;
    c = idx % C;
    idx /= C;
    b = idx % B;
    a = idx / B;
}

"""

SOURCE = r"""
// ---- the GEMM operand of a convolution weight (F, C, KH, KW): out (rows, F) holds row
// (i*KW + j)*C + c = weight[:, c, i, j], then the bias row (if bias), then zero rows.
extern "C" __global__ void conv_weight_matrix(
    const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ out,
    const int total, const int F, const int C, const int KH, const int KW, const int has_bias)
{
    const int K = KH * KW * C;
    FOR_EACH(idx, total) {
        const int f = idx % F;
        const int k = idx / F;
        T value = (T)0;
        if (k < K) {
            const int c = k % C;
            const int offset = k / C;
            value = weight[((f * C + c) * KH + offset / KW) * KW + offset % KW];
        } else if (k == K && has_bias) {
            value = bias[f];
        }
        out[idx] = value;
    }
}

// ---- ReLU backward: grad * (out > 0), one pass.
extern "C" __global__ void relu_backward(
    const T* __restrict__ grad_out, const T* __restrict__ out, T* __restrict__ grad_x,
    const int total)
{
    FOR_EACH(idx, total) {
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

// ---- BatchNorm, channels-last (M rows of C channels), the statistics given per channel:
// out = x * scale[c] + shift[c], then max(., 0) if relu. One pass instead of five kernels.
extern "C" __global__ void batch_norm_apply(
    const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ shift,
    T* __restrict__ out, const int total, const int C, const int relu)
{
    FOR_EACH(idx, total) {
        const int c = idx % C;
        T value = x[idx] * scale[c] + shift[c];
        if (relu && value < (T)0) value = (T)0;  // NaN stays NaN, as in max(x, 0)
        out[idx] = value;
    }
}

// ---- BatchNorm input gradient: grad_x = grad * a[c] + (x - mean[c]) * b[c] + k[c] (the
// per-channel factors of gpucnn.functional.batch_norm_input_grad). One pass instead of about
// ten.
extern "C" __global__ void batch_norm_input_grad(
    const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ mean,
    const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ k,
    T* __restrict__ grad_x, const int total, const int C)
{
    FOR_EACH(idx, total) {
        const int c = idx % C;
        grad_x[idx] = grad[idx] * a[c] + (x[idx] - mean[c]) * b[c] + k[c];
    }
}

// ---- uniform [0, 1) samples: element i is splitmix64(key + (i + 1) * golden), its top
// 24 (float) or 53 (double) bits scaled; the same numbers as gpucnn.random.hashed_uniform.
extern "C" __global__ void hashed_uniform(
    T* __restrict__ out, const unsigned long long key, const int total)
{
    FOR_EACH(idx, total) {
        unsigned long long z = key + (unsigned long long)(idx + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        out[idx] = sizeof(T) == 8 ? (T)(z >> 11) * (T)1.1102230246251565e-16
                                  : (T)(z >> 40) * (T)5.9604644775390625e-08;
    }
}
"""

# Kernels compiled once per shape: every size below is a compile-time constant (a macro), so
# the compiler turns their many index divisions into multiplications; with run-time sizes
# those divisions bounded the kernels (im2col took 356 of 651 us of an inference pass on an
# NVIDIA H200). Names: the symbols of gpucnn.functional.im2col, plus K1 (columns of the
# padded im2col matrix), LD (row stride of gradient columns), BIAS and RELU (0 or 1).
SHAPED_SOURCE = {
    "im2col_nhwc": r"""
// ---- im2col: one thread per 4 columns of one row of the (N*OH*OW, K1) matrix (K1 is a
// multiple of 4): K window columns, the bias column of ones (if BIAS), zeros up to K1; image
// padding read as 0. With V = 4 (C a multiple of 4), the 4 columns are 4 channels of one
// window pixel and move as one vector.
extern "C" __global__ void im2col_nhwc(
    const T* __restrict__ x, T* __restrict__ cols, const int total)
{
    FOR_EACH(q, total) {
        int n, oh, ow, k4;
        unravel4(q, OH, OW, K1 / 4, n, oh, ow, k4);
        T v[4];
        const int k0 = 4 * k4;
        if (V == 4 && k0 < K) {
            const int offset = k0 / C;
            const int h = oh * SH - PT + offset / KW;
            const int w = ow * SW - PL + offset % KW;
            if (h >= 0 && h < H && w >= 0 && w < W) {
                load_vec<4>(x + ((n * H + h) * W + w) * C + k0 % C, v);
            } else {
                v[0] = v[1] = v[2] = v[3] = (T)0;
            }
        } else {
            for (int u = 0; u < 4; ++u) {
                const int k = k0 + u;
                T value = (T)(k == K && BIAS);  // the bias column, or alignment padding
                if (k < K) {
                    const int offset = k / C;
                    const int h = oh * SH - PT + offset / KW;
                    const int w = ow * SW - PL + offset % KW;
                    value = (h >= 0 && h < H && w >= 0 && w < W)
                                ? x[((n * H + h) * W + w) * C + k % C] : (T)0;
                }
                v[u] = value;
            }
        }
        store_vec<4>(cols + 4 * q, v);
    }
}
""",
    "col2im_nhwc": r"""
// ---- col2im: one thread per input element gathers every window position that covers it,
// in kernel-offset order, from the pixel-major gradient columns (row stride LD); the
// gradient of the padding is never formed.
extern "C" __global__ void col2im_nhwc(
    const T* __restrict__ grad_cols, T* __restrict__ grad_x, const int total)
{
    FOR_EACH(idx, total) {
        int n, h, w, c;
        unravel4(idx, H, W, C, n, h, w, c);
        T sum = (T)0;
        for (int i = 0; i < KH; ++i) {
            const int t = h + PT - i;
            if (t < 0 || t % SH != 0 || t / SH >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int u = w + PL - j;
                if (u < 0 || u % SW != 0 || u / SW >= OW) continue;
                const int row = (n * OH + t / SH) * OW + u / SW;
                sum += grad_cols[row * LD + (i * KW + j) * C + c];
            }
        }
        grad_x[idx] = sum;
    }
}
""",
    "max_pool_nhwc": r"""
// ---- max pooling (optionally followed by ReLU): one thread per V channels of one output
// pixel. NaN propagates as in maximum(); ReLU maps every non-positive maximum to 0.
extern "C" __global__ void max_pool_nhwc(
    const T* __restrict__ x, T* __restrict__ out, const int total)
{
    FOR_EACH(q, total) {
        int n, oh, ow, cv;
        unravel4(q, OH, OW, C / V, n, oh, ow, cv);
        const T* corner = x + ((n * H + oh * SH) * W + ow * SW) * C + cv * V;
        T best[V];
        load_vec<V>(corner, best);
        for (int i = 0; i < KH; ++i) {
            for (int j = 0; j < KW; ++j) {
                T v[V];
                load_vec<V>(corner + (i * W + j) * C, v);
                for (int u = 0; u < V; ++u) {
                    if (v[u] > best[u] || v[u] != v[u]) best[u] = v[u];
                }
            }
        }
        for (int u = 0; u < V; ++u) best[u] = (RELU && best[u] <= (T)0) ? (T)0 : best[u];
        store_vec<V>(out + q * V, best);
    }
}
""",
    "max_pool_backward_tiled": r"""
// ---- max-pool backward for windows that do not overlap (stride >= pool): one thread per V
// channels of one output pixel writes every input element of its tile: the rows from its
// window's top to the next window's (to the image's bottom for the last row of windows),
// likewise the columns. The window's FIRST maximum (row-major) receives the output's
// gradient, every other element 0; a window holding NaN passes none, nor, with RELU, one
// whose maximum is not positive.
extern "C" __global__ void max_pool_backward_tiled(
    const T* __restrict__ grad_out, const T* __restrict__ x, T* __restrict__ grad_x,
    const int total)
{
    FOR_EACH(q, total) {
        int n, oh, ow, cv;
        unravel4(q, OH, OW, C / V, n, oh, ow, cv);
        const int top = oh * SH, left = ow * SW;
        const int first = ((n * H + top) * W + left) * C + cv * V;
        T best[V], g[V];
        int arg[V];
        bool has_nan[V];
        load_vec<V>(x + first, best);
        for (int u = 0; u < V; ++u) {
            arg[u] = 0;
            has_nan[u] = best[u] != best[u];
        }
        for (int i = 0; i < KH; ++i) {
            for (int j = 0; j < KW; ++j) {
                T v[V];
                load_vec<V>(x + first + (i * W + j) * C, v);
                for (int u = 0; u < V; ++u) {
                    has_nan[u] = has_nan[u] || v[u] != v[u];
                    if (v[u] > best[u]) {
                        best[u] = v[u];
                        arg[u] = i * KW + j;
                    }
                }
            }
        }
        load_vec<V>(grad_out + q * V, g);
        for (int u = 0; u < V; ++u) {
            if (has_nan[u] || (RELU && !(best[u] > (T)0))) g[u] = (T)0;
        }
        const int rows = oh == OH - 1 ? H - top : SH;
        const int columns = ow == OW - 1 ? W - left : SW;
        for (int i = 0; i < rows; ++i) {
            for (int j = 0; j < columns; ++j) {
                T v[V];
                for (int u = 0; u < V; ++u) {
                    v[u] = (i < KH && j < KW && i * KW + j == arg[u]) ? g[u] : (T)0;
                }
                store_vec<V>(grad_x + first + (i * W + j) * C, v);
            }
        }
    }
}
""",
    "max_pool_backward_nhwc": r"""
// ---- max-pool backward for overlapping windows (stride < pool): one thread per input
// element; it receives the gradient of every window whose FIRST maximum (row-major) it is. With RELU, `out` is the ReLU output and
// windows whose output is not positive pass no gradient.
extern "C" __global__ void max_pool_backward_nhwc(
    const T* __restrict__ grad_out, const T* __restrict__ x, const T* __restrict__ out,
    T* __restrict__ grad_x, const int total)
{
    FOR_EACH(idx, total) {
        int n, h, w, c;
        unravel4(idx, H, W, C, n, h, w, c);
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
                if (value != best || (RELU && !(best > (T)0))) continue;
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
""",
}

SLOTS = 8  # parameters updated by one optimizer launch (the reference network has 8)


def _slot_arguments(pattern: str) -> str:
    return ",\n    ".join(pattern.format(i=i) for i in range(SLOTS))


def _slot_select(**fields: str) -> str:
    """Declarations of ``fields`` (variable -> C type) and a switch on blockIdx.y that sets
    each from slot i's argument (the variable's name, then i).

    A switch on a value uniform over the block; arrays of the arguments indexed by it were
    placed in per-thread local memory, which cost 95 us per update of the reference network
    on an NVIDIA H200.
    """
    declarations = "".join(f"    {kind} {var};\n" for var, kind in fields.items())
    cases = "".join(
        f"        case {i}: " + " ".join(f"{var} = {var}{i};" for var in fields) + " break;\n"
        for i in range(SLOTS)
    )
    return f"{declarations}    switch (blockIdx.y) {{\n{cases}        default: return;\n    }}"


# Optimizer updates over up to SLOTS parameters per launch: blockIdx.y picks the parameter,
# so every parameter of the network is updated by one launch instead of ~4 each. Unused
# slots have n = 0. Arithmetic follows the standard code of gpucnn.optim step for step.
OPTIMIZER_SOURCE = f"""
// ---- SGD (PyTorch convention): g += decay * p; v = momentum * v + g;
// p -= lr * v, or with Nesterov p -= lr * (g + momentum * v); momentum 0: p -= lr * g.
extern "C" __global__ void sgd_multi(
    {_slot_arguments("T* p{i}, const T* g{i}, T* v{i}, const int n{i}, const T d{i}")},
    const T lr, const T momentum, const int nesterov)
{{
{_slot_select(p="T*", g="const T*", v="T*", n="int", d="T")}
    FOR_EACH(idx, n) {{
        const T gradient = g[idx] + d * p[idx];
        if (momentum == (T)0) {{
            p[idx] -= lr * gradient;
            continue;
        }}
        const T velocity = v[idx] * momentum + gradient;
        v[idx] = velocity;
        p[idx] -= lr * (nesterov ? gradient + momentum * velocity : velocity);
    }}
}}

// ---- Adam with bias correction (step = lr / (1 - beta1**t), root_correction2 =
// sqrt(1 - beta2**t)); decoupled weight decay (AdamW): p -= decay_step * p first.
extern "C" __global__ void adam_multi(
    {_slot_arguments("T* p{i}, const T* g{i}, T* m{i}, T* v{i}, const int n{i}, const T d{i}")},
    const T step, const T beta1, const T beta2, const T eps, const T root_correction2,
    const T one_minus_beta1, const T one_minus_beta2)
{{
{_slot_select(p="T*", g="const T*", m="T*", v="T*", n="int", d="T")}
    FOR_EACH(idx, n) {{
        const T gradient = g[idx];
        const T first = m[idx] * beta1 + one_minus_beta1 * gradient;
        const T second = v[idx] * beta2 + one_minus_beta2 * (gradient * gradient);
        m[idx] = first;
        v[idx] = second;
        T param = p[idx];
        param -= d * param;
        p[idx] = param - step * (first / (SQRT(second) / root_correction2 + eps));
    }}
}}
"""

PRELUDE = {
    "float32": "typedef float T;\n#define EXP expf\n#define LOG logf\n#define SQRT sqrtf\n",
    "float64": "typedef double T;\n#define EXP exp\n#define LOG log\n#define SQRT sqrt\n",
}

# Loads and stores of V consecutive elements (V = 1 or 4) for the shape kernels: four
# elements move as one 16-byte access (float4; two double2 for float64), which needs
# addresses that are multiples of 4 elements (the launchers check the base addresses).
VECTOR_IO = {
    "float32": r"""
#define VEC4_LOAD(p, v) { const float4 q = *reinterpret_cast<const float4*>(p); \
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w; }
#define VEC4_STORE(p, v) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
""",
    "float64": r"""
#define VEC4_LOAD(p, v) { const double2 a = reinterpret_cast<const double2*>(p)[0]; \
    const double2 b = reinterpret_cast<const double2*>(p)[1]; \
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y; }
#define VEC4_STORE(p, v) { reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]); \
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]); }
""",
}
VECTOR_IO_COMMON = r"""
template <int WIDTH> __device__ __forceinline__ void load_vec(const T* p, T* v)
{
    if (WIDTH == 4) VEC4_LOAD(p, v) else for (int u = 0; u < WIDTH; ++u) v[u] = p[u];
}
template <int WIDTH> __device__ __forceinline__ void store_vec(T* p, const T* v)
{
    if (WIDTH == 4) VEC4_STORE(p, v) else for (int u = 0; u < WIDTH; ++u) p[u] = v[u];
}
"""


def full_source(dtype_name: str) -> str:
    """The CUDA C source of the kernels compiled once per element type ``dtype_name``
    ("float32" or "float64")."""
    return (
        PRELUDE[dtype_name]
        + f"#define THREADS {THREADS}\n#define SLOTS {SLOTS}\n"
        + COMMON
        + SOURCE
        + OPTIMIZER_SOURCE
    )


def shaped_source(name: str, dtype_name: str, sizes: dict[str, int]) -> str:
    """The CUDA C source of shape kernel ``name`` with ``sizes`` (macro name -> value)."""
    defines = "".join(f"#define {key} {int(value)}\n" for key, value in sizes.items())
    return (
        PRELUDE[dtype_name]
        + VECTOR_IO[dtype_name]
        + COMMON
        + defines
        + VECTOR_IO_COMMON
        + SHAPED_SOURCE[name]
    )


# --fmad=false: no fused multiply-adds, so element-wise results round as the standard code's
# separate operations do
OPTIONS = ("--std=c++11", "--fmad=false")


@cache
def _module(dtype_name: str) -> cupy.RawModule:
    return cupy.RawModule(code=full_source(dtype_name), options=OPTIONS)


def _kernel(name: str, dtype) -> cupy.RawKernel:
    return _module(np.dtype(dtype).name).get_function(name)


@cache  # never evicted: a recorded CUDA graph may launch a kernel of any shape seen so far
def _shaped_kernel(name: str, dtype_name: str, sizes: tuple) -> cupy.RawKernel:
    source = shaped_source(name, dtype_name, dict(sizes))
    return cupy.RawModule(code=source, options=OPTIONS).get_function(name)


def _aligned4(*arrays) -> bool:
    """True when every array starts at a multiple of 4 elements' bytes (16 bytes for float32):
    what the vector loads and stores of :data:`VECTOR_IO` need."""
    return all(a.data.ptr % (4 * a.itemsize) == 0 for a in arrays)


def _vector_width(C: int, *arrays) -> int:
    """4 channels per thread where ``C`` is a multiple of 4 and the arrays are aligned, else 1."""
    return 4 if C % 4 == 0 and _aligned4(*arrays) else 1


def _launch_shaped(name: str, dtype, total: int, arrays: tuple, **sizes: int) -> None:
    """Launch shape kernel ``name`` over ``total`` elements, compiled for ``sizes``."""
    kernel = _shaped_kernel(name, np.dtype(dtype).name, tuple(sizes.items()))
    blocks = min(max(-(-total // THREADS), 1), MAX_BLOCKS)
    kernel((blocks,), (THREADS,), (*arrays, np.int32(total)))


def _supported(*arrays) -> bool:
    """True when every array is float32/float64, C-contiguous and small enough for int32
    (launchers make their inputs contiguous first, see :func:`_contiguous`)."""
    return all(
        a.dtype.name in PRELUDE and a.flags.c_contiguous and a.size <= INT_LIMIT for a in arrays
    )


def _contiguous(a):
    """``a`` itself when C-contiguous, else a C-contiguous copy (one launch).

    A copy costs one pass, far less than the standard code's chain of kernels; a gradient
    arrives strided, e.g., from Flatten's backward (a permuted view).
    """
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


def _launch(name: str, dtype, total: int, args: tuple) -> None:
    blocks = min(max(-(-total // THREADS), 1), MAX_BLOCKS)
    _kernel(name, dtype)((blocks,), (THREADS,), args)


def _ints(*values: int) -> tuple:
    return tuple(np.int32(v) for v in values)


def aligned(columns: int) -> int:
    """``columns`` rounded up to a multiple of 4.

    Rows of a multiple of 16 bytes let cuBLAS take its vectorised GEMM kernels; with the
    reference network's 289 columns it ran its ``align1`` kernels.
    """
    return -(-columns // 4) * 4


def im2col(x, kernel, stride, padding, bias_column: bool):
    """Padded im2col in one launch, or None.

    x (N, H, W, C) -> cols (N, OH, OW, ld): the KH*KW*C window columns, a column of ones if
    ``bias_column``, then zero columns up to ``ld = aligned(...)``.
    """
    x = _contiguous(x)
    N, H, W, C = x.shape
    (KH, KW), (SH, SW), (PT, PB, PL, PR) = kernel, stride, padding
    OH, OW = (H + PT + PB - KH) // SH + 1, (W + PL + PR - KW) // SW + 1
    K = KH * KW * C
    cols = cupy.empty((N, OH, OW, aligned(K + int(bias_column))), dtype=x.dtype)
    if not _supported(x, cols):
        return None
    vector = int(C % 4 == 0 and _aligned4(x))
    _launch_shaped(
        "im2col_nhwc", x.dtype, cols.size // 4, (x, cols), H=H, W=W, C=C, KW=KW, SH=SH, SW=SW,
        PT=PT, PL=PL, OH=OH, OW=OW, K=K, K1=cols.shape[3], BIAS=int(bias_column),
        V=4 if vector else 1,
    )  # fmt: skip
    return cols


def conv_weight_matrix(weight, bias, rows: int):
    """(F, C, KH, KW) weight (and (F,) bias) -> the (rows, F) right GEMM operand of im2col's
    columns, in one launch; None if not applicable."""
    weight, bias = _contiguous(weight), None if bias is None else _contiguous(bias)
    F, C, KH, KW = weight.shape
    out = cupy.empty((rows, F), dtype=weight.dtype)
    arrays = (weight, out) if bias is None else (weight, bias, out)
    if not _supported(*arrays) or len({a.dtype for a in arrays}) != 1:
        return None
    _launch(
        "conv_weight_matrix",
        out.dtype,
        out.size,
        (weight, weight if bias is None else bias, out, *_ints(out.size, F, C, KH, KW, bias is not None)),
    )  # fmt: skip
    return out


def col2im(grad_cols, x_shape, kernel, stride, padding):
    """Gradient of :func:`im2col` w.r.t. the unpadded input, one thread per input element.

    grad_cols : (N*OH*OW, ld) pixel-major, its first KH*KW*C columns ordered (KH, KW, C).
    Returns (N, H, W, C), or None if not applicable.
    """
    N, H, W, C = x_shape
    (KH, KW), (SH, SW), (PT, PB, PL, PR) = kernel, stride, padding
    OH, OW = (H + PT + PB - KH) // SH + 1, (W + PL + PR - KW) // SW + 1
    grad_cols = _contiguous(grad_cols)
    grad_x = cupy.empty(x_shape, dtype=grad_cols.dtype)
    if not _supported(grad_cols, grad_x):
        return None
    _launch_shaped(
        "col2im_nhwc", grad_x.dtype, grad_x.size, (grad_cols, grad_x), H=H, W=W, C=C, KH=KH,
        KW=KW, SH=SH, SW=SW, PT=PT, PL=PL, OH=OH, OW=OW, LD=grad_cols.shape[1],
    )  # fmt: skip
    return grad_x


def max_pool(x, pool, stride, relu: bool):
    """Max pooling (then ReLU if asked) in one launch: (N, H, W, C) -> (N, OH, OW, C)."""
    x = _contiguous(x)
    N, H, W, C = x.shape
    (KH, KW), (SH, SW) = pool, stride
    OH, OW = (H - KH) // SH + 1, (W - KW) // SW + 1
    out = cupy.empty((N, OH, OW, C), dtype=x.dtype)
    if not _supported(x, out):
        return None
    V = _vector_width(C, x)
    _launch_shaped(
        "max_pool_nhwc", x.dtype, out.size // V, (x, out), H=H, W=W, C=C, KH=KH, KW=KW, SH=SH,
        SW=SW, OH=OH, OW=OW, RELU=int(relu), V=V,
    )  # fmt: skip
    return out


def max_pool_backward(grad_out, x, out, pool, stride, relu: bool):
    """Route each output gradient to its window's first maximum: one thread per output tile
    for windows that do not overlap, else gathered per input element."""
    grad_out, x, out = _contiguous(grad_out), _contiguous(x), _contiguous(out)
    N, H, W, C = x.shape
    (KH, KW), (SH, SW) = pool, stride
    _, OH, OW, _ = out.shape
    grad_x = cupy.empty(x.shape, dtype=grad_out.dtype)
    if not _supported(grad_out, x, out, grad_x) or len({grad_out.dtype, x.dtype}) != 1:
        return None
    if out.size == 0:  # no window: no thread would write
        grad_x.fill(0)
        return grad_x
    sizes = dict(H=H, W=W, C=C, KH=KH, KW=KW, SH=SH, SW=SW, OH=OH, OW=OW, RELU=int(relu))
    if SH >= KH and SW >= KW:  # windows do not overlap: one thread per output writes its tile
        V = _vector_width(C, grad_out, x)
        arrays = (grad_out, x, grad_x)
        _launch_shaped("max_pool_backward_tiled", x.dtype, out.size // V, arrays, **sizes, V=V)
    else:
        arrays = (grad_out, x, out, grad_x)
        _launch_shaped("max_pool_backward_nhwc", x.dtype, grad_x.size, arrays, **sizes)
    return grad_x


def relu_backward(grad_out, out):
    """``grad_out * (out > 0)`` in one launch, or None."""
    if grad_out.shape != out.shape or grad_out.dtype != out.dtype:
        return None
    grad_out, out = _contiguous(grad_out), _contiguous(out)
    grad_x = cupy.empty_like(grad_out)
    if not _supported(grad_out, out, grad_x):
        return None
    _launch("relu_backward", out.dtype, out.size, (grad_out, out, grad_x, np.int32(out.size)))
    return grad_x


def erf(x):
    """``cupyx.scipy.special.erf``: one CuPy element-wise kernel where the standard code runs
    ~200 (not NVRTC source of this module: CuPy compiles and caches it), or None."""
    if x.dtype.name not in PRELUDE:
        return None
    from cupyx.scipy.special import erf as cupy_erf

    return cupy_erf(x)


def softmax_cross_entropy(logits, labels):
    """Mean loss (0-d), gradient (N, K) and the count of correct argmaxes (0-d int64), or None.

    One block of :data:`THREADS` threads: a training batch has few rows, and one block sums
    the row losses in a fixed order without atomics.
    """
    logits = _contiguous(logits)
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


# The BatchNorm kernels have been compiled (NVRTC, in the test suite) but not yet run on a GPU:
# they stay off unless GPUCNN_CUDA_BATCH_NORM=1, and the standard code runs instead.
BATCH_NORM_ENV = "GPUCNN_CUDA_BATCH_NORM"


def _switched_on(env: str) -> bool:
    """Whether the off-by-default switch ``env`` is set to 1 (kernels not yet run on a GPU)."""
    import os

    return os.environ.get(env, "0").strip() == "1"


def batch_norm_apply(x, scale, shift, relu: bool):
    """``x * scale + shift`` per channel (last axis), then ReLU if ``relu``: one launch, or
    None (kernels switched off, or arrays the kernel does not take)."""
    if not _switched_on(BATCH_NORM_ENV) or x.ndim < 1 or scale.dtype != x.dtype:
        return None
    x = _contiguous(x)
    scale, shift = _contiguous(scale.astype(x.dtype)), _contiguous(shift.astype(x.dtype))
    out = cupy.empty_like(x)
    if not _supported(x, scale, shift, out):
        return None
    args = (x, scale, shift, out, *_ints(x.size, x.shape[-1], int(relu)))
    _launch("batch_norm_apply", x.dtype, x.size, args)
    return out


def batch_norm_input_grad(grad, x, mean, a, b, k):
    """``grad * a + (x - mean) * b + k`` per channel (last axis): one launch, or None."""
    if not _switched_on(BATCH_NORM_ENV) or grad.shape != x.shape or grad.dtype != x.dtype:
        return None
    grad, x = _contiguous(grad), _contiguous(x)
    factors = [_contiguous(v.astype(x.dtype)) for v in (mean, a, b, k)]
    grad_x = cupy.empty_like(x)
    if not _supported(grad, x, grad_x, *factors):
        return None
    args = (grad, x, *factors, grad_x, *_ints(x.size, x.shape[-1]))
    _launch("batch_norm_input_grad", x.dtype, x.size, args)
    return grad_x


def hashed_uniform(key: int, shape: tuple[int, ...], dtype):
    """Counter-based uniform samples of ``shape`` for draw ``key`` (one launch), or None."""
    out = cupy.empty(shape, dtype=dtype)
    if not _supported(out):
        return None
    _launch("hashed_uniform", out.dtype, out.size, (out, np.uint64(key), np.int32(out.size)))
    return out


def _uniform_buffers(slots: list[tuple]) -> bool:
    """True when every buffer is a C-contiguous CuPy array of one float dtype, small enough
    for int32 indexing, and each slot's buffers have one size."""
    arrays = [a for slot in slots for a in slot]
    return (
        bool(arrays)
        and all(isinstance(a, cupy.ndarray) for a in arrays)
        and _supported(*arrays)
        and len({a.dtype for a in arrays}) == 1
        and all(len({a.size for a in slot}) == 1 for slot in slots)
    )


def _launch_slots(name: str, slots: list[tuple], empty: tuple, tail: tuple) -> None:
    """Launch ``name`` over ``slots`` ((buffers..., decay) per parameter), SLOTS at a time:
    each slot passes its buffers, its size and its decay; ``tail`` ends the argument list."""
    for start in range(0, len(slots), SLOTS):
        group = slots[start : start + SLOTS]
        arguments = []
        for index in range(SLOTS):
            *buffers, decay = group[index] if index < len(group) else empty
            size = buffers[0].size if index < len(group) else 0
            arguments += [*buffers, np.int32(size), decay]
        largest = max(slot[0].size for slot in group)
        blocks = min(max(-(-largest // THREADS), 1), 1024)
        _kernel(name, group[0][0].dtype)((blocks, len(group)), (THREADS,), (*arguments, *tail))


def sgd_multi(slots, lr: float, momentum: float, nesterov: bool) -> bool:
    """SGD update of every ``(param, grad, velocity, decay)`` in place, SLOTS per launch.

    ``velocity`` is ignored (pass ``param``) when momentum is 0. Returns False, having changed
    nothing, when the kernels do not apply.
    """
    slots = [(p, cupy.ascontiguousarray(g), v, d) for p, g, v, d in slots]
    if not _uniform_buffers([(p, g, v) for p, g, v, _ in slots]):
        return False
    t = slots[0][0].dtype.type
    typed = [(p, g, v, t(d)) for p, g, v, d in slots]
    p0 = typed[0][0]
    _launch_slots("sgd_multi", typed, (p0, p0, p0, t(0)), (t(lr), t(momentum), np.int32(nesterov)))
    return True


def adam_multi(slots, step: float, beta1, beta2, eps, root_correction2) -> bool:
    """Adam update of every ``(param, grad, m, v, decay_step)`` in place, SLOTS per launch;
    False, having changed nothing, when the kernels do not apply."""
    slots = [(p, cupy.ascontiguousarray(g), m, v, d) for p, g, m, v, d in slots]
    if not _uniform_buffers([(p, g, m, v) for p, g, m, v, _ in slots]):
        return False
    t = slots[0][0].dtype.type
    typed = [(p, g, m, v, t(d)) for p, g, m, v, d in slots]
    p0 = typed[0][0]
    _launch_slots(
        "adam_multi",
        typed,
        (p0, p0, p0, p0, t(0)),
        # 1 - beta in double, rounded once, as the standard code computes it
        (t(step), t(beta1), t(beta2), t(eps), t(root_correction2), t(1.0 - beta1), t(1.0 - beta2)),
    )
    return True


# ------------------------------------------------------------------ GEMM for CUDA graphs
# CuPy refuses any cuBLAS call while a stream is captured into a CUDA graph (its binding
# raises before cublasSetStream), although cuBLAS itself supports capture given a workspace
# of its own. So a captured training step calls cublasSgemm/cublasDgemm through ctypes on a
# handle of ours, whose stream is set before the capture begins.
#
# 16-bit operands (mixed precision) go to cublasGemmEx with float32 accumulation
# (CUBLAS_COMPUTE_32F), so their steps can be captured too. That call has not yet run on a GPU:
# it stays off unless GPUCNN_CUDA_HALF_GEMM=1, and 16-bit GEMMs take CuPy's matmul (eager
# steps, as a capture refuses it).
HALF_GEMM_ENV = "GPUCNN_CUDA_HALF_GEMM"
CUDA_DATA_TYPES = {"float16": 2, "bfloat16": 14}  # cudaDataType CUDA_R_16F, CUDA_R_16BF
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1


class _Cublas:
    """A cuBLAS handle with its own workspace, called through ctypes."""

    WORKSPACE_BYTES = 32 * 2**20

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(_cublas_path())
        handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self.workspace = cupy.empty(self.WORKSPACE_BYTES, dtype=cupy.uint8)
        self._set_workspace()
        self.stream = None
        self.one = {t: np.ones(1, dtype=t) for t in (np.float32, np.float64)}
        self.zero = {t: np.zeros(1, dtype=t) for t in (np.float32, np.float64)}

    def _set_workspace(self) -> None:
        c = self.ctypes
        self._check(
            self.lib.cublasSetWorkspace_v2(
                self.handle, c.c_void_p(self.workspace.data.ptr), c.c_size_t(self.WORKSPACE_BYTES)
            ),
            "cublasSetWorkspace",
        )

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def use_stream(self, stream_ptr: int) -> None:
        if stream_ptr != self.stream:
            self._check(
                self.lib.cublasSetStream_v2(self.handle, self.ctypes.c_void_p(stream_ptr)),
                "cublasSetStream",
            )
            self._set_workspace()  # cublasSetStream resets the workspace to cuBLAS's own pool
            self.stream = stream_ptr

    def gemm(self, a, b, out) -> None:
        """out (M, N) = a (M, K) @ b (K, N); row-major operands, each C- or F-contiguous.

        cuBLAS is column-major: it computes out^T = b^T a^T, and a C-contiguous row-major
        matrix is its own transpose in column-major order (an F-contiguous one is not).
        """
        c = self.ctypes
        M, K = a.shape
        N = b.shape[1]
        op_b, ld_b = (0, N) if b.flags.c_contiguous else (1, K)
        op_a, ld_a = (0, K) if a.flags.c_contiguous else (1, M)
        self.use_stream(cupy.cuda.get_current_stream().ptr)
        if out.dtype.name in CUDA_DATA_TYPES:
            self._gemm_ex(a, b, out, (op_a, ld_a), (op_b, ld_b))
            return
        t = np.float32 if out.dtype == np.float32 else np.float64
        function = self.lib.cublasSgemm_v2 if t is np.float32 else self.lib.cublasDgemm_v2
        status = function(
            self.handle, c.c_int(op_b), c.c_int(op_a), c.c_int(N), c.c_int(M), c.c_int(K),
            c.c_void_p(self.one[t].ctypes.data), c.c_void_p(b.data.ptr), c.c_int(max(ld_b, 1)),
            c.c_void_p(a.data.ptr), c.c_int(max(ld_a, 1)), c.c_void_p(self.zero[t].ctypes.data),
            c.c_void_p(out.data.ptr), c.c_int(max(N, 1)),
        )  # fmt: skip
        self._check(status, "cublasGemm")

    def _gemm_ex(self, a, b, out, a_layout: tuple[int, int], b_layout: tuple[int, int]) -> None:
        """:meth:`gemm` for 16-bit operands: cublasGemmEx, products summed in float32 (alpha
        and beta are then float32), the result rounded once to the operands' type."""
        c = self.ctypes
        (op_a, ld_a), (op_b, ld_b) = a_layout, b_layout
        M, K = a.shape
        N = b.shape[1]
        kind = c.c_int(CUDA_DATA_TYPES[out.dtype.name])
        status = self.lib.cublasGemmEx(
            self.handle, c.c_int(op_b), c.c_int(op_a), c.c_int(N), c.c_int(M), c.c_int(K),
            c.c_void_p(self.one[np.float32].ctypes.data),
            c.c_void_p(b.data.ptr), kind, c.c_int(max(ld_b, 1)),
            c.c_void_p(a.data.ptr), kind, c.c_int(max(ld_a, 1)),
            c.c_void_p(self.zero[np.float32].ctypes.data),
            c.c_void_p(out.data.ptr), kind, c.c_int(max(N, 1)),
            c.c_int(CUBLAS_COMPUTE_32F), c.c_int(CUBLAS_GEMM_DEFAULT),
        )  # fmt: skip
        self._check(status, "cublasGemmEx")


def _cublas_path() -> str:
    """The cuBLAS library this process uses (loaded by CuPy's first GEMM)."""
    cupy.matmul(cupy.ones((2, 2), dtype=cupy.float32), cupy.ones((2, 2), dtype=cupy.float32))
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            name = path.rsplit("/", 1)[-1]
            if name.startswith("libcublas.so"):
                return path
    raise RuntimeError(
        "expected CuPy to have loaded libcublas; found no libcublas.so in this process"
    )


_per_thread = threading.local()


def cublas() -> _Cublas:
    """This thread's :class:`_Cublas` for the current device (created on first use): a handle
    switches streams and holds one workspace, so threads that train side by side must not
    share one, and a handle belongs to the device it was created on."""
    handles = getattr(_per_thread, "cublas", None)
    if handles is None:
        handles = _per_thread.cublas = {}
    device = cupy.cuda.runtime.getDevice()
    handle = handles.get(device)
    if handle is None:
        handle = handles[device] = _Cublas()
    return handle


def gemm(a, b):
    """``a @ b`` for 2-D float CuPy arrays, each C- or F-contiguous, through :func:`cublas`
    (16-bit ones only with ``GPUCNN_CUDA_HALF_GEMM=1``); None for any other operands."""
    if (
        a.ndim != 2
        or b.ndim != 2
        or a.shape[1] != b.shape[0]
        or a.dtype != b.dtype
        or not (
            a.dtype.name in PRELUDE
            or (a.dtype.name in CUDA_DATA_TYPES and _switched_on(HALF_GEMM_ENV))
        )
        or not (a.flags.c_contiguous or a.flags.f_contiguous)
        or not (b.flags.c_contiguous or b.flags.f_contiguous)
        or max(a.size, b.size, a.shape[0] * b.shape[1]) > INT_LIMIT
    ):
        return None
    out = cupy.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    if out.size and a.shape[1]:
        cublas().gemm(a, b, out)
    else:
        out.fill(0)
    return out
