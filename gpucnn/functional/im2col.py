"""Window geometry shared by convolution and pooling: output sizes, padding, im2col, col2im.

Shape symbols (used as local names throughout ``gpucnn.functional`` and ``gpucnn.layers``)::

    N       batch size
    H, W    input height and width (after padding where it says "padded")
    C       input channels
    F       filters (output channels of a convolution)
    KH, KW  kernel / pooling window height and width
    SH, SW  stride along height and width
    PT, PB  padding at the top and bottom;  PL, PR  at the left and right
    OH, OW  output height and width
    L       columns of an im2col row: KH*KW*C, plus one of ones for the bias
    PKH, PKW  the pooling window (and its stride) of a fused convolution + max-pool
    PH, PW  pooled height and width
    D       PKH*PKW: the phases, one per offset (di, dj) within a pooling window

Layout: inside the library images are **channels-last**, ``(N, H, W, C)``. With that layout
the im2col matrix is ``(N*OH*OW, KH*KW*C)`` and the convolution's GEMM result
``(N*OH*OW, F)`` already *is* the ``(N, OH, OW, F)`` output, so no transpose is needed between
layers. :class:`gpucnn.Sequential` converts from and to the public ``(N, C, H, W)`` at its
boundary.

Every loop here runs over the KH*KW kernel offsets, never over samples or pixels: each
iteration moves one strided slice of the whole batch.
"""

from __future__ import annotations

from ..backend import Array, namespace
from ..resources import check_arrays
from ..validation import ArgumentError, is_int
from ._numpy_kernels import fill_windows_fast

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]  # (PT, PB, PL, PR)


def as_pair(value: int | tuple[int, int], name: str, minimum: int = 1) -> Pair:
    """Normalise an int or a pair of ints to a pair, checking each is >= ``minimum``."""
    if is_int(value):  # NumPy integers count, bools do not
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ArgumentError(
            f"expected {name} to be an int or a pair of ints; received {value!r} "
            f"({type(value).__name__})"
        )
    if min(pair) < minimum:
        raise ArgumentError(f"expected {name} >= {minimum}; received {value!r}")
    return pair


def output_size(
    size: int, kernel: int, stride: int, pad_before: int = 0, pad_after: int = 0
) -> int:
    """Number of window positions along one axis: ``(size + pads - kernel) // stride + 1``.

    Returns 0 or less when the window does not fit.
    """
    return (size + pad_before + pad_after - kernel) // stride + 1


