"""Training steps as functions; CUDA-graph replay equals eager training (GPU tests skip without one)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_namespace

from gpucnn import Sequential
from gpucnn.backend import to_numpy
from gpucnn.cuda_graph import GRAPHS_ENV, GraphedForward, GraphedStep, training_step
from gpucnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from gpucnn.optim import SGD, Adam


def small_net(backend, dropout: bool = False) -> Sequential:
    layers = [Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten()]
    layers += [Dropout(0.2)] if dropout else []
    layers += [Dense(16), ReLU(), Dense(3)]
    return Sequential(layers, input_shape=(1, 8, 8), backend=backend, seed=3)


def batches(xp, count: int, size: int = 6, last: int = 4):
    rng = np.random.default_rng(0)
    for index in range(count):
        n = last if index == count - 1 else size
        yield (
            xp.asarray(rng.random((n, 1, 8, 8), dtype=np.float32)),
            xp.asarray(rng.integers(0, 3, n)),
        )


def test_the_step_function_is_one_eager_training_step_off_the_gpu(monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "1")  # asked for, but NumPy has no graphs
    model, reference = small_net("numpy"), small_net("numpy")
    step = training_step(model, SGD(0.1, momentum=0.9))
    assert not isinstance(step, GraphedStep)
    optimizer = SGD(0.1, momentum=0.9)
    for x, y in batches(np, 3):
        loss, logits = step(x, y)
        expected_loss, expected_logits = reference.loss_and_backward(x, y, check=False)
        optimizer.step(reference)
        np.testing.assert_array_equal(loss, expected_loss)
        np.testing.assert_array_equal(logits, expected_logits)
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_a_step_adds_its_batch_to_the_running_sums():
    model, reference = small_net("numpy"), small_net("numpy")
    sums = np.zeros(2)
    step = training_step(model, SGD(0.1), sums)
    optimizer, loss_sum, correct = SGD(0.1), 0.0, 0
    for x, y in batches(np, 3):
        step(x, y)
        loss, logits = reference.loss_and_backward(x, y, check=False)
        optimizer.step(reference)
        loss_sum += float(loss) * len(y)
        correct += int(np.sum(np.argmax(logits, axis=1) == y))
    assert sums[0] == pytest.approx(loss_sum, rel=1e-12) and sums[1] == correct


def test_the_inference_function_is_the_inference_pass_off_the_gpu():
    model = small_net("numpy")
    x = np.random.default_rng(5).random((7, 1, 8, 8))  # float64 on the host: cast as forward does
    np.testing.assert_array_equal(
        model.inference_function()(x), model.forward(x, training=False, check=False)
    )
    # a large batch goes through in cache-sized blocks: the same numbers, in float64 exactly
    layers = [Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)]
    model = Sequential(layers, input_shape=(1, 8, 8), dtype="float64", backend="numpy", seed=3)
    x = np.random.default_rng(6).random((2 * model.inference_batch_size + 5, 1, 8, 8))
    out = model.inference_function()(x)
    assert out.shape == (x.shape[0], 3)
    np.testing.assert_allclose(out, model.forward(x, training=False), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "dropout,optimizer,reason",
    [(False, lambda: Adam(0.01), "not SGD"), (True, lambda: SGD(0.1), "draws random numbers")],
)
def test_graphs_refuse_what_a_replay_would_freeze(dropout, optimizer, reason):
    step = GraphedStep(small_net("numpy", dropout=dropout), optimizer())
    assert reason in step.disabled_because
    x, y = next(batches(np, 1))
    loss, _ = step(x, y)  # runs eagerly
    assert np.isfinite(float(loss)) and not step.describe()["cuda_graph"]


# ------------------------------------------------------------------------------- GPU


@pytest.fixture
def cupy():
    return load_namespace("cupy")


def test_cublas_gemm_equals_matmul_for_every_operand_layout(cupy):
    from gpucnn.functional._cuda_kernels import gemm

    rng = np.random.default_rng(1)
    for dtype in ("float32", "float64"):
        a = cupy.asarray(rng.standard_normal((37, 19)), dtype=dtype)
        b = cupy.asarray(rng.standard_normal((19, 23)), dtype=dtype)
        for left in (a, cupy.asfortranarray(a)):
            for right in (b, cupy.asfortranarray(b)):
                out = gemm(left, right)
                assert out.flags.c_contiguous and out.dtype == a.dtype
                tol = 1e-5 if dtype == "float32" else 1e-12
                np.testing.assert_allclose(
                    to_numpy(out), to_numpy(a) @ to_numpy(b), rtol=tol, atol=tol
                )
        assert gemm(a[:, ::2], b[::2]) is None  # strided: not a layout cuBLAS takes as is


def test_graph_replay_trains_as_eager_steps_do(cupy, monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "1")
    graphed, eager = small_net("cupy"), small_net("cupy")
    graphed_optimizer, eager_optimizer = SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9)
    step = training_step(graphed, graphed_optimizer)
    assert isinstance(step, GraphedStep)
    data = list(batches(cupy, 8))  # the last batch is smaller: it runs eagerly
    for index, (x, y) in enumerate(data):
        if index == 5:  # a new learning rate records the step again
            graphed_optimizer.lr = eager_optimizer.lr = 0.05
        loss, logits = step(x, y)
        expected_loss, expected_logits = eager.loss_and_backward(x, y, check=False)
        eager_optimizer.step(eager)
        # a replay runs the eager step's very kernels and GEMMs: the same bits
        np.testing.assert_array_equal(to_numpy(loss), to_numpy(expected_loss))
        np.testing.assert_array_equal(to_numpy(logits), to_numpy(expected_logits))
    assert step.describe()["cuda_graph"], step.describe()
    assert step.replays >= 5 and graphed_optimizer.steps == eager_optimizer.steps == len(data)
    for key, value in eager.state_dict().items():
        np.testing.assert_array_equal(graphed.state_dict()[key], value)
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        np.testing.assert_array_equal(to_numpy(p.grad), to_numpy(q.grad))


def test_a_trainer_with_graphs_fits_as_without(cupy, monkeypatch):
    from gpucnn.trainer import Trainer

    rng = np.random.default_rng(2)
    x = rng.random((70, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, 70)
    states = []
    for graphs in ("0", "1"):
        monkeypatch.setenv(GRAPHS_ENV, graphs)
        model = small_net("cupy")
        trainer = Trainer(model, SGD(0.1, momentum=0.9), log=None)
        history = trainer.fit(x, y, (x[:20], y[:20]), epochs=2, batch_size=16)
        assert isinstance(trainer._step, GraphedStep) == (graphs == "1")
        states.append((model.state_dict(), history))
    (eager, eager_history), (graphed, graphed_history) = states
    for key, value in eager.items():  # replays run the eager step's kernels: the same bits
        np.testing.assert_array_equal(graphed[key], value)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(graphed_history[key], eager_history[key])


def test_a_restored_optimizer_state_is_adopted_before_recording(cupy, monkeypatch):
    """A resumed run: host buffers from load_state_dict move to the GPU in an eager step,
    then the step is recorded (the graph must not capture that host-to-device copy)."""
    monkeypatch.setenv(GRAPHS_ENV, "1")
    model = small_net("cupy")
    first = SGD(0.1, momentum=0.9)
    step = training_step(model, first)
    data = list(batches(cupy, 6, last=6))
    for x, y in data[:3]:
        step(x, y)
    resumed = SGD(0.1, momentum=0.9)
    resumed.load_state_dict(first.state_dict())
    step = training_step(model, resumed)
    for x, y in data[3:]:
        loss, _ = step(x, y)
    assert np.isfinite(float(loss)) and step.describe()["cuda_graph"], step.describe()


def test_graphed_inference_equals_the_eager_pass(cupy, monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "1")
    model = small_net("cupy")
    infer = model.inference_function()
    assert isinstance(model._inference, GraphedForward)
    rng = np.random.default_rng(6)
    inputs = [rng.random((n, 1, 8, 8), dtype=np.float32) for n in (5, 5, 5, 3, 3, 3, 5)]
    outputs = []
    for x in inputs:  # eager, record + replay, replay; then a second shape; the first again
        out = infer(cupy.asarray(x))
        expected = model.forward(cupy.asarray(x), training=False, check=False)
        np.testing.assert_array_equal(to_numpy(out), to_numpy(expected))
        outputs.append(out)
    assert model._inference.replays == 5 and len(model._inference.graphs) == 2
    assert model._inference.disabled_because is None
    # each call returns its own array: a later replay does not overwrite an earlier result
    np.testing.assert_array_equal(
        to_numpy(outputs[1]), to_numpy(model.forward(cupy.asarray(inputs[1]), training=False))
    )
    # an in-place weight update is seen by the replay; a replaced weight array records again
    for p in model.parameters():
        p.data *= 0.5
    x = cupy.asarray(inputs[0])
    np.testing.assert_array_equal(to_numpy(infer(x)), to_numpy(model.forward(x, training=False)))
    model.load_state_dict({k: v * 2 for k, v in model.state_dict().items()})
    for _ in range(3):
        np.testing.assert_array_equal(
            to_numpy(infer(x)), to_numpy(model.forward(x, training=False))
        )
    proba = model.predict_proba(inputs[0])
    assert proba.shape == (5, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_a_model_that_ran_inference_is_freed_without_the_cycle_collector():
    """The model keeps its inference function, which must not keep the model: on a GPU its
    graphs hold activation memory that would otherwise wait for a collection."""
    import gc
    import weakref

    model = small_net("numpy")
    model.predict_proba(np.zeros((3, 1, 8, 8), np.float32))
    alive = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert alive() is None
    finally:
        gc.enable()
