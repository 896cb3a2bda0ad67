"""Mixed precision: float32 parameters, 16-bit compute, float32 statistics and loss.

NumPy runs ``"mixed_float16"`` only when asked to emulate it (``emulate=True``): the
machinery (casts at the boundary, autocast parameters, float32 BatchNorm, loss scaling) is the
one CuPy runs, which the CuPy tests (skipped without a GPU) check with bfloat16 too.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import load_namespace
from helpers import FakeMPI, ThreadComm, ThreadGroup

from gpucnn import SGD, Adam, Sequential
from gpucnn.backend import to_numpy
from gpucnn.cli import main
from gpucnn.cuda_graph import LOSS_SCALING_REASON, GraphedStep
from gpucnn.distributed import MPICommunicator
from gpucnn.layers import (
    BatchNorm2D,
    Conv2D,
    Conv2DBatchNorm2DReLU,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)
from gpucnn.precision import LossScaler, compute_dtype, policy
from gpucnn.step import TrainingStep
from gpucnn.trainer import Trainer


def conv_net(backend="numpy", seed=3, precision=None, emulate=True) -> Sequential:
    layers = [
        Conv2D(6, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2),
        Conv2D(8, 3), ReLU(), GlobalAvgPool2D(), Dense(12), ReLU(), Dense(3),
    ]  # fmt: skip
    model = Sequential(layers, input_shape=(2, 10, 10), backend=backend, seed=seed)
    if precision is not None:
        model.set_precision(precision, emulate=emulate)
    return model


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 2, 10, 10), dtype=np.float32), rng.integers(0, 3, n)


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------- policies and refusals
def test_policies_name_their_dtypes():
    assert policy("mixed_bfloat16").parameter_dtype == "float32"
    assert policy("mixed_bfloat16").compute_dtype == "bfloat16"
    assert policy("mixed_float16").loss_scaling and not policy("mixed_bfloat16").loss_scaling
    assert not policy("float32").mixed and policy("mixed_float16").mixed
    with pytest.raises(ValueError, match=r"expected precision in \[.*\]; received 'half'"):
        policy("half")


def test_numpy_refuses_mixed_precision_with_one_line():
    model = conv_net()
    for name in ("mixed_bfloat16", "mixed_float16"):
        with pytest.raises(ValueError) as info:
            model.set_precision(name)
        message = str(info.value)
        assert "\n" not in message and "needs the CuPy backend" in message and "numpy" in message
    with pytest.raises(ValueError, match="needs the CuPy backend"):
        Sequential([Dense(2)], input_shape=(3,), backend="numpy", precision="mixed_bfloat16")
    with pytest.raises(ValueError, match="needs the CuPy backend"):  # no bfloat16 GEMM there
        model.set_precision("mixed_bfloat16", emulate=True)
    assert not model.precision.mixed  # a refused policy changes nothing


def test_a_float64_model_takes_no_mixed_policy():
    model = Sequential([Dense(2)], input_shape=(3,), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match=r"model's dtype \(float64\).*keeps them in float32"):
        model.set_precision("mixed_float16", emulate=True)
    with pytest.raises(ValueError, match="keeps them in float32"):
        model.set_precision("float32")
    model.set_precision("float64")  # its own dtype: accepted


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import fails
    with pytest.raises(ValueError, match=r"needs the ml_dtypes package.*pip install ml_dtypes"):
        compute_dtype(np, policy("mixed_bfloat16"))
    assert compute_dtype(np, policy("mixed_float16")) is np.float16


# ---------------------------------------------------------------------- the forward pass
def test_mixed_forward_computes_in_float16_and_answers_in_float32():
    model = Sequential([Dense(5)], input_shape=(7,), backend="numpy", seed=1)
    x = np.random.default_rng(2).normal(size=(4, 7)).astype(np.float32)
    full = model.forward(x)
    model.set_precision("mixed_float16", emulate=True)
    out = model.forward(x)
    weight, bias = model.layers[0].params["weight"], model.layers[0].params["bias"]
    assert weight.dtype == np.float32 and model.layers[0].weight.cast.dtype == np.float16
    half = x.astype(np.float16) @ weight.astype(np.float16) + bias.astype(np.float16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, half.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not np.allclose(out, full, rtol=1e-6, atol=1e-6)  # float16 rounding shows
    np.testing.assert_allclose(out, full, rtol=1e-2, atol=1e-2)
    model.set_precision("float32")  # back to float32: no compute copies, the same bits
    assert model.layers[0].weight.cast is None
    np.testing.assert_array_equal(model.forward(x), full)


def test_batch_norm_keeps_float32_parameters_and_statistics():
    layers = [BatchNorm2D(momentum=1.0), Flatten(), Dense(3)]
    model = Sequential(layers, input_shape=(2, 4, 4), backend="numpy")
    model.set_precision("mixed_float16", emulate=True)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 2, 4, 4)).astype(np.float32)
    model.loss_and_backward(x, np.zeros(16, dtype=np.int64))
    norm = model.layers[0]
    assert norm.weight.cast is None and model.layers[2].weight.cast is not None
    rounded = x.astype(np.float16).astype(np.float64)  # the input the layer received
    expected = rounded.mean(axis=(0, 2, 3))
    assert norm.running_mean.data.dtype == np.float32
    # statistics of the float16 input taken in float32 (float16 sums would be off by ~1e-3)
    np.testing.assert_allclose(norm.running_mean.data, expected, rtol=1e-6)
    for p in model.parameters():
        assert p.data.dtype == p.grad.dtype == np.float32


def test_the_fused_inference_of_conv_and_batch_norm_casts_its_folded_weights():
    model = conv_net(precision="mixed_float16")
    x, y = batch()
    for _ in range(2):  # running statistics away from their start
        model.loss_and_backward(x, y)
    reference = conv_net()
    reference.load_state_dict(model.state_dict())
    out = model.forward(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference.forward(x), rtol=2e-2, atol=2e-2)
    fused = model.steps[0]  # Conv2D, BatchNorm2D, ReLU, MaxPool2D: the folded convolution
    assert type(fused).__name__ == "Conv2DBatchNorm2DReLUMaxPool2D"
    assert fused.forward(np.zeros((1, 10, 10, 2), np.float16)).dtype == np.float16
    alone = Conv2DBatchNorm2DReLU(*model.layers[:3])  # without the pooling
    assert alone.forward(np.zeros((1, 10, 10, 2), np.float16)).dtype == np.float16


# ---------------------------------------------------------------------- training
def test_mixed_gradients_are_float32_and_close_to_float32_ones():
    x, y = batch()
    full, mixed = conv_net(), conv_net(precision="mixed_float16")
    loss, logits = full.loss_and_backward(x, y)
    mixed_loss, mixed_logits = mixed.loss_and_backward(x, y)
    assert mixed_logits.dtype == np.float32 and mixed_loss.dtype == np.float32
    assert float(mixed_loss) == pytest.approx(float(loss), rel=2e-3)
    for p, q in zip(full.parameters(), mixed.parameters(), strict=True):
        assert q.grad.dtype == np.float32 and q.data.dtype == np.float32
        if p.name.endswith("conv2d_1.bias"):
            continue  # a bias before BatchNorm: its true gradient is 0, both are rounding
        assert relative(q.grad, p.grad) < 3e-2, p.name


@pytest.mark.parametrize("optimizer", [SGD(0.05, momentum=0.9), Adam(0.01)], ids=["sgd", "adam"])
def test_training_keeps_parameters_and_optimizer_state_in_float32(optimizer):
    model = conv_net(precision="mixed_float16")
    before = model.state_dict()
    step = TrainingStep(model, optimizer)
    for seed in range(4):
        x, y = batch(seed=seed)
        loss, _ = step(x, y)
        assert np.isfinite(float(loss))
    # NumPy's float16 GEMMs sum in float16: the first scale (2**15) may overflow and halve
    assert step.scaler is not None and step.scaler.skipped < 4
    assert not np.array_equal(model.state_dict()["dense_2.weight"], before["dense_2.weight"])
    for p in model.parameters():
        assert p.data.dtype == np.float32
        for slot in optimizer.state[p.name].values():
            assert slot.dtype == np.float32
    assert all(a.dtype == np.float32 for a in model.state_dict().values())
    assert "precision" not in model.get_config()


def test_an_overflowed_float16_step_is_skipped_and_the_scale_halves():
    model = conv_net(precision="mixed_float16")
    optimizer = SGD(0.05, momentum=0.9)
    step = TrainingStep(model, optimizer)
    step.scaler = LossScaler(scale=2.0**8)
    x, y = batch()
    step(x, y)  # one good step: momentum buffers exist
    assert step.scaler.skipped == 0
    before = {p.name: p.data.copy() for p in model.parameters()}
    velocity = {k: {n: v.copy() for n, v in s.items()} for k, s in optimizer.state.items()}
    step.scaler.scale = 2.0**40  # far past float16's range (65504): the gradients overflow
    loss, _ = step(x, y)
    assert np.isfinite(float(loss))  # the loss itself is float32 and unscaled
    assert step.scaler.scale == 2.0**39 and step.scaler.skipped == 1
    for p in model.parameters():  # (the forward pass updated BatchNorm's statistics, as
        np.testing.assert_array_equal(p.data, before[p.name])  # PyTorch's scaler leaves them)
    for name, slots in optimizer.state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(value, velocity[name][slot])
    assert all(float(np.abs(p.grad).max()) == 0.0 for p in model.parameters())
    step.scaler.scale = 2.0**10
    step(x, y)  # finite again: the step updates
    assert any(not np.array_equal(p.data, before[p.name]) for p in model.parameters())


def test_every_step_of_a_mixed_model_computes_in_float16():
    """No layer promotes the 16-bit activations (SciPy's erf, a float32 parameter, a float64
    constant): each step's output and input gradient stay float16."""
    from gpucnn.layers import (
        GELU,
        AvgPool2D,
        BatchNorm1D,
        Dropout,
        LeakyReLU,
        Residual,
        Sigmoid,
        SiLU,
        Tanh,
    )

    layers = [
        Conv2D(4, 3, padding="same"), BatchNorm2D(), GELU(), AvgPool2D(2), Conv2D(8, 3),
        LeakyReLU(), SiLU(), Residual([Conv2D(8, 3, padding="same"), Tanh()]), Sigmoid(),
        MaxPool2D(2), Flatten(), Dense(16), BatchNorm1D(), ReLU(), Dropout(0.3), Dense(3),
    ]  # fmt: skip
    model = Sequential(layers, input_shape=(2, 12, 12), backend="numpy", seed=1)
    model.set_precision("mixed_float16", emulate=True)
    seen = []
    for step in model.steps:
        forward, backward = step.forward, step.backward

        def watched_forward(x, training=False, _f=forward, _name=step.name):
            out = _f(x, training)
            seen.append((_name, "forward", out.dtype))
            return out

        def watched_backward(g, need_input_grad=True, _b=backward, _name=step.name):
            grad = _b(g, need_input_grad)
            seen.append((_name, "backward", None if grad is None else grad.dtype))
            return grad

        step.forward, step.backward = watched_forward, watched_backward
    x, y = batch()
    model.loss_and_backward(np.resize(x, (8, 2, 12, 12)), y)
    assert len(seen) == 2 * len(model.steps)
    wrong = [entry for entry in seen if entry[2] not in (np.float16, None)]
    assert not wrong, wrong


