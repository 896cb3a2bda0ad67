"""Optimizer updates against the textbook formulas, written out independently here."""

import numpy as np
import pytest
from helpers import host, on

from gpucnn import SGD, Adam, Parameter, Sequential
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from gpucnn.optim import (
    AdamW,
    ConstantLR,
    CosineLR,
    ExponentialLR,
    StepLR,
    WarmupLR,
    clip_grad_norm,
    grad_square_norm,
    make_optimizer,
    make_schedule,
)


def tiny_model(xp):
    return Sequential([Dense(3)], input_shape=(4,), dtype="float64", backend=xp, seed=0)


def run_steps(xp, optimizer, grads):
    model = tiny_model(xp)
    layer = model.layers[0]
    w0, b0 = host(layer.params["weight"]).copy(), host(layer.params["bias"]).copy()
    for gw, gb in grads:
        layer.grads = {"weight": on(xp, gw), "bias": on(xp, gb)}
        optimizer.step(model)
    return w0, b0, host(layer.params["weight"]), host(layer.params["bias"])


@pytest.fixture
def grads(rng):
    return [(rng.standard_normal((4, 3)), rng.standard_normal(3)) for _ in range(3)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_weight_decay(xp, grads, nesterov):
    lr, mu, wd = 0.1, 0.9, 0.01
    w0, b0, w, b = run_steps(xp, SGD(lr, momentum=mu, nesterov=nesterov, weight_decay=wd), grads)
    expected = []
    for p, decay, index in ((w0.copy(), wd, 0), (b0.copy(), 0.0, 1)):  # no decay on biases
        v = None
        for pair in grads:
            g = pair[index] + decay * p
            v = g if v is None else mu * v + g
            p = p - lr * (g + mu * v if nesterov else v)
        expected.append(p)
    np.testing.assert_allclose(w, expected[0], rtol=1e-12)
    np.testing.assert_allclose(b, expected[1], rtol=1e-12)


def test_plain_sgd(xp, grads):
    w0, _, w, _ = run_steps(xp, SGD(0.5), grads)
    np.testing.assert_allclose(w, w0 - 0.5 * sum(g for g, _ in grads), rtol=1e-12)


def test_adam_with_decoupled_weight_decay(xp, grads):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    w0, b0, w, b = run_steps(xp, Adam(lr, b1, b2, eps, weight_decay=wd), grads)
    for start, final, decay, index in ((w0, w, wd, 0), (b0, b, 0.0, 1)):
        p, m, v = start.copy(), 0.0, 0.0
        for t, pair in enumerate(grads, start=1):
            g = pair[index]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - lr * decay * p
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(final, p, rtol=1e-10)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: SGD(lr=0), "learning rate lr > 0; received 0"),
        (lambda: SGD(lr=float("nan")), "learning rate"),
        (lambda: SGD(momentum=1.0), r"momentum in \[0, 1\)"),
        (lambda: SGD(nesterov=True), "Nesterov momentum needs momentum > 0"),
        (lambda: Adam(beta2=1.5), r"beta2 in \[0, 1\)"),
        (lambda: SGD(weight_decay=-1), "weight_decay >= 0"),
    ],
)
def test_bad_optimizer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_parameters_carry_names_and_the_weight_decay_flag():
    model = Sequential(
        [Conv2D(2, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(3)],
        input_shape=(1, 6, 6),
        backend="numpy",
    )
    found = {(p.name, p.decay) for p in model.parameters()}
    assert found == {
        ("conv2d_1.weight", True),
        ("conv2d_1.bias", False),
        ("dense_1.weight", True),
        ("dense_1.bias", False),
    }
    conv = model.layers[0]
    assert conv.params["weight"] is conv.weight.data  # the README's dict view
    conv.params["bias"] = np.ones(2, np.float32)
    assert np.array_equal(conv.bias.data, np.ones(2))
    assert dict(conv.grads) == {}  # nothing computed yet


def test_clipping_without_a_trainer_bounds_the_global_norm(xp, rng):
    model = tiny_model(xp)
    layer = model.layers[0]
    gw, gb = rng.standard_normal((4, 3)) * 10, rng.standard_normal(3) * 10
    layer.grads = {"weight": on(xp, gw), "bias": on(xp, gb)}
    norm = float(np.sqrt(host(grad_square_norm(model.parameters()))))
    assert norm == pytest.approx(np.sqrt(np.sum(gw**2) + np.sum(gb**2)))
    w0 = host(layer.params["weight"]).copy()
    SGD(1.0, clip_norm=0.5).step(model)  # plain SGD: the update is the clipped gradient
    np.testing.assert_allclose(w0 - host(layer.params["weight"]), gw * 0.5 / norm, rtol=1e-9)
    clip_grad_norm([layer.weight], 1e6)  # a norm below the bound is left alone
    np.testing.assert_allclose(host(layer.grads["weight"]), gw * 0.5 / norm, rtol=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=2.0),
        lambda: Adam(0.01, weight_decay=0.1),
    ],
)
def test_state_dict_and_load_state_dict_mirror_each_other(xp, grads, make):
    first, second = make(), make()
    w_first = run_steps(xp, first, grads[:2])[2]
    state = first.state_dict()
    assert state["config"] == first.get_config() and state["steps"] == 2
    second.load_state_dict(state)  # host arrays; moved to the parameters' device at the step
    assert second.state_dict()["steps"] == 2
    model = tiny_model(xp)
    model.layers[0].params = {
        "weight": on(xp, w_first),
        "bias": on(xp, run_steps(xp, make(), grads[:2])[3]),
    }
    first_model = tiny_model(xp)
    first_model.load_state_dict(model.state_dict())
    for opt, m in ((first, first_model), (second, model)):
        gw, gb = grads[2]
        m.layers[0].grads = {"weight": on(xp, gw), "bias": on(xp, gb)}
        opt.step(m)
    np.testing.assert_array_equal(
        host(model.layers[0].weight.data), host(first_model.layers[0].weight.data)
    )
    for slots in second.state.values():
        assert all(type(v) is type(model.layers[0].weight.data) for v in slots.values())


