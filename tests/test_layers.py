"""Layers: parameter shapes, gradients (inputs and parameters), construction errors, configs."""

import numpy as np
import pytest
from helpers import assert_gradient, host, on

from gpucnn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    BuildContext,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    SiLU,
    Tanh,
    layer_from_config,
)
from gpucnn.random import Random

# (factory, per-sample input shape in the internal (H, W, C) order, expected output shape)
LAYERS = [
    (lambda: Conv2D(3, 3), (6, 5, 2), (4, 3, 3)),
    (lambda: Conv2D(2, (3, 2), stride=(2, 1), padding=1), (7, 6, 3), (4, 7, 2)),
    (lambda: Conv2D(4, 3, stride=2, padding="same"), (7, 8, 1), (4, 4, 4)),
    (lambda: MaxPool2D(2), (6, 7, 2), (3, 3, 2)),
    (lambda: MaxPool2D(3, stride=2), (7, 7, 2), (3, 3, 2)),
    (lambda: AvgPool2D((2, 3), stride=1), (5, 6, 2), (4, 4, 2)),
    (lambda: Flatten(), (3, 4, 2), (24,)),
    (lambda: Dense(4), (7,), (4,)),
    (lambda: ReLU(), (3, 4, 2), (3, 4, 2)),
    (lambda: Dropout(0.3), (3, 4, 2), (3, 4, 2)),
    (lambda: BatchNorm2D(), (3, 4, 2), (3, 4, 2)),
    (lambda: BatchNorm1D(momentum=0.3), (5,), (5,)),
    (lambda: LeakyReLU(0.2), (3, 4, 2), (3, 4, 2)),
    (lambda: LeakyReLU(-0.5), (6,), (6,)),
    (lambda: SiLU(), (3, 4, 2), (3, 4, 2)),
    (lambda: GELU(), (3, 4, 2), (3, 4, 2)),
    (lambda: GELU(approximate="tanh"), (7,), (7,)),
    (lambda: Sigmoid(), (3, 4, 2), (3, 4, 2)),
    (lambda: Tanh(), (5,), (5,)),
    (lambda: GlobalAvgPool2D(), (3, 4, 5), (5,)),
]
IDS = [
    "conv",
    "conv-rect-stride-pad",
    "conv-same-stride2",
    "maxpool",
    "maxpool-overlap",
    "avgpool",
    "flatten",
    "dense",
    "relu",
    "dropout",
    "batchnorm2d",
    "batchnorm1d",
    "leaky-relu",
    "leaky-relu-negative-slope-below-0",
    "silu",
    "gelu",
    "gelu-tanh",
    "sigmoid",
    "tanh",
    "global-avg-pool",
]


def build(layer, shape, xp, dtype, seed=0):
    random = Random(seed, xp)
    out_shape = layer.build(shape, BuildContext(xp, dtype, random))
    return out_shape, random


@pytest.mark.parametrize("factory,in_shape,out_shape", LAYERS, ids=IDS)
def test_layer_gradients_match_central_differences(xp, rng, factory, in_shape, out_shape):
    layer = factory()
    assert build(layer, in_shape, xp, xp.float64)[0] == out_shape
    x = rng.permutation(2 * int(np.prod(in_shape))).reshape(2, *in_shape) / 7.0 - 1.0  # no ties
    x = np.where(np.abs(x) < 1e-3, 0.5, x)
    random = getattr(layer, "random", None)
    state = random.get_state() if random else None

    def loss(x_):
        if random:  # the same dropout mask on every call
            random.set_state(state)
        return float(np.sum(host(layer.forward(on(xp, x_), training=True)) * g))

    g = rng.standard_normal((2, *out_shape))
    loss(x)
    grad_x = host(layer.backward(on(xp, g)))
    assert grad_x.shape == x.shape
    assert set(layer.grads) == set(layer.params)
    analytic = {k: host(v) for k, v in layer.grads.items()}
    assert_gradient(loss, x, grad_x)
    for key, value in layer.params.items():
        assert tuple(value.shape) == analytic[key].shape
        p = host(value).copy()

        def loss_p(v, key=key):
            layer.params[key] = on(xp, v)
            return loss(x)

        assert_gradient(loss_p, p, analytic[key], max_entries=40)
        layer.params[key] = on(xp, p)


def test_parameter_shapes_follow_the_public_convention(xp):
    conv, dense = Conv2D(5, (3, 2)), Dense(7)
    build(conv, (9, 8, 3), xp, xp.float32)
    build(dense, (11,), xp, xp.float32)
    assert tuple(conv.params["weight"].shape) == (5, 3, 3, 2)
    assert tuple(conv.params["bias"].shape) == (5,)
    assert tuple(dense.params["weight"].shape) == (11, 7)
    assert tuple(dense.params["bias"].shape) == (7,)
    assert conv.params["weight"].dtype == xp.float32


