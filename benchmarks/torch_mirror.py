"""Shared by the PyTorch comparisons: a gpucnn model's twin in PyTorch, parity, timing.

:func:`torch_twin` walks a built gpucnn model's layer tree and returns the equivalent
``torch.nn`` module holding the *same* weights and buffers (convolution weights as they are,
dense weights transposed), so both libraries time the same network and :func:`check_parity`
can prove it (float64 logits and every parameter's gradient). :func:`time_torch` and
:func:`time_gpucnn` time training steps (forward, loss, backward, SGD with momentum) or
inference on one batch, in images per second.

Used by ``compare_torch.py`` and ``cpu_suite.py``; needs ``torch`` (on a CPU-only machine
``pip install torch==2.13.0``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from gpucnn.backend import synchronize, to_numpy


def torch_twin(model, torch, dtype=None):
    """The ``torch.nn.Module`` computing what the built gpucnn ``model`` computes, with its
    weights and buffers copied (in ``dtype``, by default the model's). Raises ``ValueError``
    naming a layer type that has no twin written here."""
    nn = torch.nn
    dtype = dtype or getattr(torch, np.dtype(model.dtype).name)

    def tensor(array):
        return torch.from_numpy(np.array(to_numpy(array))).to(dtype)

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def twin(layer) -> nn.Module:
        kind = type(layer).__name__
        if kind == "Conv2D":
            weight, bias = layer.params["weight"], layer.params["bias"]
            F, C, KH, KW = weight.shape
            PT, PB, PL, PR = layer.padding
            conv = nn.Conv2d(C, F, (KH, KW), stride=layer.stride, padding=(PT, PL))
            conv.weight.data, conv.bias.data = tensor(weight), tensor(bias)
            if (PT, PL) == (PB, PR):
                return conv
            # an asymmetric "same": torch pads both sides equally
            conv.padding = (0, 0)
            return nn.Sequential(nn.ZeroPad2d((PL, PR, PT, PB)), conv)
        if kind == "Dense":
            weight, bias = layer.params["weight"], layer.params["bias"]
            linear = nn.Linear(*weight.shape)
            linear.weight.data, linear.bias.data = tensor(weight).T.contiguous(), tensor(bias)
            return linear
        if kind in ("BatchNorm2D", "BatchNorm1D"):
            features = layer.params["weight"].shape[0]
            norm_type = nn.BatchNorm2d if kind == "BatchNorm2D" else nn.BatchNorm1d
            norm = norm_type(features, eps=layer.eps, momentum=layer.momentum)
            norm.weight.data, norm.bias.data = tensor(layer.weight.data), tensor(layer.bias.data)
            norm.running_mean.data = tensor(layer.running_mean.data)
            norm.running_var.data = tensor(layer.running_var.data)
            return norm
        if kind == "MaxPool2D":
            return nn.MaxPool2d(layer.pool_size, layer.stride)
        if kind == "AvgPool2D":
            return nn.AvgPool2d(layer.pool_size, layer.stride)
        if kind == "GlobalAvgPool2D":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if kind == "ReLU":
            return nn.ReLU()
        if kind == "Flatten":
            return nn.Flatten()
        if kind == "Dropout":
            return nn.Dropout(layer.rate)
        if kind == "Residual":
            shortcut = None if layer.shortcut is None else twin(layer.shortcut)
            return Residual(nn.Sequential(*map(twin, layer.layers)), shortcut)
        if kind == "Sequential":
            return nn.Sequential(*map(twin, layer.layers))
        raise ValueError(f"no torch twin written for {kind}")

    return nn.Sequential(*map(twin, model.layers)).to(dtype)


def _trainable_layers(model) -> list:
    """Layers owning parameters, in the order torch's ``parameters()`` meets their twins."""

    def walk(layer):
        kind = type(layer).__name__
        if kind in ("Sequential", "Residual"):
            for child in layer.layers:
                yield from walk(child)
            if kind == "Residual" and layer.shortcut is not None:
                yield from walk(layer.shortcut)
        elif layer.parameters():
            yield layer

    return [layer for child in model.layers for layer in walk(child)]


def check_parity(model, torch, batch: int = 4, tolerance: float = 1e-9) -> float:
    """Largest absolute difference between the float64 ``model`` (training mode: dropout
    off, BatchNorm on batch statistics) and its torch twin, over the logits and every
    parameter's gradient of a softmax cross-entropy loss; raises ``AssertionError`` above
    ``tolerance``."""
    from gpucnn.functional import softmax_cross_entropy

    rng = np.random.default_rng(7)
    x = rng.random((batch, *model.input_shape))
    labels = rng.integers(0, model.output_shape[0], batch)
    net = torch_twin(model, torch, torch.float64).train()
    logits = to_numpy(model.forward(x, training=True))
    _, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
    model.backward(grad, need_input_grad=False)
    x_t = torch.from_numpy(x)
    logits_t = net(x_t)
    torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels)).backward()
    worst = float(np.max(np.abs(logits - logits_t.detach().numpy())))
    modules = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    layers = _trainable_layers(model)
    if len(modules) != len(layers):
        raise AssertionError(f"{len(layers)} layers with parameters, {len(modules)} torch modules")
    for layer, module in zip(layers, modules, strict=True):
        for key in ("weight", "bias"):
            ours = to_numpy(layer.grads[key])
            theirs = getattr(module, key).grad.numpy()
            if type(layer).__name__ == "Dense" and key == "weight":
                theirs = theirs.T
            worst = max(worst, float(np.max(np.abs(ours - theirs))))
    if not worst <= tolerance:
        raise AssertionError(f"gpucnn and torch differ by {worst:.3g} (> {tolerance:g})")
    return worst


def random_biases(model, seed: int = 3) -> None:
    """Replace every bias (zeros at initialisation) by small random values, so a parity check
    also sees the biases' routing."""
    state = model.state_dict()
    rng = np.random.default_rng(seed)
    for key in state:
        if key.endswith(".bias"):
            state[key] = rng.normal(0, 0.3, state[key].shape).astype(state[key].dtype)
    model.load_state_dict(state)


def time_torch(torch, model, x, y, optimizer, mode: str, steps: int, device: str = "cpu") -> float:
    """Images/s of ``steps`` training steps (``mode="train"``) or inference passes."""
    loss_fn = torch.nn.CrossEntropyLoss()
    cuda = torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run():
        if mode == "train":
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                optimizer.step()
        else:
            with torch.inference_mode():
                for _ in range(steps):
                    model(x)

    sync()
    start = time.perf_counter()
    run()
    sync()
    return len(x) * steps / (time.perf_counter() - start)


def time_gpucnn(model, x, y, step, mode: str, steps: int) -> float:
    """Images/s of ``steps`` calls of ``step(x, y)`` (a training step) or of the model's
    inference function."""
    xp = model.xp
    infer = model.inference_function()  # a CUDA graph per batch shape on a GPU

    def run():
        for _ in range(steps):
            if mode == "train":
                step(x, y)
            else:
                infer(x)

    synchronize(xp)
    start = time.perf_counter()
    run()
    synchronize(xp)
    return len(x) * steps / (time.perf_counter() - start)


def steps_for(rate_probe: Any, batch_size: int, seconds: float, at_least: int = 2) -> int:
    """Steps that take about ``seconds`` at the rate (images/s) ``rate_probe()`` measures."""
    return max(at_least, int(round(seconds * rate_probe() / batch_size)))
