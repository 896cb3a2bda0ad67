"""Data augmentation on whole batches, on the model's device: random shifts/crops and flips.

The random choices (one flip bit and one shift per image) come from a seeded NumPy
generator on the host, so they are the same on every backend; the pixels are moved on the
device with standard array-API operations (``flip``, ``where``, one ``take``), never with a
per-image Python loop. Augmentation applies to training batches only, never to validation
or test data.

Shapes: N images per batch, C channels, H x W pixels, P the shift (padding) in pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Array, namespace, to_device
from .validation import check_array, check_bool, check_int


class Augment:
    """Random per-image translation (crop with zero padding) and horizontal flip.

    Parameters
    ----------
    shift : P >= 0: each image moves by a random (dy, dx) in [-P, P]^2 pixels, the
        uncovered border filled with zeros. This is exactly torchvision's
        ``RandomCrop(size, padding=P)``: pad P zero pixels on every side, crop an H x W
        window at a random offset. 0 turns it off.
    flip : mirror each image left-right with probability 1/2 (right for photos; wrong for
        digits and text, where a mirrored 2 is not a 2).
    seed : seeds the generator of the random choices.

    Example
    -------
    >>> Trainer(model, augment=Augment(shift=2, flip=True, seed=0)).fit(x, y)
    """

    def __init__(self, shift: int = 0, flip: bool = False, seed: int = 0):
        self.shift = check_int("shift", shift, 0, owner="Augment")
        self.flip = check_bool("flip", flip, owner="Augment")
        self.rng = np.random.default_rng(check_int("seed", seed, 0, owner="Augment"))
        self._base: dict[Any, Array] = {}  # (C, H, W) gather offsets per shape and namespace

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.flip

    def get_config(self) -> dict[str, Any]:
        return {"shift": self.shift, "flip": self.flip}

    def state_dict(self) -> dict[str, Any]:
        """The generator state (JSON-serialisable), for resuming bit for bit."""
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def __call__(self, x: Array, share: tuple[int, slice] | None = None) -> Array:
        """Augment a batch.

        Parameters
        ----------
        x : array of shape (N, C, H, W) in any supported namespace.
        share : ``(total, part)`` when ``x`` is the ``part`` (a slice) of a batch of ``total``
            images, as in data-parallel training: the random choices are drawn for all
            ``total`` images and those of ``part`` applied, so every process's share gets the
            choices one process would have made for it.

        Returns
        -------
        array of shape (N, C, H, W), same namespace and dtype; labels are unchanged.
        """
        x = check_array("x", x, owner="Augment", describe="an array of images")
        if x.ndim != 4:
            raise ValueError(f"augment: expected images of shape (N, C, H, W); received {x.shape}")
        if not self.active:
            return x
        xp = namespace(x)
        N = x.shape[0]
        total, part = share if share is not None else (N, slice(0, N))
        if len(range(total)[part]) != N:
            raise ValueError(
                f"augment: expected {len(range(total)[part])} images for part {part} of "
                f"{total}; received {N}"
            )
        flips = (self.rng.random(total) < 0.5)[part] if self.flip else None
        offsets = (
            self.rng.integers(0, 2 * self.shift + 1, size=(2, total))[:, part]
            if self.shift
            else None
        )
        if flips is not None:
            mask = to_device(flips, xp)
            x = xp.where(mask[:, None, None, None], xp.flip(x, axis=3), x)
        if offsets is not None:
            x = self._translate(x, xp, offsets)
        return x

    def _translate(self, x: Array, xp, offsets: np.ndarray) -> Array:
        """Pad P zeros on each side, then gather an H x W window at (dy, dx) per image."""
        N, C, H, W = x.shape
        P = self.shift
        HP, WP = H + 2 * P, W + 2 * P
        padded = xp.zeros((N, C, HP, WP), dtype=x.dtype)  # CuPy takes no device= here
        padded[:, :, P : P + H, P : P + W] = x
        key = (C, H, W, xp.__name__ if hasattr(xp, "__name__") else id(xp), str(x.device))
        base = self._base.get(key)
        if base is None:  # flat offsets of window pixel (c, i, j) inside one padded image
            c, i, j = np.meshgrid(np.arange(C), np.arange(H), np.arange(W), indexing="ij")
            base = to_device(((c * HP + i) * WP + j).astype(np.int64), xp)
            self._base[key] = base
        start = np.arange(N, dtype=np.int64) * (C * HP * WP) + offsets[0] * WP + offsets[1]
        index = xp.reshape(to_device(start, xp)[:, None, None, None] + base[None, ...], (-1,))
        return xp.reshape(xp.take(xp.reshape(padded, (-1,)), index), (N, C, H, W))


__all__ = ["Augment"]