def test_he_initialisation_scale():
    conv = Conv2D(64, 3)
    build(conv, (10, 10, 32), np, np.float64)
    std = np.std(conv.params["weight"])
    np.testing.assert_allclose(std, np.sqrt(2.0 / (32 * 9)), rtol=0.05)
    assert not np.any(conv.params["bias"])


def test_max_pool_stride_defaults_to_pool_size():
    assert MaxPool2D(3).stride == (3, 3)
    assert MaxPool2D((2, 3), stride=1).stride == (1, 1)


def test_dropout_is_identity_at_inference(rng):
    layer = Dropout(0.5)
    build(layer, (4,), np, np.float64)
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    dropped = layer.forward(np.ones((200, 4)), training=True)
    assert set(np.unique(dropped)) == {0.0, 2.0}


@pytest.mark.parametrize(
    "factory,shape,message",
    [
        (
            lambda: Conv2D(4, 5),
            (3, 3, 1),
            r"Conv2D 'conv2d'.*kernel \(5, 5\).*at least \(5, 5\); received \(3, 3\)",
        ),
        (
            lambda: Conv2D(4, 3, padding=1),
            (4,),
            r"expected an image input of shape \(C, H, W\); received per-sample shape \(4,\)",
        ),
        (
            lambda: MaxPool2D(4),
            (3, 5, 2),
            r"window \(4, 4\) does not fit.*received input shape \(2, 3, 5\)",
        ),
        (
            lambda: GlobalAvgPool2D(),
            (6,),
            r"expected an image input of shape \(C, H, W\); received per-sample shape \(6,\)",
        ),
        (
            lambda: Dense(3),
            (4, 4, 2),
            r"expected a flat input.*received per-sample shape \(2, 4, 4\).*Flatten",
        ),
    ],
)
def test_layers_that_cannot_fit_fail_at_build(factory, shape, message):
    with pytest.raises(ValueError, match=message):
        build(factory(), shape, np, np.float32)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Conv2D(0, 3), "filters to be an int >= 1; received 0"),
        (lambda: Conv2D(4, (3, 3, 3)), "kernel_size to be an int or a pair"),
        (lambda: Conv2D(4, 3, stride=0), "stride >= 1"),
        (lambda: Conv2D(4, 3, padding="full"), "padding 'same', 'valid'"),
        (lambda: Conv2D(4, 3, padding=-1), "padding >= 0"),
        (lambda: Dense(0), "units to be an int >= 1"),
        (lambda: Dropout(1.0), r"rate in \[0, 1\)"),
        (lambda: LeakyReLU(float("nan")), "negative_slope as a finite number; received nan"),
        (lambda: LeakyReLU("0.1"), "negative_slope as a finite number"),
        (lambda: GELU("erf"), r"approximate in \('none', 'tanh'\); received 'erf'"),
    ],
)
def test_bad_hyper_parameters_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_forward_rejects_input_of_the_wrong_shape():
    conv = Conv2D(2, 3)
    build(conv, (5, 5, 1), np, np.float32)
    with pytest.raises(
        ValueError, match=r"expected input of shape \('N', 5, 5, 1\).*received \(2, 5, 5, 3\)"
    ):
        conv.forward(np.zeros((2, 5, 5, 3), np.float32))


@pytest.mark.parametrize("factory", [f for f, _, _ in LAYERS], ids=IDS)
def test_config_round_trip(factory):
    layer = factory()
    clone = layer_from_config(layer.get_config())
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def test_unknown_layer_config_is_rejected():
    with pytest.raises(ValueError, match="expected a layer type in"):
        layer_from_config({"type": "Conv3D"})
    with pytest.raises(ValueError, match="bad arguments for layer Dense"):
        layer_from_config({"type": "Dense", "unitz": 3})


def test_elementwise_backward_without_a_training_pass_says_so():
    layer = GELU()
    build(layer, (3,), np, np.float64)
    layer.forward(np.ones((2, 3)))  # inference keeps nothing
    with pytest.raises(
        ValueError, match=r"GELU 'gelu': backward needs a forward pass with training=True"
    ):
        layer.backward(np.ones((2, 3)))


def test_a_model_of_the_new_layers_survives_json_and_a_checkpoint(tmp_path):
    import json

    from gpucnn import Sequential
    from gpucnn.checkpoint import load_model, save_checkpoint

    layers = [Conv2D(3, 3), LeakyReLU(0.2), GELU("tanh"), SiLU(), GlobalAvgPool2D(), Dense(4),
              Sigmoid(), Dense(2), Tanh(), GELU()]  # fmt: skip
    config = {"input_shape": [2, 6, 6], "layers": [layer.get_config() for layer in layers]}
    model = Sequential.from_config(json.loads(json.dumps(config)), backend="numpy", seed=3)
    save_checkpoint(tmp_path / "m.npz", model)
    loaded, _ = load_model(tmp_path / "m.npz", backend="numpy")
    assert loaded.get_config() == model.get_config()
    assert [layer.get_config() for layer in loaded.layers] == config["layers"]
    x = np.random.default_rng(0).random((3, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(host(loaded.forward(x)), host(model.forward(x)))
