"""PyTorch interoperability: a gpucnn model's weights, loaded into the equivalent
``torch.nn.Sequential`` (conv weights as they are, dense weights transposed), give the same
logits and the same gradients."""

import numpy as np
import pytest
from helpers import host

torch = pytest.importorskip("torch")
nn = torch.nn

from gpucnn import Sequential  # noqa: E402
from gpucnn.architectures import BUILTIN, architecture  # noqa: E402
from gpucnn.functional import softmax_cross_entropy  # noqa: E402
from gpucnn.layers import (  # noqa: E402
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Container,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sigmoid,
    SiLU,
    Tanh,
)


class TorchResidual(nn.Module):
    """``body(x) + shortcut(x)``, the identity when there is no shortcut, as gpucnn's Residual."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def to_torch(model: Sequential) -> nn.Sequential:
    """The equivalent torch network, holding ``model``'s weights and buffers in float64.

    ``net.by_path`` maps the path of each gpucnn layer with state (``residual_1.conv2d_1``) to
    its torch module, for comparing gradients and running statistics."""
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()}
    by_path: dict = {}
    net = nn.Sequential(
        *[m for layer in model.layers for m in torch_modules(layer, state, by_path)]
    )
    net = net.double().eval()
    net.by_path = by_path
    return net


def torch_modules(layer, state: dict, by_path: dict) -> list:
    """The torch modules computing ``layer`` (one, or a padding before a convolution)."""

    def loaded(module, *keys):
        for key in keys:  # weights as they are, except Dense's (transposed)
            value = state[f"{layer.path}.{key}"]
            getattr(module, key).data = (
                value.T.clone() if isinstance(layer, Dense) and key == "weight" else value.clone()
            )
        by_path[layer.path] = module
        return module

    if isinstance(layer, Residual):
        body = nn.Sequential(
            *[m for child in layer.layers for m in torch_modules(child, state, by_path)]
        )
        shortcut = None
        if layer.shortcut is not None:
            shortcut = nn.Sequential(*torch_modules(layer.shortcut, state, by_path))
        return [TorchResidual(body, shortcut)]
    if isinstance(layer, Container):  # a nested Sequential
        return [m for child in layer.layers for m in torch_modules(child, state, by_path)]
    if isinstance(layer, Conv2D):
        F, C, KH, KW = state[f"{layer.path}.weight"].shape
        PT, PB, PL, PR = layer.padding
        pad = []
        if (PT, PL) != (PB, PR):  # an asymmetric "same": torch pads both sides equally
            pad = [nn.ZeroPad2d((PL, PR, PT, PB))]
            PT = PL = 0
        conv = nn.Conv2d(C, F, (KH, KW), stride=layer.stride, padding=(PT, PL))
        return [*pad, loaded(conv, "weight", "bias")]
    if isinstance(layer, Dense):
        return [loaded(nn.Linear(*state[f"{layer.path}.weight"].shape), "weight", "bias")]
    if isinstance(layer, (BatchNorm2D, BatchNorm1D)):
        kind = nn.BatchNorm2d if isinstance(layer, BatchNorm2D) else nn.BatchNorm1d
        C = state[f"{layer.path}.weight"].shape[0]
        bn = kind(C, eps=layer.eps, momentum=layer.momentum)
        return [loaded(bn, "weight", "bias", "running_mean", "running_var")]
    simple = {
        MaxPool2D: lambda: nn.MaxPool2d(layer.pool_size, layer.stride),
        AvgPool2D: lambda: nn.AvgPool2d(layer.pool_size, layer.stride),
        GlobalAvgPool2D: lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        ReLU: nn.ReLU,
        LeakyReLU: lambda: nn.LeakyReLU(layer.negative_slope),
        SiLU: nn.SiLU,
        GELU: lambda: nn.GELU(approximate=layer.approximate),
        Sigmoid: nn.Sigmoid,
        Tanh: nn.Tanh,
        Flatten: nn.Flatten,
        Dropout: lambda: nn.Dropout(layer.rate),
    }
    if type(layer) not in simple:
        raise AssertionError(f"no torch counterpart for {layer!r}")
    return [simple[type(layer)]()]


def assert_same_parameter_gradients(model: Sequential, net: nn.Module) -> None:
    """Every parameter gradient of ``model`` equals its torch counterpart's."""
    checked = 0
    for layer in model.modules():
        for key, grad in layer.grads.items():
            expected = getattr(net.by_path[layer.path], key).grad.numpy()
            if isinstance(layer, Dense) and key == "weight":
                expected = expected.T
            np.testing.assert_allclose(
                host(grad), expected, rtol=1e-10, atol=1e-12, err_msg=f"{layer.path}.{key}"
            )
            checked += 1
    assert checked == len(model.parameters())


