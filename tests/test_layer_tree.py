"""The layer tree: names, parameters and buffers of nested containers; one model state through
everything that saves, copies or moves a model; inference never changes a buffer; Residual and
BatchNorm against naive references."""

import json
import pickle
import threading

import numpy as np
import pytest
from helpers import FakeMPI, ThreadComm, ThreadGroup, conv2d_naive, host, nhwc, on

from gpucnn import SGD, Sequential
from gpucnn.checkpoint import load_checkpoint, load_model, save_checkpoint
from gpucnn.cli import main
from gpucnn.distributed import MPICommunicator
from gpucnn.layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Residual,
    layer_from_config,
)
from gpucnn.trainer import EarlyStopping, Trainer, evaluate

BLOCK_NET = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
    {"type": "BatchNorm2D"},
    {"type": "ReLU"},
    {
        "type": "Residual",
        "layers": [
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
            {"type": "BatchNorm2D"},
            {"type": "ReLU"},
            {"type": "Dropout", "rate": 0.1},
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
        ],
    },
    {
        "type": "Residual",
        "layers": [{"type": "Conv2D", "filters": 6, "kernel_size": 3, "stride": 2, "padding": 1}],
        "shortcut": {"type": "Conv2D", "filters": 6, "kernel_size": 1, "stride": 2},
    },
    {"type": "ReLU"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "Dense", "units": 10},
]


def block_net(dtype="float32", seed=0, backend="numpy"):
    """Residual blocks holding Conv2D, BatchNorm2D (buffers), ReLU and Dropout; 8x8 input."""
    return Sequential.from_config(
        {"input_shape": [1, 8, 8], "layers": BLOCK_NET}, backend=backend, seed=seed, dtype=dtype
    )


def digits_like(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, size=n)


def scramble_buffers(model, seed=1):
    """Running statistics unlike their initial zeros and ones, so a lost buffer shows."""
    rng = np.random.default_rng(seed)
    for b in model.buffers():
        b.data[...] = rng.uniform(0.5, 2.0, size=b.shape).astype(np.float32)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


# ---------------------------------------------------------------------- names and the tree
def test_names_come_from_the_place_in_the_tree_and_are_unique():
    model = block_net()
    names = [p.name for p in model.parameters()]
    assert names == [
        "conv2d_1.weight", "conv2d_1.bias", "batchnorm2d_1.weight", "batchnorm2d_1.bias",
        "residual_1.conv2d_1.weight", "residual_1.conv2d_1.bias",
        "residual_1.batchnorm2d_1.weight", "residual_1.batchnorm2d_1.bias",
        "residual_1.conv2d_2.weight", "residual_1.conv2d_2.bias",
        "residual_2.conv2d_1.weight", "residual_2.conv2d_1.bias",
        "residual_2.shortcut.weight", "residual_2.shortcut.bias",
        "dense_1.weight", "dense_1.bias",
    ]  # fmt: skip
    assert [b.name for b in model.buffers()] == [
        "batchnorm2d_1.running_mean", "batchnorm2d_1.running_var",
        "residual_1.batchnorm2d_1.running_mean", "residual_1.batchnorm2d_1.running_var",
    ]  # fmt: skip
    assert len(model.state_dict()) == len(names) + 4  # nothing shares a name
    paths = [m.path for m in model.modules()][1:]
    assert len(set(paths)) == len(paths) and "residual_1.dropout_1" in paths
    assert model.num_params == sum(p.size for p in model.parameters())


def test_a_nested_sequential_is_a_container_and_its_config_round_trips():
    inner = Sequential([Flatten(), Dense(5), BatchNorm1D(), ReLU()])
    model = Sequential(
        [Conv2D(2, 3), inner, Dense(3)], input_shape=(1, 5, 5), backend="numpy", dtype="float64"
    )
    assert [c.path for c in inner.children()] == [
        "sequential_1.flatten_1", "sequential_1.dense_1", "sequential_1.batchnorm1d_1",
        "sequential_1.relu_1",
    ]  # fmt: skip
    clone = Sequential.from_config(json.loads(json.dumps(model.get_config())), backend="numpy")
    clone.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).random((4, 1, 5, 5))
    np.testing.assert_array_equal(host(clone.forward(x)), host(model.forward(x)))
    with pytest.raises(ValueError, match="needs a model"):
        inner.predict(x)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda c: Residual([c, c]), "appears twice"),
        (lambda c: [Sequential([c]), Residual([c])], "already belongs to another"),
        (lambda c: [Residual([ReLU()], shortcut=c), Residual([c])], "already belongs"),
    ],
)
def test_one_layer_object_sits_in_one_place(make, message):
    with pytest.raises(ValueError, match=message):
        make(Conv2D(2, 1))


