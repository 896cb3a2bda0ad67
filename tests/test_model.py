"""Sequential: whole-network gradients, shape inference, inference helpers, input validation."""

import contextlib

import numpy as np
import pytest
from helpers import assert_gradient, host, on

from gpucnn import Sequential
from gpucnn.functional import softmax, softmax_cross_entropy
from gpucnn.layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Residual,
)


def deep_net(xp, dtype="float64", seed=3):
    """Two conv layers with several filters each, both pool kinds, dropout, dense and ReLU."""
    return Sequential(
        [
            Conv2D(3, 3, padding=1), ReLU(), MaxPool2D(3, stride=2),
            Conv2D(4, (2, 3), padding="same"), ReLU(), AvgPool2D(2, stride=1),
            Flatten(), Dropout(0.2), Dense(5), ReLU(), Dense(3),
        ],
        input_shape=(2, 9, 8), dtype=dtype, backend=xp, seed=seed,
    )  # fmt: skip


def reference_net(**kwargs):
    return Sequential(
        [Conv2D(32, 3), ReLU(), MaxPool2D(2), Conv2D(64, 3, stride=1, padding=1), ReLU(), MaxPool2D(2),
         Flatten(), Dense(128), ReLU(), Dense(10)],
        input_shape=(1, 28, 28), **kwargs,
    )  # fmt: skip


def pooled_conv_net(xp, dtype="float64", seed=5):
    """Both convolutions fuse with ReLU and a non-overlapping max-pool (ragged edges, padding,
    stride, a 3x2 pooling window)."""
    return Sequential(
        [
            Conv2D(3, 3, padding=1), ReLU(), MaxPool2D(2),
            Conv2D(5, (2, 3), stride=(1, 2), padding=(1, 0)), ReLU(), MaxPool2D((3, 2)),
            Flatten(), Dense(3),
        ],
        input_shape=(2, 11, 10), dtype=dtype, backend=xp, seed=seed,
    )  # fmt: skip


def residual_net(xp, dtype="float64", seed=6):
    """A tree: BatchNorm, an identity and a projected Residual block (dropout inside), and a
    nested Sequential head with BatchNorm1D."""
    return Sequential(
        [
            Conv2D(3, 3, padding=1), BatchNorm2D(), ReLU(),
            Residual([Conv2D(3, 3, padding="same"), BatchNorm2D(), ReLU(), Dropout(0.2),
                      Conv2D(3, 3, padding=1)]),
            Residual([Conv2D(4, 3, stride=2, padding=1), ReLU(), MaxPool2D(2)],
                     shortcut=Sequential([Conv2D(4, 1, stride=2), AvgPool2D(2)])),
            Sequential([Flatten(), Dense(5), BatchNorm1D(), ReLU(), Dense(3)]),
        ],
        input_shape=(2, 6, 6), dtype=dtype, backend=xp, seed=seed,
    )  # fmt: skip


@pytest.mark.parametrize("net", [deep_net, pooled_conv_net, residual_net])
def test_whole_network_gradients_match_central_differences(xp, rng, net):
    model = net(xp)
    x = rng.standard_normal((3, *model.input_shape))
    labels = np.array([0, 2, 1])
    state = model.random.get_state()

    def loss(x_):
        model.random.set_state(state)  # the same dropout mask on every call
        logits = model.forward(on(xp, x_), training=True, check=False)
        return float(softmax_cross_entropy(logits, on(xp, labels))[0])

    model.random.set_state(state)
    _, grad = softmax_cross_entropy(model.forward(on(xp, x), training=True), on(xp, labels))
    grad_x = host(model.backward(grad))
    assert grad_x.shape == x.shape  # returned in the public (N, C, H, W) layout
    analytic = {param.name: host(param.grad) for param in model.parameters()}
    assert_gradient(loss, x, grad_x)
    for param in model.parameters():
        p = host(param.data).copy()

        def loss_p(v, param=param):
            param.data = on(xp, v)
            return loss(x)

        # a bias followed by a BatchNorm has a zero gradient (the mean removes it)
        assert_gradient(loss_p, p, analytic[param.name], max_entries=30, atol=1e-8)
        param.data = on(xp, p)


