"""ONNX export: the graph passes the full ONNX checker, and ONNX Runtime reproduces
``model.forward(x, training=False)`` for every built-in architecture and every layer option."""

import sys

import numpy as np
import pytest
from helpers import host

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from gpucnn import SGD, Sequential  # noqa: E402
from gpucnn.architectures import BUILTIN, architecture  # noqa: E402
from gpucnn.cli import main  # noqa: E402
from gpucnn.data import load_dataset  # noqa: E402
from gpucnn.export import OPSET, ExportError, export_onnx, to_onnx_model  # noqa: E402
from gpucnn.layers import (  # noqa: E402
    GELU,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    SiLU,
    Tanh,
)
from gpucnn.trainer import Trainer  # noqa: E402

TOLERANCE = 1e-5  # float32, absolute and relative

# name -> (layers, per-sample input shape)
NETWORKS = {
    "stride 2 and padding 1": (
        [
            Conv2D(4, 3, stride=2, padding=1),
            ReLU(),
            Conv2D(5, 3, padding=1),
            ReLU(),
            Flatten(),
            Dense(3),
        ],
        (3, 11, 10),
    ),
    "asymmetric same": (
        # an even kernel, and stride 2 on an even size: both pad one more at the bottom/right
        [
            Conv2D(4, 4, padding="same"),
            ReLU(),
            Conv2D(3, 3, stride=2, padding="same"),
            ReLU(),
            Conv2D(2, (2, 3), padding="same"),
            Flatten(),
            Dense(4),
        ],
        (2, 10, 9),
    ),
    "pair padding and rectangular stride": (
        [Conv2D(3, (3, 2), stride=(1, 2), padding=(2, 0)), ReLU(), Flatten(), Dense(2)],
        (1, 7, 8),
    ),
    "overlapping max-pool": (
        [
            Conv2D(4, 3),
            ReLU(),
            MaxPool2D(3, stride=2),
            MaxPool2D((3, 2), stride=(1, 2)),
            Flatten(),
            Dense(5),
        ],
        (2, 13, 14),
    ),
    "average pooling": (
        [
            Conv2D(4, 3, padding=1),
            AvgPool2D(2),
            ReLU(),
            AvgPool2D(3, stride=2),
            Flatten(),
            Dense(3),
        ],
        (1, 12, 12),
    ),
    "dropout": (
        [
            Conv2D(3, 3),
            ReLU(),
            Dropout(0.3),
            MaxPool2D(2),
            Flatten(),
            Dropout(0.5),
            Dense(6),
            ReLU(),
            Dropout(0.2),
            Dense(3),
            Dropout(0.1),
        ],
        (1, 8, 8),
    ),
    "image output": ([Conv2D(3, 3, padding="same"), ReLU(), MaxPool2D(2)], (2, 6, 8)),
    "vector input": ([Flatten(), Dense(8), ReLU(), Dropout(0.5), Dense(3)], (12,)),
    "activations and global average pooling": (
        [
            Conv2D(4, 3, padding=1),
            LeakyReLU(0.1),
            Conv2D(5, 3),
            SiLU(),
            Conv2D(4, 3, padding=1),
            GELU(),
            Sigmoid(),
            Conv2D(3, 1),
            GELU(approximate="tanh"),
            Tanh(),
            GlobalAvgPool2D(),
            Dense(3),
        ],
        (2, 9, 8),
    ),
    # the last layer writes several nodes: the graph output is its last one
    "vector activations ending in SiLU": (
        [Dense(6), GELU(), Dense(5), Tanh(), Dense(4), LeakyReLU(-0.2), Dense(3), SiLU()],
        (7,),
    ),
    "global average pooling output": ([Conv2D(3, 3), Sigmoid(), GlobalAvgPool2D()], (2, 6, 5)),
}