def test_a_nested_sequential_takes_no_precision():
    with pytest.raises(ValueError, match="expected precision only for a model"):
        Sequential([Dense(2)], precision="mixed_float16")


def test_the_loss_scale_grows_after_a_run_of_finite_steps():
    scaler = LossScaler(scale=8.0, growth_interval=2)
    grads = [np.ones(3, np.float32)]
    assert scaler.unscale(np, grads)[1] and scaler.scale == 8.0
    unscaled, finite = scaler.unscale(np, grads)
    assert finite and scaler.scale == 16.0
    np.testing.assert_array_equal(unscaled[0], np.full(3, 1 / 8, np.float32))
    assert not scaler.unscale(np, [np.array([1.0, np.inf], np.float32)])[1]
    assert scaler.scale == 8.0 and scaler.good_steps == 0
    capped = LossScaler(scale=LossScaler.MAX_SCALE, growth_interval=1)
    capped.unscale(np, grads)
    assert capped.scale == LossScaler.MAX_SCALE


def test_loss_scaling_keeps_small_gradients_that_float16_would_flush():
    # a gradient of 1e-8 is below float16's smallest subnormal (6e-8): scaled, it survives
    model = Sequential([Dense(1)], input_shape=(1,), backend="numpy", seed=0)
    model.set_precision("mixed_float16", emulate=True)
    x = np.ones((1, 1), np.float32)
    model.forward(x, training=True)
    model.backward(np.full((1, 1), 1e-8 * 2.0**15, np.float32), need_input_grad=False)
    assert float(model.layers[0].weight.grad[0, 0]) / 2.0**15 == pytest.approx(1e-8, rel=1e-2)
    model.forward(x, training=True)
    model.backward(np.full((1, 1), 1e-8, np.float32), need_input_grad=False)
    assert float(model.layers[0].weight.grad[0, 0]) == 0.0  # unscaled: flushed to zero