def test_load_state_dict_refuses_another_optimizer():
    with pytest.raises(ValueError, match="expected .*'momentum': 0.5.*received"):
        SGD(0.1, momentum=0.5).load_state_dict(SGD(0.1, momentum=0.9).state_dict())


def test_optimizers_and_schedules_rebuild_from_their_configs():
    for optimizer in (SGD(0.1, momentum=0.9, clip_norm=1.0), Adam(weight_decay=0.1)):
        assert make_optimizer(optimizer.get_config()).get_config() == optimizer.get_config()
    warmup = WarmupLR(2, CosineLR(5, 0.1))
    for schedule in (ConstantLR(), StepLR(2, 0.5), ExponentialLR(0.9), CosineLR(5, 0.1), warmup):
        clone = make_schedule(schedule.get_config())
        assert type(clone) is type(schedule) and clone.get_config() == schedule.get_config()
    with pytest.raises(
        ValueError, match=r"expected an optimizer type in \['adam', 'adamw', 'sgd'\]"
    ):
        make_optimizer({"type": "rmsprop"})
    with pytest.raises(ValueError, match="bad arguments for schedule step"):
        make_schedule({"type": "step", "size": 3})


def test_restored_state_for_other_parameters_is_refused(grads):
    optimizer = SGD(0.1, momentum=0.9)
    run_steps(np, optimizer, grads[:1])
    state = optimizer.state_dict()
    state["arrays"] = {k.replace("dense_1", "dense_9"): v for k, v in state["arrays"].items()}
    again = SGD(0.1, momentum=0.9)
    again.load_state_dict(state)
    with pytest.raises(ValueError, match=r"optimizer state for parameters \['dense_9.bias'"):
        again.step(tiny_model(np))


def test_warmup_ramps_linearly_then_follows_its_schedule():
    cosine = CosineLR(8)
    warmup = WarmupLR(3, cosine)
    assert [warmup(e) for e in range(3)] == pytest.approx(
        [c * (e + 1) / 4 for e, c in enumerate(map(cosine, range(3)))]
    )
    assert [warmup(e) for e in range(3, 8)] == [cosine(e) for e in range(3, 8)]
    assert WarmupLR(1)(0) == 0.5 and WarmupLR(1)(5) == 1.0
    with pytest.raises(ValueError, match="WarmupLR: expected epochs as an int >= 1; received 0"):
        WarmupLR(0)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal((3, 4)), [rng.standard_normal((3, 4)) for _ in range(5)]
    ours = Parameter(w0.copy(), "w", decay=True)
    theirs = torch.nn.Parameter(torch.tensor(w0.copy()))
    optimizer, reference = AdamW(0.01), torch.optim.AdamW([theirs], lr=0.01)
    assert optimizer.weight_decay == reference.defaults["weight_decay"] == 0.01
    for g in grads:
        ours.grad = g.copy()
        optimizer.step([ours])
        theirs.grad = torch.tensor(g.copy())
        reference.step()
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12)