def build(name, dtype="float32", backend="numpy"):
    """A fresh model for a NETWORKS entry or a built-in architecture name."""
    if name in NETWORKS:
        layers, shape = NETWORKS[name]
        config = {"input_shape": list(shape), "layers": [layer.get_config() for layer in layers]}
    else:
        builtin, _, side = name.partition("@")
        config = architecture(builtin, (1, int(side), int(side)), 10)
    model = Sequential.from_config(config, backend=backend, seed=5, dtype=dtype)
    # non-zero biases, so that a misplaced bias cannot hide
    rng = np.random.default_rng(6)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(".bias"):
            state[key] = rng.normal(0, 0.5, value.shape).astype(value.dtype)
    model.load_state_dict(state)
    return model


def run_onnxruntime(path, x, outputs=("logits",)):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {session.get_inputs()[0].name: x})


ALL = [f"{name}@28" for name in sorted(BUILTIN)] + ["small@8"] + sorted(NETWORKS)


@pytest.mark.parametrize("name", ALL)
def test_onnxruntime_matches_forward_at_batch_1_and_7(name, tmp_path):
    model = build(name)
    path = model.to_onnx(tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    rng = np.random.default_rng(7)
    for n in (1, 7):
        x = rng.random((n, *model.input_shape), dtype=np.float32)
        expected = host(model.forward(x, training=False))
        (got,) = run_onnxruntime(path, x)
        assert got.dtype == np.float32 and got.shape == expected.shape == (n, *model.output_shape)
        np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE)


def test_a_float64_model_exports_as_float32(tmp_path):
    model = build("overlapping max-pool", dtype="float64")
    path = export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(8).random((7, *model.input_shape), dtype=np.float32)
    (got,) = run_onnxruntime(path, x)
    np.testing.assert_allclose(got, host(model.forward(x, training=False)), rtol=1e-5, atol=1e-5)


def test_a_model_on_any_namespace_exports_the_same_graph(xp):
    reference = to_onnx_model(build("asymmetric same"))
    model = build("asymmetric same", backend=xp)
    assert to_onnx_model(model).SerializeToString() == reference.SerializeToString()


def test_graph_interface_opset_and_node_mapping():
    model = build("reference@28")
    proto = to_onnx_model(model, probabilities=True)
    assert OPSET >= 17 and [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    (image,) = proto.graph.input
    assert image.name == "images"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    assert [node.op_type for node in proto.graph.node] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm",
        "Softmax",
    ]  # fmt: skip
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for key, value in model.state_dict().items():  # every weight as it is: no transposes
        np.testing.assert_array_equal(weights[key], value)


def test_new_layers_write_their_opset_17_nodes():
    proto = to_onnx_model(build("activations and global average pooling"))
    ops = [node.op_type for node in proto.graph.node]
    gelu = ["Mul", "Erf", "Add", "Mul", "Mul"]
    gelu_tanh = ["Mul", "Mul", "Mul", "Add", "Mul", "Tanh", "Add", "Mul", "Mul"]
    assert ops == [
        "Conv", "LeakyRelu", "Conv", "Sigmoid", "Mul", "Conv", *gelu, "Sigmoid", "Conv",
        *gelu_tanh, "Tanh", "GlobalAveragePool", "Flatten", "Gemm",
    ]  # fmt: skip
    (leaky,) = [node for node in proto.graph.node if node.op_type == "LeakyRelu"]
    assert onnx.helper.get_attribute_value(leaky.attribute[0]) == pytest.approx(0.1)
    state = build("activations and global average pooling").state_dict()
    constants = {
        t.name: float(onnx.numpy_helper.to_array(t))
        for t in proto.graph.initializer
        if t.name not in state
    }
    assert constants["gelu_1/sqrt_half"] == pytest.approx(np.sqrt(0.5))
    assert constants["gelu_2/cubic"] == pytest.approx(0.044715)
    assert constants["gelu_2/scale"] == pytest.approx(np.sqrt(2 / np.pi))
    names = [output for node in proto.graph.node for output in node.output]
    assert len(names) == len(set(names))  # every tensor written once


