"""Backend selection, fall-back reasons, transfers and seeded randomness."""

import sys
import types

import numpy as np
import pytest

from gpucnn.backend import (
    BACKEND_ENV,
    BackendError,
    Random,
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


def test_random_state_round_trip_reproduces_draws(xp):
    random = Random(5, xp)
    random.uniform((3,), xp.float32)
    state = random.get_state()
    first = to_numpy(random.uniform((4, 2), xp.float32))
    random.set_state(state)
    np.testing.assert_array_equal(to_numpy(random.uniform((4, 2), xp.float32)), first)
    assert not np.array_equal(to_numpy(Random(6, xp).uniform((4, 2), xp.float32)), first)


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [
        ((2, 7, 9, 4), (3, 3), (1, 1)),
        ((3, 8, 6, 6), (2, 3), (2, 1)),
        ((1, 5, 5, 8), (5, 5), (1, 1)),
        ((2, 9, 9, 5), (3, 2), (3, 2)),
    ],
)
def test_im2col_fast_path_equals_the_standard_code(shape, kernel, stride):
    import array_api_strict

    from gpucnn.backend import fill_windows_fast
    from gpucnn.functional.im2col import im2col

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fast = im2col(x, kernel, stride, bias_column=True)  # NumPy: takes the fast path
    standard = to_numpy(im2col(array_api_strict.asarray(x), kernel, stride, bias_column=True))
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, standard)
    assert not fill_windows_fast(
        x[..., :1], kernel, stride, fast
    )  # too few channels: standard code


@pytest.mark.parametrize(
    "pool,stride",
    [((2, 2), (2, 2)), ((3, 3), (3, 3)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((2, 2), (3, 3))],
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_backward_fast_path_equals_the_standard_code(pool, stride, ties):
    rng = np.random.default_rng(1)
    # a ragged edge, then a 6x6 input that windows with stride == pool tile exactly
    for shape in ((2, 7, 8, 3), (2, 6, 6, 3)):
        x = rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)
        check_max_pool_fast_path(x.astype(np.float32), pool, stride, rng)


def check_max_pool_fast_path(x, pool, stride, rng):
    import array_api_strict

    from gpucnn.backend import max_pool_backward_fast
    from gpucnn.functional.pooling import max_pool2d_backward, max_pool2d_forward

    out = max_pool2d_forward(x, pool, stride)
    g = rng.standard_normal(out.shape).astype(np.float32)
    fast = max_pool_backward_fast(g, x, out, pool, stride)
    xs, outs, gs = (array_api_strict.asarray(a) for a in (x, out, g))
    standard = to_numpy(max_pool2d_backward(gs, xs, outs, pool, stride))
    np.testing.assert_array_equal(fast, standard)