MIXED = (
    [Conv2D(4, 3, stride=2, padding=1), ReLU(), Conv2D(5, 4, padding="same"), ReLU(),
     MaxPool2D(3, stride=2), AvgPool2D(2, stride=1), Flatten(), Dropout(0.3), Dense(6), ReLU(),
     Dense(3)],
    (3, 17, 16),
)  # fmt: skip


def build(name, dtype="float64"):
    if name == "mixed":
        layers, shape = MIXED
        config = {"input_shape": list(shape), "layers": [layer.get_config() for layer in layers]}
    else:
        config = architecture(name, (1, 28, 28), 10)
    model = Sequential.from_config(config, backend="numpy", seed=2, dtype=dtype)
    state = model.state_dict()
    rng = np.random.default_rng(3)
    for key in state:
        if key.endswith(".bias"):
            state[key] = rng.normal(0, 0.3, state[key].shape)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("name", [*sorted(BUILTIN), "mixed"])
def test_torch_gives_the_same_logits(name):
    model = build(name)
    x = np.random.default_rng(4).random((5, *model.input_shape))
    with torch.no_grad():
        expected = to_torch(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(host(model.forward(x, training=False)), expected, atol=1e-12)
    model32 = build(name, dtype="float32")
    logits32 = host(model32.forward(x.astype(np.float32), training=False))
    np.testing.assert_allclose(logits32, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["reference", "mixed"])
def test_torch_gives_the_same_gradients(name):
    model = build(name)
    for layer in model.layers:  # dropout masks are not shared with torch
        if isinstance(layer, Dropout):
            layer.rate = 0.0
    x = np.random.default_rng(5).random((4, *model.input_shape))
    labels = np.array([0, 2, 1, 2])
    _, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
    grad_x = host(model.backward(grad))

    net = to_torch(model).train()
    x_t = torch.from_numpy(x).requires_grad_()
    nn.functional.cross_entropy(net(x_t), torch.from_numpy(labels)).backward()
    np.testing.assert_allclose(grad_x, x_t.grad.numpy(), atol=1e-12)
    torch_layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    ours = [layer for layer in model.layers if isinstance(layer, (Conv2D, Dense))]
    for layer, module in zip(ours, torch_layers, strict=True):
        weight_grad = module.weight.grad.numpy()
        if isinstance(layer, Dense):
            weight_grad = weight_grad.T
        np.testing.assert_allclose(layer.grads["weight"], weight_grad, atol=1e-12)
        np.testing.assert_allclose(layer.grads["bias"], module.bias.grad.numpy(), atol=1e-12)


def test_an_image_output_and_its_gradient_match_torch_in_n_c_h_w():
    model = Sequential(
        [Conv2D(3, 3, padding="same"), ReLU(), Conv2D(2, 2, stride=2)],
        input_shape=(2, 6, 8),
        dtype="float64",
        backend="numpy",
    )
    rng = np.random.default_rng(6)
    x = rng.random((3, 2, 6, 8))
    out = host(model.forward(x, training=True))
    G = rng.standard_normal(out.shape)
    grad_x = host(model.backward(G))

    net = to_torch(model).train()
    x_t = torch.from_numpy(x).requires_grad_()
    out_t = net(x_t)
    (out_t * torch.from_numpy(G)).sum().backward()
    np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(grad_x, x_t.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        model.layers[0].grads["weight"], net[0].weight.grad.numpy(), atol=1e-12
    )


def randomized(model: Sequential, seed: int) -> Sequential:
    """``model`` with random biases, BatchNorm weights and running statistics (so that a
    swapped or missing one shows), returned for chaining."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith((".bias", ".running_mean")):
            state[key] = rng.normal(0, 0.3, value.shape)
        elif key.endswith(".running_var") or (key.endswith(".weight") and value.ndim == 1):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
    model.load_state_dict(state)
    return model


def run_both(model: Sequential, x: np.ndarray, G: np.ndarray, training: bool):
    """Forward (and, in training, backward of ``sum(out * G)``) in gpucnn and in torch; the
    torch network, its output and its input gradient (None at inference)."""
    net = to_torch(model).train(training)
    x_t = torch.from_numpy(x).requires_grad_(training)
    out_t = net(x_t)
    if training:
        (out_t * torch.from_numpy(G)).sum().backward()
    return net, out_t.detach().numpy(), (x_t.grad.numpy() if training else None)


ACTIVATIONS = (
    [Conv2D(4, 3, padding=1), LeakyReLU(0.1), Conv2D(5, 3, padding=1), SiLU(),
     Conv2D(6, 3, stride=2, padding=1), GELU(), Conv2D(4, 3, padding=1), GELU(approximate="tanh"),
     Sigmoid(), Conv2D(5, 1), Tanh(), GlobalAvgPool2D(), Dense(6), GELU(), Dense(4),
     LeakyReLU(-0.3), Dense(3)],
    (2, 9, 8),
)  # fmt: skip


def test_new_activations_and_global_pooling_match_torch():
    layers, shape = ACTIVATIONS
    config = {"input_shape": list(shape), "layers": [layer.get_config() for layer in layers]}
    model = randomized(Sequential.from_config(config, backend="numpy", seed=1, dtype="float64"), 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, *shape)) * 2  # well into both tails of every activation
    G = rng.standard_normal((5, 3))
    out = host(model.forward(x, training=True))
    grad_x = host(model.backward(G))
    net, out_t, grad_x_t = run_both(model, x, G, training=True)
    np.testing.assert_allclose(out, out_t, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad_x, grad_x_t, rtol=1e-10, atol=1e-13)
    assert_same_parameter_gradients(model, net)
    np.testing.assert_allclose(host(model.forward(x)), out_t, rtol=1e-12, atol=1e-13)


def normalized_residual_network() -> Sequential:
    """BatchNorm2D, BatchNorm1D, Residual blocks (identity, strided Conv2D shortcut, nested
    Sequential shortcut with a BatchNorm2D), on 8x8 images of 3 channels."""
    layers = [
        Conv2D(4, 3, padding=1), BatchNorm2D(momentum=0.2), ReLU(),
        Residual([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), Conv2D(4, 3, padding=1),
                  BatchNorm2D(eps=1e-3)]),
        ReLU(),
        Residual([Conv2D(6, 3, stride=2, padding=1), BatchNorm2D(), SiLU(), Conv2D(6, 3, padding=1)],
                 shortcut=Conv2D(6, 1, stride=2)),
        Residual([Conv2D(5, 3, padding=1), BatchNorm2D(momentum=0.5), Tanh()],
                 shortcut=Sequential([Conv2D(5, 1), BatchNorm2D()])),
        Flatten(), Dense(8), BatchNorm1D(momentum=0.3), GELU(), Dense(3),
    ]  # fmt: skip
    model = Sequential(layers, input_shape=(3, 8, 8), backend="numpy", seed=4, dtype="float64")
    return randomized(model, 5)


def test_batchnorm_and_residual_blocks_match_torch_in_training():
    model = normalized_residual_network()
    rng = np.random.default_rng(6)
    x, G = rng.standard_normal((6, 3, 8, 8)), rng.standard_normal((6, 3))
    net = to_torch(model)  # before the step: torch starts from the same running statistics
    x_t = torch.from_numpy(x).requires_grad_()
    out_t = net.train()(x_t)
    (out_t * torch.from_numpy(G)).sum().backward()

    out = host(model.forward(x, training=True))  # batch statistics; running ones updated
    grad_x = host(model.backward(G))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_x, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_same_parameter_gradients(model, net)
    buffers = model.buffers()
    assert len(buffers) == 2 * 7  # each of the 7 BatchNorms's running mean and variance
    for buffer in buffers:
        path, key = buffer.name.rsplit(".", 1)
        expected = getattr(net.by_path[path], key).numpy()
        np.testing.assert_allclose(
            host(buffer.data), expected, rtol=1e-12, atol=1e-14, err_msg=buffer.name
        )


def test_batchnorm_and_residual_blocks_match_torch_at_inference():
    model = normalized_residual_network()
    before = model.state_dict()
    x = np.random.default_rng(7).standard_normal((4, 3, 8, 8))
    net = to_torch(model).eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(host(model.forward(x)), expected, rtol=1e-12, atol=1e-13)
    for key, value in model.state_dict().items():  # the running statistics, not the batch's
        np.testing.assert_array_equal(value, before[key])
        if key.endswith(("running_mean", "running_var")):
            path, name = key.rsplit(".", 1)
            np.testing.assert_array_equal(getattr(net.by_path[path], name).numpy(), value)