def test_fit_in_mixed_float16_learns_as_float32_does():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 96)
    x = rng.normal(0.0, 0.3, size=(96, 2, 10, 10)).astype(np.float32)
    for row, label in enumerate(y):
        x[row, label % 2, :, : 3 + 3 * label] += 1.0  # a class-dependent block
    accuracy, losses = {}, {}
    for precision in (None, "mixed_float16"):
        model = conv_net(precision=precision)
        trainer = Trainer(model, SGD(0.02, momentum=0.9), progress=False)
        trainer.fit(x, y, epochs=8, batch_size=16)
        accuracy[precision] = float(np.mean(model.predict(x) == y))
        losses[precision] = trainer.history["loss"]
        assert (trainer.loss_scaler is None) == (precision is None)
    assert accuracy["mixed_float16"] >= 0.95 and accuracy[None] >= 0.95
    np.testing.assert_allclose(losses["mixed_float16"][:5], losses[None][:5], rtol=0.05)


def test_a_checkpoint_keeps_the_loss_scale(tmp_path):
    """A resumed float16 run goes on with the scale and counts it had reached."""
    x, y = batch(16)
    model = conv_net(precision="mixed_float16")
    trainer = Trainer(model, SGD(0.02, momentum=0.9), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=8)
    trainer.loss_scaler.scale, trainer.loss_scaler.good_steps = 2.0**9, 7
    state = trainer.state_dict()
    resumed = Trainer(conv_net(precision="mixed_float16"), SGD(0.02, momentum=0.9))
    assert resumed.loss_scaler is None  # no step yet
    resumed.load_state_dict(state)
    assert resumed.loss_scaler.state_dict() == trainer.loss_scaler.state_dict()
    full = Trainer(conv_net(), SGD(0.02, momentum=0.9))
    full.load_state_dict(state)  # a float32 model ignores it
    assert full.loss_scaler is None