def test_asymmetric_same_padding_is_written_explicitly():
    proto = to_onnx_model(build("asymmetric same"))
    pads = [
        [a.ints for a in node.attribute if a.name == "pads"][0]
        for node in proto.graph.node
        if node.op_type == "Conv"
    ]
    # ONNX order [top, left, bottom, right]. Kernel 4 on 10x9: 3 rows and 3 columns, the extra
    # one after; kernel 3, stride 2 on 10x9 -> 5x5: 1 row (0 + 1) and 2 columns (1 + 1);
    # kernel (2, 3) on 5x5: 1 row (0 + 1) and 2 columns (1 + 1)
    assert [list(p) for p in pads] == [[1, 1, 2, 2], [0, 1, 1, 1], [0, 1, 1, 1]]


def test_probabilities_output_equals_predict_proba(tmp_path):
    for name in ("small@8", "image output"):
        model = build(name)
        path = model.to_onnx(tmp_path / f"{name}.onnx", probabilities=True)
        x = np.random.default_rng(9).random((7, *model.input_shape), dtype=np.float32)
        logits, probs = run_onnxruntime(path, x, ("logits", "probabilities"))
        np.testing.assert_allclose(probs, model.predict_proba(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_digits_model_gives_the_same_labels_in_onnxruntime(tmp_path):
    digits = load_dataset("digits", seed=0)
    x_train, y_train, x_test = digits.x_train, digits.y_train, digits.x_test
    model = Sequential.from_config(architecture("small", (1, 8, 8), 10), backend="numpy", seed=0)
    Trainer(model, SGD(0.05, momentum=0.9), log=None).fit(x_train, y_train, epochs=3, batch_size=32)
    path = model.to_onnx(tmp_path / "digits.onnx")
    (logits,) = run_onnxruntime(path, x_test.astype(np.float32))
    assert len(x_test) == 359  # the whole held-out 20 % of the 1,797 digits
    np.testing.assert_array_equal(np.argmax(logits, axis=1), model.predict(x_test))
    np.testing.assert_allclose(logits, host(model.forward(x_test, training=False)), atol=TOLERANCE)


class Square(Layer):
    """A layer ONNX export does not know."""

    def forward(self, x, training=True):
        return x * x

    def backward(self, grad_out, need_input_grad=True):
        raise NotImplementedError


def test_a_layer_without_onnx_mapping_fails_in_one_line(tmp_path):
    model = Sequential([Flatten(), Square(), Dense(2)], input_shape=(4,), backend="numpy")
    with pytest.raises(ExportError) as info:
        model.to_onnx(tmp_path / "m.onnx")
    message = str(info.value)
    assert "\n" not in message and "layer 'square_1' of type Square" in message
    assert "expected a layer that writes its own ONNX nodes" in message
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError, match=r'pip install "gpucnn\[onnx\]"'):
        build("small@8").to_onnx(tmp_path / "m.onnx")


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "2", "--out", str(out), "--backend", "numpy"]) == 0
    return out


def test_cli_export_writes_a_file_onnxruntime_runs(trained_digits, tmp_path, capsys):
    target = tmp_path / "digits.onnx"
    code = main(["export", str(trained_digits / "model.npz"), "-o", str(target), "--check"])
    out = capsys.readouterr().out
    assert code == 0 and target.is_file()
    assert f"ONNX opset {OPSET}" in out and "input (N, 1, 8, 8) float32 -> logits (N, 10)" in out
    assert "largest difference" in out
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert run_onnxruntime(target, x)[0].shape == (3, 10)


def test_cli_export_defaults_to_a_file_beside_the_model(trained_digits, tmp_path):
    model = tmp_path / "m.npz"
    model.write_bytes((trained_digits / "model.npz").read_bytes())
    assert main(["export", str(model)]) == 0
    assert (tmp_path / "m.onnx").is_file()


def test_cli_export_of_an_unexportable_model_exits_2_in_one_line(
    trained_digits, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(Dense, "onnx_nodes", Layer.onnx_nodes)  # as a layer that writes no nodes
    code = main(["export", str(trained_digits / "model.npz"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot export layer 'dense_1' of type Dense to ONNX" in err


def test_cli_export_without_onnx_exits_2_naming_the_extra(
    trained_digits, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnx", None)
    code = main(["export", str(trained_digits / "model.npz"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "gpucnn[onnx]" in err
