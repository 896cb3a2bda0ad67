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


class TorchResidual(nn.Module):
    """``body(x) + shortcut(x)``, as gpucnn's Residual."""

    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def to_torch(model: Sequential) -> nn.Sequential:
    """The equivalent torch network, holding ``model``'s state in float64 (in eval mode)."""
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()}
    return nn.Sequential(*(torch_layer(layer, state) for layer in model.layers)).double().eval()


def torch_layer(layer, state) -> nn.Module:
    """One gpucnn layer (containers recursively) as a torch module with its state."""
    if isinstance(layer, Residual):
        shortcut = nn.Identity() if layer.shortcut is None else torch_layer(layer.shortcut, state)
        body = nn.Sequential(*(torch_layer(child, state) for child in layer.layers))
        return TorchResidual(body, shortcut)
    if isinstance(layer, Sequential):
        return nn.Sequential(*(torch_layer(child, state) for child in layer.layers))
    if isinstance(layer, Conv2D):
        weight, bias = state[f"{layer.path}.weight"], state[f"{layer.path}.bias"]
        F, C, KH, KW = weight.shape
        PT, PB, PL, PR = layer.padding
        pad = None
        if (PT, PL) != (PB, PR):  # an asymmetric "same": torch pads both sides equally
            pad = nn.ZeroPad2d((PL, PR, PT, PB))
            PT = PL = 0
        conv = nn.Conv2d(C, F, (KH, KW), stride=layer.stride, padding=(PT, PL))
        conv.weight.data, conv.bias.data = weight.clone(), bias.clone()  # as they are
        return conv if pad is None else nn.Sequential(pad, conv)
    if isinstance(layer, (BatchNorm2D, BatchNorm1D)):
        kind = nn.BatchNorm2d if isinstance(layer, BatchNorm2D) else nn.BatchNorm1d
        bn = kind(layer.weight.shape[0], eps=layer.eps, momentum=layer.momentum)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, key).data = state[f"{layer.path}.{key}"].clone()
        return bn
    if isinstance(layer, Dense):
        weight, bias = state[f"{layer.path}.weight"], state[f"{layer.path}.bias"]
        linear = nn.Linear(*weight.shape)
        linear.weight.data, linear.bias.data = weight.T.clone(), bias.clone()  # transposed
        return linear
    if isinstance(layer, MaxPool2D):
        return nn.MaxPool2d(layer.pool_size, layer.stride)
    if isinstance(layer, AvgPool2D):
        return nn.AvgPool2d(layer.pool_size, layer.stride)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.rate)
    if type(layer).__name__ == "GlobalAvgPool2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    raise AssertionError(f"no torch counterpart for {layer!r}")


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
    for layer in model.modules():  # dropout masks are not shared with torch
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
    torch_layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ours = [layer for layer in model.modules() if isinstance(layer, (Conv2D, Dense))]
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
