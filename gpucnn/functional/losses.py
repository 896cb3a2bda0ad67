"""Softmax and softmax cross-entropy, computed through log-sum-exp (never exp of raw logits)."""

from __future__ import annotations

from ..backend import Array, namespace
from ._dispatch import cuda_kernels


def log_softmax(logits: Array) -> Array:
    """Row-wise log-softmax of (N, K) logits, shifted by the row maximum for stability."""
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax(logits: Array) -> Array:
    """Row-wise softmax of (N, K) logits: probabilities that sum to 1 per row."""
    return namespace(logits).exp(log_softmax(logits))


def check_labels(
    labels: Array, num_samples: int, num_classes: int, check_range: bool = True
) -> None:
    """Raise ``ValueError`` unless ``labels`` is an integer vector of length N in [0, K).

    ``check_range`` reads two numbers back from the device; callers that validated the
    whole dataset up front pass False to keep the batch loop free of synchronisation.
    """
    xp = namespace(labels)
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"expected labels of shape ({num_samples},); received shape {tuple(labels.shape)}"
        )
    if not xp.isdtype(labels.dtype, "integral"):
        raise ValueError(f"expected integer class labels; received dtype {labels.dtype}")
    if check_range and num_samples:
        low, high = int(xp.min(labels)), int(xp.max(labels))
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"expected labels in [0, {num_classes - 1}]; received labels in [{low}, {high}]"
            )


def softmax_cross_entropy(
    logits: Array, labels: Array, check_range: bool = True, label_smoothing: float = 0.0
) -> tuple[Array, Array]:
    """Mean softmax cross-entropy over the batch and its gradient.

    Parameters
    ----------
    logits : array of shape (N, K)
    labels : integer array of shape (N,) with values in [0, K)
    check_range : see :func:`check_labels`
    label_smoothing : epsilon in [0, 1): the target puts ``1 - epsilon + epsilon / K`` on the
        label and ``epsilon / K`` on every other class (PyTorch's and Keras's convention).

    Returns
    -------
    loss : 0-d array, ``mean(-sum_k target[n, k] * log softmax(logits)[n, k])``
    grad_logits : array of shape (N, K), ``(softmax(logits) - target) / N``
    """
    xp = namespace(logits, labels)
    N, K = logits.shape
    check_labels(labels, N, K, check_range)
    cuda = cuda_kernels(xp) if label_smoothing == 0.0 else None
    fused = cuda.softmax_cross_entropy(logits, labels) if cuda else None
    if fused is not None:
        return fused[0], fused[1]
    log_probs = log_softmax(logits)
    onehot = xp.expand_dims(labels, axis=1) == xp.arange(K, dtype=labels.dtype)
    if label_smoothing == 0.0:
        loss = -xp.sum(xp.where(onehot, log_probs, 0.0)) / N
        target = xp.astype(onehot, logits.dtype)
    else:
        target = xp.astype(onehot, logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K
        loss = -xp.sum(target * log_probs) / N
    grad = (xp.exp(log_probs) - target) / N
    return loss, grad


def count_correct(logits: Array, labels: Array) -> Array:
    """Number of rows of (N, K) ``logits`` whose argmax equals ``labels`` (an int64 0-d array)."""
    xp = namespace(logits, labels)
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64))


def add_batch_sums(sums: Array, loss: Array, logits: Array, labels: Array) -> None:
    """Add one batch to running sums in place, on the device (no host read).

    Parameters
    ----------
    sums : (2,) float64, the summed loss (each batch's mean loss times its N) and the number
        of correct predictions.
    loss : 0-d mean loss of the batch.
    logits : (N, K).
    labels : (N,) integer.
    """
    xp = namespace(sums)
    sums[0] = sums[0] + xp.astype(loss, xp.float64) * labels.shape[0]
    sums[1] = sums[1] + xp.astype(count_correct(logits, labels), xp.float64)
