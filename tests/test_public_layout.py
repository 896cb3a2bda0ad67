"""The public (N, C, H, W) layout: Flatten's feature order, image outputs and gradients at the
model boundary, and version-1 files (Dense rows in the old (H, W, C) order) loading unchanged."""

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_gradient, conv2d_naive, host, nchw, nhwc, on

from gpucnn import SGD, Adam, Sequential
from gpucnn.checkpoint import (
    VERSION,
    CheckpointError,
    load_checkpoint,
    load_model,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from gpucnn.layers import Conv2D, Dense, Dropout, Flatten, ReLU

FIXTURE = Path(__file__).parent / "data" / "v1_checkpoint.npz"


def conv_only(xp, dtype="float64"):
    """A model whose output is still an image: (2, 5, 6) -> (3, 5, 6)."""
    return Sequential(
        [Conv2D(3, 3, padding=1)], input_shape=(2, 5, 6), dtype=dtype, backend=xp, seed=1
    )


# ---------------------------------------------------------------------- Flatten order
def test_flatten_emits_features_in_c_h_w_order(xp, rng):
    model = Sequential(
        [Conv2D(3, 3, padding=1), Flatten()], input_shape=(2, 5, 6), dtype="float64", backend=xp
    )
    x = rng.standard_normal((4, 2, 5, 6))
    w, b = (host(model.layers[0].params[k]) for k in ("weight", "bias"))
    expected = conv2d_naive(x, w, b, (1, 1), (1, 1, 1, 1)).reshape(4, -1)
    np.testing.assert_allclose(host(model.forward(on(xp, x), training=False)), expected, atol=1e-12)


def test_flatten_layer_alone_round_trips(xp, rng):
    layer = Sequential([Flatten()], input_shape=(3, 2, 4), backend=xp).layers[0]
    x = rng.standard_normal((2, 3, 2, 4))
    out = host(layer.forward(on(xp, nhwc(x)), training=True))
    np.testing.assert_array_equal(out, x.reshape(2, 24))
    back = host(layer.backward(on(xp, out)))
    np.testing.assert_array_equal(nchw(back), x)


# ---------------------------------------------------------------------- image outputs
def test_image_output_is_n_c_h_w_and_backward_takes_n_c_h_w(xp, rng):
    model = conv_only(xp)
    assert model.output_shape == (3, 5, 6)
    x = rng.standard_normal((2, 2, 5, 6))
    w, b = (host(model.layers[0].params[k]) for k in ("weight", "bias"))
    out = host(model.forward(on(xp, x), training=True))
    np.testing.assert_allclose(out, conv2d_naive(x, w, b, (1, 1), (1, 1, 1, 1)), atol=1e-12)

    # d/dw of sum(out * G) for a G in the public layout, against central differences
    G = rng.standard_normal(out.shape)
    model.backward(on(xp, G))
    analytic = host(model.layers[0].grads["weight"])

    def loss(v):
        model.layers[0].params["weight"] = on(xp, v)
        return float(np.sum(host(model.forward(on(xp, x), training=False)) * G))

    assert_gradient(loss, w.copy(), analytic, max_entries=20)


def test_predict_proba_of_an_image_output_is_a_softmax_over_channels(rng):
    model = conv_only("numpy", dtype="float32")
    probs = model.predict_proba(rng.random((3, 2, 5, 6)).astype(np.float32))
    assert probs.shape == (3, 3, 5, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.predict(rng.random((3, 2, 5, 6)).astype(np.float32)).shape == (3, 5, 6)


@pytest.mark.parametrize(
    "shape,why",
    [((2, 5, 6, 3), "channels-last"), ((3, 3, 5, 6), "another batch size"), ((2, 90), "flat")],
)
def test_a_gradient_of_the_wrong_shape_is_refused_naming_the_layer(shape, why):
    model = conv_only("numpy")
    model.forward(np.zeros((2, 2, 5, 6)), training=True)
    expected = "Conv2D 'conv2d_1': expected a gradient of the model output's shape (2, 3, 5, 6)"
    with pytest.raises(
        ValueError, match=re.escape(expected) + f".*received {re.escape(str(shape))}"
    ):
        model.backward(np.zeros(shape))


def test_a_classifier_refuses_a_gradient_of_the_wrong_width():
    model = Sequential([Flatten(), Dense(4)], input_shape=(1, 2, 2), backend="numpy")
    model.forward(np.zeros((2, 1, 2, 2)), training=True)
    with pytest.raises(ValueError, match=r"Dense 'dense_1'.*\(2, 4\).*received \(2, 5\)"):
        model.backward(np.zeros((2, 5)))


# ---------------------------------------------------------------------- version-1 files
def _fixture_input(meta):
    rng = np.random.default_rng(meta["fixture"]["input_seed"])
    return rng.random((5, 2, 5, 6)).astype(np.float32)


def test_a_version_1_file_loads_with_the_same_predictions():
    # tests/data/v1_checkpoint.npz was written by gpucnn before the (C, H, W) Flatten order:
    # Conv2D(3, 3, padding=1), ReLU, MaxPool2D(2), Flatten, Dense(6), ReLU, Dropout, Dense(3)
    # on (2, 5, 6) inputs, after three SGD-momentum steps; its meta holds the logits it gave.
    model, checkpoint = load_model(FIXTURE, backend="numpy")
    meta = checkpoint.meta
    assert meta["version"] == VERSION and meta["upgraded_from_version"] == 1
    x = _fixture_input(meta)
    expected = np.array(meta["fixture"]["logits"], np.float32)
    logits = host(model.forward(x, training=False))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), expected.argmax(axis=1))


