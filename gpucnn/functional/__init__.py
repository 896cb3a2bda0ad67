"""Stateless layer math on array-API arrays, in paired ``*_forward`` / ``*_backward`` functions.

Images are channels-last ``(N, H, W, C)`` here; see :mod:`gpucnn.functional.im2col` for the
shape symbols.
"""

from .activations import (
    dropout_backward,
    dropout_forward,
    erf,
    gelu_backward,
    gelu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    tanh_backward,
    tanh_forward,
)
from .conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_relu_backward,
    conv2d_relu_forward,
    conv2d_relu_max_pool2d_backward,
    conv2d_relu_max_pool2d_forward,
)
from .dense import dense_backward, dense_forward
from .im2col import col2im, im2col, output_size, pad2d, resolve_padding, unpad2d
from .losses import (
    add_batch_sums,
    check_labels,
    count_correct,
    log_softmax,
    softmax,
    softmax_cross_entropy,
)
from .normalization import batch_norm_backward, batch_norm_forward, batch_norm_statistics
from .pooling import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)

__all__ = [
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_statistics",
    "check_labels",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_relu_backward",
    "conv2d_relu_forward",
    "conv2d_relu_max_pool2d_backward",
    "conv2d_relu_max_pool2d_forward",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "erf",
    "gelu_backward",
    "gelu_forward",
    "global_avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "im2col",
    "leaky_relu_backward",
    "leaky_relu_forward",
    "log_softmax",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "output_size",
    "pad2d",
    "relu_backward",
    "relu_forward",
    "resolve_padding",
    "sigmoid_backward",
    "sigmoid_forward",
    "silu_backward",
    "silu_forward",
    "softmax",
    "softmax_cross_entropy",
    "tanh_backward",
    "tanh_forward",
    "add_batch_sums",
    "count_correct",
    "unpad2d",
]