def test_shape_inference_and_summary_of_the_reference_network():
    model = reference_net(backend="numpy")
    shapes = [layer.output_shape for layer in model.layers]
    assert shapes[0] == (26, 26, 32) and shapes[5] == (6, 6, 64) and shapes[6] == (2304,)
    assert model.output_shape == (10,)
    text = model.summary(print_fn=None)
    assert "(N, 32, 26, 26)" in text and "(N, 64, 6, 6)" in text
    # independent count: 32*9+32, 64*32*9+64, 2304*128+128, 128*10+10
    assert model.num_params == 320 + 18496 + 295040 + 1290
    assert "315,146" in text


def test_forward_backward_public_api(xp, rng):
    model = reference_net(backend=xp, dtype="float32", seed=0)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    logits = model.forward(on(xp, x), training=True)
    assert tuple(logits.shape) == (4, 10) and logits.dtype == xp.float32
    grad_x = model.backward(on(xp, np.ones((4, 10), np.float32)))
    assert tuple(grad_x.shape) == (4, 1, 28, 28)
    for layer in model.layers:
        assert set(layer.grads) == set(layer.params)


def test_same_seed_gives_the_same_weights_on_every_namespace(xp):
    a = deep_net("numpy", dtype="float32", seed=11).state_dict()
    b = deep_net(xp, dtype="float32", seed=11).state_dict()
    c = deep_net("numpy", dtype="float32", seed=12).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_predict_runs_in_batches_and_returns_numpy(xp, rng):
    model = deep_net(xp, dtype="float32")
    x = rng.random((7, 2, 9, 8)).astype(np.float32)
    probs = model.predict_proba(x, batch_size=3)
    assert isinstance(probs, np.ndarray) and probs.shape == (7, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    full = model.predict_proba(x, batch_size=100)
    np.testing.assert_allclose(probs, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), np.argmax(full, axis=1))


def test_state_dict_round_trip_and_mismatch():
    model = deep_net("numpy")
    other = deep_net("numpy", seed=99)
    other.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).random((2, 2, 9, 8))
    np.testing.assert_array_equal(model.predict_proba(x), other.predict_proba(x))
    state = model.state_dict()
    state["dense_1.weight"] = state["dense_1.weight"][:, :2]
    with pytest.raises(
        ValueError, match=r"dense_1.weight: expected shape \(\d+, 5\); received \(\d+, 2\)"
    ):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({})


def test_config_round_trip_rebuilds_the_same_architecture():
    model = deep_net("numpy")
    clone = Sequential.from_config(model.get_config(), backend="numpy", seed=3)
    assert clone.get_config() == model.get_config()
    assert all(np.array_equal(v, clone.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "x,message",
    [
        (
            np.zeros((2, 28, 28), np.float32),
            r"expected input of shape \('N', 1, 28, 28\); received \(2, 28, 28\)",
        ),
        (np.zeros((2, 3, 28, 28), np.float32), r"received \(2, 3, 28, 28\)"),
        (
            np.zeros((2, 1, 28, 28), np.uint8),
            "expected floating-point input.*received dtype .*uint8",
        ),
        (
            np.full((2, 1, 28, 28), np.nan, np.float32),
            "expected finite input values; received NaN or inf",
        ),
        ([[1.0]], "expected an array input; received list"),
    ],
)
def test_bad_inputs_are_rejected(xp, x, message):
    model = reference_net(backend=xp)
    with pytest.raises(ValueError, match=message):
        model.forward(x)


def test_labels_out_of_range_are_rejected(xp):
    model = deep_net(xp, dtype="float32")
    with pytest.raises(
        ValueError, match=r"expected labels in \[0, 2\]; received labels in \[0, 3\]"
    ):
        model.loss_and_backward(np.zeros((2, 2, 9, 8), np.float32), np.array([0, 3]))


def test_a_kernel_larger_than_its_input_fails_at_construction():
    with pytest.raises(
        ValueError, match=r"Conv2D 'conv2d_2'.*at least \(5, 5\); received \(3, 3\)"
    ):
        Sequential(
            [Conv2D(2, 3), MaxPool2D(2), Conv2D(2, 5)], input_shape=(1, 8, 8), backend="numpy"
        )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dtype": "float16"}, r"expected dtype in \('float32', 'float64'\); received 'float16'"),
        ({"input_shape": (28, 28)}, r"expected input_shape \(C, H, W\) or \(D,\)"),
        (
            {"backend": "tpu"},
            r"expected a backend in \('auto', 'numpy', 'cupy'\); received backend='tpu'",
        ),
    ],
)
def test_bad_model_arguments(kwargs, message):
    args = {"input_shape": (1, 8, 8), "backend": "numpy"} | kwargs
    with pytest.raises(ValueError, match=message):
        Sequential([Conv2D(2, 3)], **args)


