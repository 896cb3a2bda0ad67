"""Backend selection, fall-back reasons and transfers."""

import sys
import types

import numpy as np
import pytest

from gpucnn.backend import (
    BACKEND_ENV,
    BackendError,
    namespace,
    select_backend,
    to_device,
    to_numpy,
)


@pytest.fixture
def broken_cupy(monkeypatch):
    """A CuPy that imports but fails at first use, like cupy-cuda12x on a machine without a driver."""

    class CUDARuntimeError(RuntimeError):
        pass

    def zeros(*args, **kwargs):
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake = types.ModuleType("cupy")
    fake.zeros = zeros
    fake.float32 = np.float32
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def test_numpy_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    backend = select_backend("numpy")
    assert backend.name == "numpy" and backend.xp is np and not backend.is_gpu


def test_auto_falls_back_to_numpy_and_says_why(broken_cupy):
    backend = select_backend("auto")
    assert backend.name == "numpy"
    assert "fell back to NumPy" in backend.reason and "CUDARuntimeError" in backend.reason


def test_explicit_cupy_without_a_device_fails_with_one_clear_message(broken_cupy):
    with pytest.raises(
        BackendError, match=r"backend 'cupy' was requested but cannot run: .*CUDARuntimeError"
    ):
        select_backend("cupy")


def test_environment_variable_overrides_auto(monkeypatch, broken_cupy):
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert select_backend("auto").reason == f"NumPy requested (from {BACKEND_ENV})"
    assert select_backend(None).name == "numpy"
    monkeypatch.setenv(BACKEND_ENV, "cupy")
    with pytest.raises(BackendError, match=f"from {BACKEND_ENV}"):
        select_backend("auto")
    assert select_backend("numpy").name == "numpy"  # an explicit choice in code wins
    monkeypatch.setenv(BACKEND_ENV, "opencl")
    with pytest.raises(BackendError, match=f"received {BACKEND_ENV}='opencl'"):
        select_backend()


def test_a_namespace_module_is_accepted_as_backend(xp):
    backend = select_backend(xp)
    assert backend.xp is xp


def test_transfers_round_trip(xp):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    arr = to_device(host, xp)
    assert namespace(arr) is xp
    np.testing.assert_array_equal(to_numpy(arr), host)
    assert to_device(host, xp, xp.float64).dtype == xp.float64


def test_namespace_rejects_mixed_namespaces():
    import array_api_strict

    with pytest.raises(ValueError, match="one namespace"):
        namespace(np.zeros(1), array_api_strict.zeros(1))