def test_a_residual_whose_shapes_differ_is_refused_naming_the_block():
    with pytest.raises(
        ValueError,
        match=r"Residual 'residual_1': expected the body's output shape \(4, 3, 3\).*identity",
    ):
        Sequential(
            [Residual([Conv2D(4, 3, stride=2, padding=1)])], input_shape=(2, 6, 6), backend="numpy"
        )


# ---------------------------------------------------------------------- naive references
def test_residual_forward_equals_body_plus_shortcut_computed_naively(xp, rng):
    model = Sequential(
        [Residual([Conv2D(3, 3, stride=2, padding=1), ReLU(), Conv2D(3, 3, padding=1)],
                  shortcut=Conv2D(3, 1, stride=2))],
        input_shape=(2, 7, 6), dtype="float64", backend=xp, seed=2,
    )  # fmt: skip
    block = model.layers[0]
    w = {p.name: host(p.data) for p in model.parameters()}
    x = rng.standard_normal((2, 2, 7, 6))
    hidden = np.maximum(
        conv2d_naive(
            x, w["residual_1.conv2d_1.weight"], w["residual_1.conv2d_1.bias"], (2, 2), (1, 1, 1, 1)
        ),
        0,
    )
    body = conv2d_naive(
        hidden, w["residual_1.conv2d_2.weight"], w["residual_1.conv2d_2.bias"], (1, 1), (1, 1, 1, 1)
    )
    short = conv2d_naive(
        x, w["residual_1.shortcut.weight"], w["residual_1.shortcut.bias"], (2, 2), (0, 0, 0, 0)
    )
    np.testing.assert_allclose(host(model.forward(on(xp, x))), body + short, atol=1e-12)
    assert block.output_shape == (4, 3, 3)