def test_relu_maxpool_pairs_run_pooled_first_with_identical_results(xp, rng):
    """The model evaluates ReLU -> MaxPool2D as pool-then-ReLU; check it against layer order."""
    model = Sequential(
        [Conv2D(3, 3), ReLU(), MaxPool2D(2), Conv2D(4, 2), ReLU(), MaxPool2D(3, stride=1), Flatten(), Dense(2)],
        input_shape=(1, 11, 11), dtype="float64", backend=xp, seed=4,
    )  # fmt: skip
    assert len(model.steps) == len(model.layers) - 3  # conv+relu+pool, then relu+pool
    x = rng.standard_normal((3, 1, 11, 11))
    x[0, 0, :4, :4] = -1.0  # a region whose windows are all <= 0 after the first conv too
    g = rng.standard_normal((3, 2))
    assert_training_equals_the_layers(xp, model, x, g, tol=1e-13)


def assert_training_equals_the_layers(xp, model, x, g, tol):
    """A training forward and backward of ``model`` (its fused steps) give the output, input
    gradient and parameter gradients of its layers run one by one, in the order written."""
    fused_out = host(model.forward(on(xp, x), training=True))
    fused_grad = host(model.backward(on(xp, g)))
    fused_params = {param.name: host(param.grad) for param in model.parameters()}

    h = xp.permute_dims(on(xp, x), (0, 2, 3, 1))
    for layer in model.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_allclose(host(h), fused_out, rtol=tol, atol=tol)
    grad = on(xp, g)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    np.testing.assert_allclose(
        host(xp.permute_dims(grad, (0, 3, 1, 2))), fused_grad, rtol=tol, atol=tol
    )
    for param in model.parameters():
        np.testing.assert_allclose(host(param.grad), fused_params[param.name], rtol=tol, atol=tol)


def test_batch_norm_steps_fuse_with_identical_results(xp, rng):
    """Conv2D, BatchNorm2D (and ReLU) and BatchNorm1D, ReLU run as fused steps (the
    convolution's BatchNorm folded into its weights at inference); training output, every
    gradient and inference equal the layers run one by one, float64 on every namespace."""
    from gpucnn.layers import (
        BatchNorm1D,
        BatchNorm1DReLU,
        BatchNorm2D,
        BatchNorm2DReLU,
        Conv2DBatchNorm2D,
        Conv2DBatchNorm2DReLU,
    )

    model = Sequential(
        [Conv2D(3, 3), BatchNorm2D(), ReLU(), Conv2D(2, 1, stride=2), BatchNorm2D(),
         BatchNorm2D(), ReLU(), Flatten(), Dense(5), BatchNorm1D(), ReLU(), Dense(2)],
        input_shape=(2, 6, 6), dtype="float64", backend=xp, seed=4,
    )  # fmt: skip
    kinds = [type(step) for step in model.steps]
    assert kinds[:3] == [Conv2DBatchNorm2DReLU, Conv2DBatchNorm2D, BatchNorm2DReLU]
    assert BatchNorm1DReLU in kinds and len(kinds) == 7
    x = rng.standard_normal((4, 2, 6, 6)) + 1.0
    g = rng.standard_normal((4, 2))
    norms = [layer for layer in model.layers if isinstance(layer, (BatchNorm2D, BatchNorm1D))]
    for norm in norms:  # running statistics away from 0 and 1
        norm.running_mean.data[...] = on(xp, rng.standard_normal(norm.running_mean.shape))
        norm.running_var.data[...] = on(xp, rng.uniform(0.5, 2.0, norm.running_var.shape))
    h = xp.permute_dims(on(xp, x), (0, 2, 3, 1))
    for layer in model.layers:
        h = layer.forward(h)
    np.testing.assert_allclose(host(h), host(model.forward(on(xp, x))), rtol=1e-12, atol=1e-12)
    assert_training_equals_the_layers(xp, model, x, g, tol=1e-12)