def test_a_cuda_graph_step_stays_eager_under_loss_scaling(monkeypatch):
    model = conv_net(precision="mixed_float16")
    step = GraphedStep(model, SGD(0.05))
    monkeypatch.setattr(step, "_key", lambda x, y: ("shapes",))  # (device addresses: CuPy)
    x, y = batch()
    step(x, y)
    assert step.describe()["disabled_because"] == LOSS_SCALING_REASON
    model.set_precision("float32")  # no loss scaling: the step may be recorded again
    step(x, y)
    assert step.describe()["disabled_because"] is None
    model.set_precision("mixed_float16", emulate=True)
    step(x, y)
    assert step.describe()["disabled_because"] == LOSS_SCALING_REASON


def test_distributed_training_refuses_float16_loss_scaling(monkeypatch):
    monkeypatch.setattr("gpucnn.distributed.import_mpi", lambda: FakeMPI)  # (no mpi4py needed)
    model = conv_net(precision="mixed_float16")
    trainer = Trainer(model, SGD(0.05), progress=False)
    trainer.communicator = MPICommunicator(ThreadComm(ThreadGroup(1), 0))
    x, y = batch()
    with pytest.raises(ValueError, match="received 'mixed_float16', whose loss scaling"):
        trainer.fit(x, y, epochs=1, batch_size=4)