def resolve_padding(
    padding: int | tuple[int, int] | str, kernel: Pair, stride: Pair, size: Pair
) -> Padding:
    """Turn a padding request into explicit ``(PT, PB, PL, PR)``.

    Parameters
    ----------
    padding : an int, a pair ``(PH, PW)`` applied to both sides, ``"valid"`` (no padding) or
        ``"same"`` (output size ``ceil(size / stride)``; an odd total splits with the extra
        row/column at the bottom/right, as TensorFlow does).
    kernel, stride, size : ``(KH, KW)``, ``(SH, SW)`` and the unpadded ``(H, W)``.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode != "same":
            raise ValueError(
                f"expected padding 'same', 'valid', an int or a pair; received {padding!r}"
            )
        pads = []
        for n, k, s in zip(size, kernel, stride, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    PH, PW = as_pair(padding, "padding", minimum=0)
    return (PH, PH, PW, PW)


def window_slice(offset: int, stride: int, count: int) -> slice:
    """The slice that picks ``count`` positions ``offset, offset + stride, ...``.

    The stop is exact (never past the axis end), which the array API requires; no positions
    (``count`` <= 0) is an empty slice.
    """
    if count <= 0:
        return slice(0, 0)
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def pad2d(x: Array, padding: Padding) -> Array:
    """Zero-pad the spatial axes of ``x`` of shape (N, H, W, C) to (N, PT+H+PB, PL+W+PR, C)."""
    PT, PB, PL, PR = padding
    if PT == PB == PL == PR == 0:
        return x
    xp = namespace(x)
    N, H, W, C = x.shape
    shape = (N, PT + H + PB, PL + W + PR, C)
    check_arrays(f"the padded copy of {N} images", (shape, x.dtype), xp=xp)
    out = xp.empty(shape, dtype=x.dtype)
    # only the border is zeroed (on NumPy a full zeroing holds the GIL, which the CPU
    # threads of gpucnn.functional._cpu_threads need)
    out[:, :PT, ...] = 0
    out[:, PT + H :, ...] = 0
    out[:, PT : PT + H, :PL, ...] = 0
    out[:, PT : PT + H, PL + W :, ...] = 0
    out[:, PT : PT + H, PL : PL + W, :] = x
    return out


def unpad2d(x: Array, padding: Padding) -> Array:
    """Inverse of :func:`pad2d`: crop (N, PT+H+PB, PL+W+PR, C) back to (N, H, W, C)."""
    PT, PB, PL, PR = padding
    if PT == PB == PL == PR == 0:
        return x
    _, HP, WP, _ = x.shape
    return x[:, PT : HP - PB, PL : WP - PR, :]


def im2col(x: Array, kernel: Pair, stride: Pair, bias_column: bool = False) -> Array:
    """Gather every KH x KW window of an already padded ``x`` into one row per output pixel.

    Parameters
    ----------
    x : array of shape (N, H, W, C)
    kernel, stride : (KH, KW) and (SH, SW)
    bias_column : append a column of ones. The convolution multiplies by the weights with
        the bias as an extra row, so the GEMM adds the bias and the weight-gradient GEMM
        returns the bias gradient as its last row: two full passes over the output saved.

    Returns
    -------
    cols : array of shape (N, OH, OW, KH*KW*C [+ 1]), columns ordered (KH, KW, C);
        reshaped to (N*OH*OW, ...) it is the left operand of the convolution GEMM.
    """
    xp = namespace(x)
    N, H, W, C = x.shape
    KH, KW = kernel
    SH, SW = stride
    OH, OW = output_size(H, KH, SH), output_size(W, KW, SW)
    K = KH * KW * C
    shape = (N, OH, OW, K + int(bias_column))
    check_arrays(f"the im2col rows of {N} images", (shape, x.dtype), xp=xp)
    cols = xp.empty(shape, dtype=x.dtype)
    if bias_column:
        cols[..., K] = 1.0
    fill_windows(x, kernel, stride, cols)
    return cols


def fill_windows(x: Array, kernel: Pair, stride: Pair, cols: Array) -> None:
    """Write every window of the padded ``x`` (N, H, W, C) into ``cols[..., :KH*KW*C]``
    (N, OH, OW, >= KH*KW*C), columns ordered (KH, KW, C): the body of :func:`im2col`."""
    if fill_windows_fast(x, kernel, stride, cols):
        return
    C = x.shape[3]
    (KH, KW), (SH, SW) = kernel, stride
    _, OH, OW, _ = cols.shape
    for i in range(KH):
        rows = window_slice(i, SH, OH)
        for j in range(KW):
            first = (i * KW + j) * C
            cols[..., first : first + C] = x[:, rows, window_slice(j, SW, OW), :]


def col2im(cols: Array, padded_shape: tuple[int, int, int, int], stride: Pair) -> Array:
    """Scatter-add windows back to an image: the adjoint of :func:`im2col` (without bias column).

    Parameters
    ----------
    cols : array of shape (KH, KW, N, OH, OW, C), *offset-major*: each kernel offset's
        windows are one contiguous block, so every slice-add below reads contiguous memory
        (with the pixel-major order of :func:`im2col` the adds were 3x slower).
    padded_shape : (N, H, W, C) of the padded image the windows were taken from
    stride : (SH, SW)

    Returns
    -------
    x : array of shape ``padded_shape``; a pixel covered by several windows receives the sum.
    """
    xp = namespace(cols)
    check_arrays(
        f"the input gradient of {padded_shape[0]} images", (padded_shape, cols.dtype), xp=xp
    )
    x = xp.zeros(padded_shape, dtype=cols.dtype)
    add_windows(x, cols, stride)
    return x


def add_windows(x: Array, cols: Array, stride: Pair) -> None:
    """Add the windows ``cols`` (KH, KW, N, OH, OW, C) into the padded image ``x``
    (N, H, W, C) they came from: the body of :func:`col2im`."""
    KH, KW, _, OH, OW, _ = cols.shape
    SH, SW = stride
    for i in range(KH):
        rows = window_slice(i, SH, OH)
        for j in range(KW):
            x[:, rows, window_slice(j, SW, OW), :] += cols[i, j, ...]