def test_a_version_1_checkpoint_resumes_with_its_optimizer_state():
    # One more SGD step from the file (the momentum buffers of dense_1.weight convert too)
    # lands where the version-1 code landed; the fixture recorded that step without dropout.
    checkpoint = load_checkpoint(FIXTURE)
    model = Sequential.from_config(checkpoint.meta["architecture"], backend="numpy")
    restore_model(checkpoint, model)
    optimizer = SGD(0.02, momentum=0.9)
    restore_optimizer(checkpoint, optimizer)
    assert optimizer.steps == 3
    x = _fixture_input(checkpoint.meta)
    model.layers[6].rate = 0.0  # the file's step was taken without dropout (masks may change)
    model.loss_and_backward(x, np.array(checkpoint.meta["fixture"]["labels"]))
    optimizer.step(model)
    expected = np.array(checkpoint.meta["fixture"]["logits_after_one_more_step"], np.float32)
    np.testing.assert_allclose(
        host(model.forward(x, training=False)), expected, rtol=1e-5, atol=1e-6
    )


def _rewrite_as_version_1(path: Path, flatten_input_chw: tuple[int, int, int], dense: str):
    """Rewrite a current file in the version-1 layout: rows of ``dense`` in (H, W, C) order."""
    C, H, W = flatten_input_chw
    with np.load(path, allow_pickle=False) as data:  # version 1 held parameters under param/
        arrays = {k.replace("model/", "param/", 1): data[k] for k in data.files}
    for key in list(arrays):
        if key == f"param/{dense}.weight" or key.startswith(f"optim/{dense}.weight/"):
            rows = arrays[key]
            arrays[key] = rows.reshape(C, H, W, -1).transpose(1, 2, 0, 3).reshape(C * H * W, -1)
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 1
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_a_version_1_file_made_by_permuting_a_current_one_loads_unchanged(tmp_path, rng):
    model = Sequential(
        [Conv2D(4, 3, stride=2, padding="same"), ReLU(), Flatten(), Dropout(0.3), ReLU(),
         Dense(5), ReLU(), Dense(3)],
        input_shape=(3, 7, 6), backend="numpy", seed=4,
    )  # fmt: skip
    x = rng.random((6, 3, 7, 6)).astype(np.float32)
    optimizer = Adam(1e-2)
    model.loss_and_backward(x, np.arange(6) % 3)
    optimizer.step(model)
    path = save_checkpoint(tmp_path / "old.npz", model, optimizer)
    _rewrite_as_version_1(path, (4, 4, 3), "dense_1")
    with np.load(path) as data:  # the file really holds the other order
        assert not np.array_equal(
            data["param/dense_1.weight"], model.state_dict()["dense_1.weight"]
        )
    loaded, checkpoint = load_model(path, backend="numpy")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    for key, value in optimizer.state_dict()["arrays"].items():
        np.testing.assert_array_equal(checkpoint.optimizer[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_a_file_of_an_unknown_version_is_refused_in_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", conv_only("numpy"))
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"expected checkpoint version 1 or 2.*received 99"):
        load_checkpoint(path)


def test_the_fixture_is_a_plain_npz_with_version_1():
    with zipfile.ZipFile(FIXTURE) as archive:
        assert "meta.npy" in archive.namelist()
    with np.load(FIXTURE, allow_pickle=False) as data:
        assert json.loads(str(data["meta"]))["version"] == 1