# ---------------------------------------------------------------------- command line
def test_the_cli_refuses_mixed_precision_on_numpy_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--precision", "mixed_bfloat16", "--backend", "numpy", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "needs the CuPy backend" in err
    assert not out.exists()
    code = main(["train", "--precision", "mixed_float16", "--dtype", "float64", "--out", str(out)])
    assert code == 2 and "received --dtype float64" in capsys.readouterr().err


# ---------------------------------------------------------------------- CuPy (skipped without a GPU)
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_cupy_mixed_precision_trains_close_to_float32(precision):
    cupy = load_namespace("cupy")
    x, y = batch()
    full, mixed = conv_net("cupy"), conv_net("cupy", precision=precision, emulate=False)
    assert mixed.layers[0].weight.data.dtype == cupy.float32
    loss, _ = full.loss_and_backward(x, y)
    mixed_loss, logits = mixed.loss_and_backward(x, y)
    assert logits.dtype == cupy.float32
    assert float(mixed_loss) == pytest.approx(float(loss), rel=2e-2)
    for p, q in zip(full.parameters(), mixed.parameters(), strict=True):
        assert q.grad.dtype == cupy.float32
        if not p.name.endswith("conv2d_1.bias"):
            assert relative(to_numpy(q.grad), to_numpy(p.grad)) < 6e-2, p.name
    step = TrainingStep(mixed, SGD(0.05, momentum=0.9))
    for seed in range(3):
        assert np.isfinite(float(step(*batch(seed=seed))[0]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cupy_16_bit_gemm_sums_in_float32_when_switched_on(dtype, monkeypatch):
    cupy = load_namespace("cupy")
    from gpucnn.functional._cuda_kernels import HALF_GEMM_ENV, gemm

    kind = compute_dtype(cupy, policy("mixed_float16" if dtype == "float16" else "mixed_bfloat16"))
    rng = np.random.default_rng(1)
    a = cupy.asarray(rng.standard_normal((37, 300)).astype(np.float32)).astype(kind)
    b = cupy.asarray(rng.standard_normal((300, 23)).astype(np.float32)).astype(kind)
    monkeypatch.setenv(HALF_GEMM_ENV, "0")
    assert gemm(a, b) is None  # off by default: CuPy's matmul takes it
    monkeypatch.setenv(HALF_GEMM_ENV, "1")
    exact = to_numpy(a.astype(cupy.float32)) @ to_numpy(b.astype(cupy.float32))
    for left in (a, cupy.asfortranarray(a)):
        for right in (b, cupy.asfortranarray(b)):
            out = gemm(left, right)
            assert out.dtype == a.dtype
            # one rounding of a float32 sum: within half a unit of the 16-bit result's last place
            ulp = 2.0**-10 if dtype == "float16" else 2.0**-7
            np.testing.assert_allclose(
                to_numpy(out.astype(cupy.float32)), exact, rtol=ulp, atol=ulp * 4
            )


def test_cupy_bfloat16_steps_record_a_cuda_graph_with_the_16_bit_gemm(monkeypatch):
    cupy = load_namespace("cupy")
    from gpucnn.cuda_graph import GRAPHS_ENV, training_step
    from gpucnn.functional._cuda_kernels import HALF_GEMM_ENV

    monkeypatch.setenv(GRAPHS_ENV, "1")
    monkeypatch.setenv(HALF_GEMM_ENV, "1")
    graphed = conv_net("cupy", precision="mixed_bfloat16", emulate=False)
    eager = conv_net("cupy", precision="mixed_bfloat16", emulate=False)
    step, eager_step = training_step(graphed, SGD(0.05)), TrainingStep(eager, SGD(0.05))
    for seed in range(4):
        x, y = (cupy.asarray(a) for a in batch(seed=seed % 2))
        loss, _ = step(x, y)
        expected, _ = eager_step(x, y)
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert step.describe()["cuda_graph"], step.describe()