@pytest.mark.parametrize("pool", [(2, 2), (3, 2)])  # windows that tile, and that overlap
def test_conv_batch_norm_relu_max_pool_fuses_with_identical_results(xp, rng, pool):
    """Conv2D, BatchNorm2D, ReLU, MaxPool2D run as one step, the ReLU taken after the pooling
    (at inference the BatchNorm folded and, for windows that tile, the pool-aware convolution);
    training output, every gradient and inference equal the layers', float64."""
    from gpucnn.layers import BatchNorm2D, Conv2DBatchNorm2DReLUMaxPool2D

    size, stride = pool

    def build():
        return Sequential(
            [Conv2D(3, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(size, stride=stride),
             Conv2D(2, 3), BatchNorm2D(), ReLU(), MaxPool2D(size, stride=stride), Flatten(),
             Dense(2)],
            input_shape=(2, 11, 11), dtype="float64", backend=xp, seed=4,
        )  # fmt: skip

    model = build()
    kinds = [type(step) for step in model.steps]
    assert kinds[:2] == [Conv2DBatchNorm2DReLUMaxPool2D] * 2 and len(kinds) == 4
    x = rng.standard_normal((4, 2, 11, 11))
    x[0, :, :5, :5] = -3.0  # windows whose maximum is negative after the BatchNorm too
    g = rng.standard_normal((4, 2))
    for layer in model.layers:
        if isinstance(layer, BatchNorm2D):  # running statistics away from 0 and 1
            layer.running_mean.data[...] = on(xp, rng.standard_normal(layer.running_mean.shape))
            layer.running_var.data[...] = on(xp, rng.uniform(0.5, 2.0, layer.running_var.shape))
            layer.weight.data[...] = on(xp, rng.standard_normal(layer.weight.shape))  # some < 0
    h = xp.permute_dims(on(xp, x), (0, 2, 3, 1))
    for layer in model.layers:
        h = layer.forward(h)
    np.testing.assert_allclose(host(h), host(model.forward(on(xp, x))), rtol=1e-12, atol=1e-12)
    # a training pass updates the running statistics as the layers do, and the next inference
    # folds the updated ones and keeps no training activations
    unfused = build()
    unfused.load_state_dict(model.state_dict())
    unfused.steps = list(unfused.layers)
    for twin in (model, unfused):
        twin.forward(on(xp, x), training=True)
    state, expected = model.state_dict(), unfused.state_dict()
    for name, value in expected.items():
        np.testing.assert_allclose(state[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        host(model.forward(on(xp, x))), host(unfused.forward(on(xp, x))), rtol=1e-12, atol=1e-12
    )
    for step in model.steps[:2]:
        caches = (step.head.conv._cache, step.head.norm._cache, step.tail._cache)
        assert all(cache is None for cache in caches)
    assert_training_equals_the_layers(xp, model, x, g, tol=1e-12)


def test_blocked_cpu_inference_equals_one_pass(rng):
    from gpucnn.model import INFERENCE_BLOCK

    model = deep_net("numpy", dtype="float64")
    model.layers[7].rate = 0.0  # no dropout, so the training pass is deterministic too
    x = rng.standard_normal((2 * INFERENCE_BLOCK + 5, 2, 9, 8))
    blocked = model.predict_proba(x)  # runs in blocks of INFERENCE_BLOCK
    whole = softmax(model.forward(x, training=True))  # one pass over the whole batch
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12)


def test_backward_after_an_inference_forward_is_refused():
    model = deep_net("numpy")
    model.forward(np.zeros((1, 2, 9, 8)), training=False)
    with pytest.raises(RuntimeError, match=r"needs a preceding forward\(x, training=True\)"):
        model.backward(np.zeros((1, 3)))


def test_fusion_plan_lives_in_layers_and_fuses_only_exact_types():
    from gpucnn.layers import Conv2DReLU, Conv2DReLUMaxPool2D, ReLUMaxPool2D, plan

    class MyReLU(ReLU):
        pass

    layers = [ReLU(), MaxPool2D(2), MyReLU(), MaxPool2D(2), ReLU(), Flatten()]
    steps = plan(layers)
    assert isinstance(steps[0], ReLUMaxPool2D)
    assert steps[1:] == layers[2:]
    # a convolution joins only a pooling whose windows do not overlap; else it takes the ReLU
    layers = [Conv2D(2, 3), ReLU(), MaxPool2D(2), Conv2D(2, 3), ReLU(), MaxPool2D(3, stride=2)]
    steps = plan(layers)
    assert isinstance(steps[0], Conv2DReLUMaxPool2D) and isinstance(steps[1], Conv2DReLU)
    assert steps[2] is layers[5] and len(steps) == 3
    layers = [Conv2D(2, 3), MyReLU(), Conv2D(2, 3), ReLU(), ReLU()]
    steps = plan(layers)
    assert steps[:2] == layers[:2] and isinstance(steps[2], Conv2DReLU) and steps[3] is layers[4]


def test_fused_conv_relu_training_equals_the_layers_and_central_differences(rng):
    """Convolutions back to back (one strided), each followed by a ReLU: Conv2DReLU steps,
    in the NumPy thread mode (two threads, every op split), float64."""
    import os
    from unittest import mock

    from gpucnn.functional import _cpu_threads

    model = Sequential(
        [Conv2D(3, 3, padding="same"), ReLU(), Conv2D(4, 3, stride=2, padding=1), ReLU(),
         Flatten(), Dense(3)],
        input_shape=(2, 7, 6), dtype="float64", backend="numpy", seed=3,
    )  # fmt: skip
    assert [type(step).__name__ for step in model.steps[:2]] == ["Conv2DReLU"] * 2
    x = rng.standard_normal((4, *model.input_shape))
    labels = np.array([0, 2, 1, 2])
    with (
        mock.patch.object(_cpu_threads, "MIN_PART_BYTES", 0),
        mock.patch.dict(os.environ, {_cpu_threads.CPU_THREADS_ENV: "2"}),
    ):
        logits = host(model.forward(x, training=True))
        _, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
        grad_x = host(model.backward(grad))
        params = {param.name: host(param.grad) for param in model.parameters()}

        def loss(v):
            return float(softmax_cross_entropy(model.forward(v, training=False), labels)[0])

        assert_gradient(loss, x, grad_x)
        for param in model.parameters():
            saved = param.data.copy()

            def loss_of_param(v, param=param):
                param.data[...] = v
                return loss(x)

            assert_gradient(loss_of_param, saved.copy(), params[param.name])
            param.data[...] = saved
    h = np.transpose(x, (0, 2, 3, 1))
    for layer in model.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_allclose(h, logits, rtol=1e-13, atol=1e-13)
    g = grad
    for layer in reversed(model.layers):
        g = layer.backward(g)
    np.testing.assert_allclose(np.transpose(g, (0, 3, 1, 2)), grad_x, rtol=1e-12, atol=1e-13)
    for param in model.parameters():
        np.testing.assert_allclose(param.grad, params[param.name], rtol=1e-12, atol=1e-13)


def test_fused_conv_relu_pool_training_equals_the_layers_one_by_one(xp, rng):
    model = pooled_conv_net(xp)
    assert [type(step).__name__ for step in model.steps[:2]] == ["Conv2DReLUMaxPool2D"] * 2
    x = rng.standard_normal((4, *model.input_shape))
    x[0, :, :5, :5] = -3.0  # windows whose maximum is not positive: no gradient
    g = rng.standard_normal((4, 3))
    fused_out = host(model.forward(on(xp, x), training=True))
    fused_grad = host(model.backward(on(xp, g)))
    fused_params = {param.name: host(param.grad) for param in model.parameters()}
    h = xp.permute_dims(on(xp, x), (0, 2, 3, 1))
    for layer in model.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_allclose(host(h), fused_out, rtol=1e-13, atol=1e-13)
    grad = on(xp, g)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    grad = host(xp.permute_dims(grad, (0, 3, 1, 2)))
    np.testing.assert_allclose(grad, fused_grad, rtol=1e-13, atol=1e-13)
    for param in model.parameters():
        np.testing.assert_allclose(
            host(param.grad), fused_params[param.name], rtol=1e-13, atol=1e-13
        )


def test_step_hook_sees_every_step_in_both_directions():
    model = deep_net("numpy")
    seen = []

    @contextlib.contextmanager
    def hook(name, phase):
        seen.append((name, phase))
        yield

    model.loss_and_backward(np.zeros((2, 2, 9, 8)), np.array([0, 1]), step_hook=hook)
    names = [step.name for step in model.steps]
    assert seen == [(n, "forward") for n in names] + [(n, "backward") for n in reversed(names)]