def batch_norm_naive(x, weight, bias, mean, var, eps):
    """Per channel c of (N, C, H, W): (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        out[:, c] = (x[:, c] - mean[c]) / np.sqrt(var[c] + eps) * weight[c] + bias[c]
    return out


def test_batch_norm_trains_with_batch_statistics_and_infers_with_running_ones(xp, rng):
    momentum, eps = 0.3, 1e-3
    model = Sequential(
        [BatchNorm2D(momentum=momentum, eps=eps)],
        input_shape=(3, 4, 5),
        dtype="float64",
        backend=xp,
    )
    bn = model.layers[0]
    bn.weight.data = on(xp, rng.uniform(0.5, 2, 3))
    bn.bias.data = on(xp, rng.standard_normal(3))
    running_mean, running_var = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.standard_normal((6, 3, 4, 5)) * (step + 1) + step
        mean = np.array([x[:, c].mean() for c in range(3)])
        var = np.array([x[:, c].var() for c in range(3)])
        expected = batch_norm_naive(x, host(bn.weight.data), host(bn.bias.data), mean, var, eps)
        np.testing.assert_allclose(
            host(model.forward(on(xp, x), training=True)), expected, atol=1e-12
        )
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * 120 / 119  # unbiased
        np.testing.assert_allclose(host(bn.running_mean.data), running_mean, rtol=1e-13)
        np.testing.assert_allclose(host(bn.running_var.data), running_var, rtol=1e-13)
    expected = batch_norm_naive(
        x, host(bn.weight.data), host(bn.bias.data), running_mean, running_var, eps
    )
    np.testing.assert_allclose(host(model.forward(on(xp, x))), expected, atol=1e-12)


@pytest.mark.parametrize("kind,shape", [(BatchNorm2D, (3, 4, 5)), (BatchNorm1D, (6,))])
def test_batch_norm_over_processes_of_one_equals_the_local_statistics(xp, rng, kind, shape):
    """The distributed path (shifted sums, one all-reduce forward and one backward) with one
    process equals the two-pass local path: output, running statistics and every gradient."""
    models = [
        Sequential([kind(momentum=0.3)], input_shape=shape, dtype="float64", backend=xp)
        for _ in range(2)
    ]
    calls = []
    models[1].layers[0].sum_over_processes = lambda sums: calls.append(sums.shape) or sums
    for model in models:
        model.layers[0].weight.data = on(xp, np.linspace(0.5, 2.0, shape[0]))
    for _ in range(3):
        x = on(xp, rng.standard_normal((7, *shape)) * 3 + 5)  # far from the zero shift at first
        g = on(xp, rng.standard_normal((7, *shape)))
        outs, grads = [], []
        for model in models:
            outs.append(host(model.forward(x, training=True)))
            grads.append(host(model.backward(g)))
        np.testing.assert_allclose(outs[1], outs[0], atol=1e-11)
        np.testing.assert_allclose(grads[1], grads[0], atol=1e-11)
        expected, state = models[0].state_dict(), models[1].state_dict()
        for name, value in expected.items():
            np.testing.assert_allclose(host(state[name]), host(value), rtol=1e-11, atol=1e-12)
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            np.testing.assert_allclose(host(b.grad), host(a.grad), rtol=1e-12, atol=1e-12)
    assert calls == [(2 * shape[0] + 1,), (2 * shape[0],)] * 3


def test_batch_norm_over_processes_keeps_float32_statistics_of_far_off_values(rng):
    """Values of mean 1000 and std 1 in float32, the shift (the running mean) still at 0: the
    statistics summed over processes equal the local two-pass ones to float32 rounding."""
    x = (rng.standard_normal((64, 5)) + 1000.0).astype(np.float32)
    outs = []
    for summed in (False, True):
        model = Sequential([BatchNorm1D()], input_shape=(5,), backend="numpy")
        if summed:
            model.layers[0].sum_over_processes = lambda sums: sums
        outs.append(model.forward(x, training=True))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-3)


def test_batch_norm_refuses_one_value_per_channel_in_training():
    model = Sequential([Flatten(), BatchNorm1D()], input_shape=(4,), backend="numpy")
    with pytest.raises(
        ValueError, match=r"BatchNorm1D 'batchnorm1d_1': expected more than one value"
    ):
        model.forward(np.ones((1, 4), np.float32), training=True)
    model.forward(np.ones((1, 4), np.float32))  # inference takes a single sample


def test_batch_norm_weight_and_bias_are_not_weight_decayed():
    model = block_net()
    bn = [p for p in model.parameters() if "batchnorm" in p.name]
    assert bn and not any(p.decay for p in bn)


# ---------------------------------------------------------------------- mode
def test_inference_never_changes_a_buffer():
    model = block_net()
    scramble_buffers(model)
    before = model.state_dict()
    x, y = digits_like(40)
    model.forward(x)
    model.predict(x)
    model.predict_proba(x, batch_size=7)
    model.inference_function()(x)
    evaluate(model, x, y)
    after = model.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    model.forward(x, training=True)
    assert not np.array_equal(
        model.state_dict()["batchnorm2d_1.running_mean"], before["batchnorm2d_1.running_mean"]
    )


# ---------------------------------------------------------------------- one model state
def test_a_checkpoint_carries_the_buffers_and_predicts_the_same(tmp_path):
    model = block_net()
    scramble_buffers(model)
    path = save_checkpoint(tmp_path / "m.npz", model)
    assert load_checkpoint(path).meta["version"] == 3
    loaded, _ = load_model(path, backend="numpy")
    assert_same_state(loaded, model)
    x, _ = digits_like(9)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_a_version_2_checkpoint_of_a_model_without_buffers_still_loads(tmp_path):
    model = Sequential(
        [Conv2D(2, 3), ReLU(), Flatten(), Dense(3)], input_shape=(1, 5, 5), backend="numpy"
    )
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    meta = {"format": "gpucnn-checkpoint", "version": 2, "architecture": model.get_config(),
            "model_random": model.random.get_state()}  # fmt: skip
    np.savez(tmp_path / "v2.npz", meta=np.array(json.dumps(meta)), **arrays)
    loaded, _ = load_model(tmp_path / "v2.npz", backend="numpy")
    assert_same_state(loaded, model)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", block_net())
    other = Sequential.from_config(
        {"input_shape": [1, 8, 8], "layers": BLOCK_NET[:2] + BLOCK_NET[-3:]}, backend="numpy"
    )
    from gpucnn.checkpoint import CheckpointError, restore_model

    with pytest.raises(CheckpointError, match="architecture does not match"):
        restore_model(load_checkpoint(path), other)


def test_early_stopping_restores_the_best_buffers_too():
    model = block_net()
    x, y = digits_like(64)
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    Trainer(model, SGD(0.05), callbacks=[stopper], log=None, progress=False).fit(
        x, y, validation_data=(x[:20], y[:20]), epochs=3, batch_size=16
    )
    assert "residual_1.batchnorm2d_1.running_var" in stopper.best_weights
    for key, value in stopper.best_weights.items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


def test_a_pickled_estimator_keeps_the_buffers():
    from gpucnn.sklearn import CNNClassifier

    x, y = digits_like(60)
    clf = CNNClassifier(
        model=BLOCK_NET, image_shape=(1, 8, 8), epochs=1, backend="numpy", random_state=0
    )
    clf.fit(x.reshape(60, -1), y)
    scramble_buffers(clf.model_)
    copy = pickle.loads(pickle.dumps(clf))
    assert_same_state(copy.model_, clf.model_)
    np.testing.assert_array_equal(
        copy.predict_proba(x.reshape(60, -1)), clf.predict_proba(x.reshape(60, -1))
    )


def test_onnx_export_of_blocks_and_batch_norm_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from gpucnn.export import compare_with_onnxruntime

    model = block_net()
    scramble_buffers(model)
    path = model.to_onnx(tmp_path / "m.onnx")
    assert compare_with_onnxruntime(model, path, batch_sizes=(1, 5)) < 1e-5


def test_a_custom_layer_without_onnx_inside_a_block_is_refused_by_the_exporter(tmp_path):
    pytest.importorskip("onnx")
    from gpucnn.export import ExportError

    class Twice(Layer):
        def forward(self, x, training=False):
            return 2 * x

    model = Sequential(
        [Residual([Conv2D(1, 1), Twice()]), Flatten(), Dense(2)],
        input_shape=(1, 3, 3),
        backend="numpy",
    )
    with pytest.raises(ExportError, match="'residual_1.twice_1' of type Twice"):
        model.to_onnx(tmp_path / "m.onnx")


def test_training_resumes_bit_exactly_from_a_checkpoint(tmp_path):
    x, y = digits_like(80)
    straight = block_net()
    Trainer(straight, SGD(0.05, momentum=0.9), log=None, progress=False).fit(
        x, y, epochs=2, batch_size=16
    )

    first = block_net()
    trainer = Trainer(
        first, SGD(0.05, momentum=0.9), checkpoint_path=tmp_path / "c.npz", log=None, progress=False
    )
    trainer.fit(x, y, epochs=1, batch_size=16)
    checkpoint = load_checkpoint(tmp_path / "c.npz")
    resumed = block_net(seed=9)  # other initial weights: all of them must come from the file
    trainer = Trainer(resumed, SGD(0.05, momentum=0.9), log=None, progress=False)
    trainer.restore(checkpoint)
    trainer.fit(x, y, epochs=1, batch_size=16)
    assert_same_state(resumed, straight)


def _train_two_thread_ranks(scramble_rank_1: bool) -> list:
    x, y = digits_like(48)
    group, models = ThreadGroup(2), [None, None]

    def rank_main(rank):
        comm = MPICommunicator(ThreadComm(group, rank))
        model = block_net(seed=rank)  # differing starts: rank 0's must win
        if rank == 1 and scramble_rank_1:
            scramble_buffers(model)
        Trainer(model, SGD(0.05), communicator=comm, log=None, progress=False).fit(
            x, y, epochs=2, batch_size=16
        )
        models[rank] = model

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert models[0] is not None and models[1] is not None
    return models


def test_data_parallel_ranks_start_from_rank_0_and_end_with_one_model_state(monkeypatch):
    """Rank 0's state, buffers included, reaches every rank at the start (rank 1's own running
    statistics change nothing); the buffers, which each rank updates from its own share of a
    batch, are averaged over ranks after each epoch, so every rank holds (and rank 0 saves) the
    same model."""
    monkeypatch.setattr("gpucnn.distributed.import_mpi", lambda: FakeMPI)
    plain = _train_two_thread_ranks(scramble_rank_1=False)
    scrambled = _train_two_thread_ranks(scramble_rank_1=True)
    assert_same_state(plain[0], plain[1])
    assert_same_state(scrambled[0], plain[0])
    assert not np.array_equal(
        plain[0].state_dict()["batchnorm2d_1.running_mean"],
        block_net(seed=0).state_dict()["batchnorm2d_1.running_mean"],
    )


# ---------------------------------------------------------------------- the command line
def test_a_json_architecture_with_blocks_trains_and_evaluates_to_the_same_accuracy(
    tmp_path, capsys
):
    (tmp_path / "arch.json").write_text(json.dumps(BLOCK_NET))
    run = tmp_path / "run"
    args = ["train", "--model", str(tmp_path / "arch.json"), "--epochs", "2", "--out", str(run),
            "--backend", "numpy", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    trained = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.npz"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == trained


def test_layer_from_config_builds_blocks():
    layer = layer_from_config(BLOCK_NET[4])
    assert isinstance(layer, Residual) and isinstance(layer.shortcut, Conv2D)
    assert layer.get_config()["shortcut"]["name"] == "shortcut"
    assert isinstance(
        layer_from_config({"type": "Sequential", "layers": [{"type": "ReLU"}]}), Sequential
    )


def test_pools_and_dropout_nest_in_a_block_shortcut():
    model = Sequential(
        [Residual([MaxPool2D(2), ReLU()], shortcut=Sequential([AvgPool2D(2), Dropout(0.5)]))],
        input_shape=(1, 4, 4), backend="numpy",
    )  # fmt: skip
    assert model.output_shape == (1, 2, 2)
    assert any(m.uses_randomness for m in model.modules())
    x = nhwc(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    assert model.forward(np.transpose(x, (0, 3, 1, 2))).shape == (1, 1, 2, 2)
