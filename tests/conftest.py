"""Shared fixtures: every op/layer test runs on each array namespace.

``xp`` is parametrised over NumPy, array-api-strict (which rejects anything outside the array
API standard and must never be skipped) and CuPy (skipped, with the reason, without a GPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpucnn.backend import probe_cupy

NAMESPACES = ("numpy", "array_api_strict", "cupy")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_namespace(name: str):
    if name == "numpy":
        return np
    if name == "array_api_strict":
        import array_api_strict  # a dev dependency: its absence is a failure, not a skip

        return array_api_strict
    cupy, why = probe_cupy()
    if cupy is None:
        pytest.skip(f"no GPU: {why}")
    return cupy


@pytest.fixture(params=NAMESPACES)
def xp(request):
    """An array namespace: numpy, array_api_strict or cupy."""
    return load_namespace(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
