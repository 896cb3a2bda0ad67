"""ONNX export: a trained :class:`~gpucnn.Sequential` as a file ONNX Runtime (or any ONNX
consumer) runs unchanged.

The graph uses opset 17 of the default ONNX domain (IR version 8, readable by ONNX Runtime
1.14 and later) and is built with the ``onnx`` package (``pip install "gpucnn[onnx]"``).

* Input ``images``: float32 (N, C, H, W), with N a symbolic batch dimension. A model on flat
  vectors takes ``features`` (N, D) instead.
* Output ``logits``: float32 ``(N, *output_shape)``, exactly what ``model.forward(x,
  training=False)`` returns (an image output is (N, C, H, W)). With ``probabilities=True`` a
  second output ``probabilities`` applies Softmax over axis 1, as ``predict_proba`` does.

Every weight is written as it is (cast to float32): the public layout of gpucnn is ONNX's.

Each layer writes its own nodes (``Layer.onnx_nodes``); for the built-in ones:

======================  ============================================================
gpucnn layer            ONNX
======================  ============================================================
Conv2D                  Conv: weight (F, C, KH, KW), bias (F,), strides, explicit pads
                        [PT, PL, PB, PR] (so an asymmetric "same" stays exact)
MaxPool2D               MaxPool: kernel_shape, strides (windows may overlap), no pads,
                        floor rounding (ceil_mode 0), as gpucnn pools
AvgPool2D               AveragePool: the same; every window lies inside the image, so the
                        mean is over KH*KW values, as in gpucnn (count_include_pad is moot)
GlobalAvgPool2D         GlobalAveragePool, then Flatten(axis=1): (N, C, H, W) -> (N, C)
ReLU                    Relu
LeakyReLU               LeakyRelu(alpha=negative_slope)
Sigmoid, Tanh           Sigmoid, Tanh
SiLU                    Sigmoid, then Mul by the input
GELU                    x * 0.5 * (1 + Erf(x * sqrt(1/2))) as Mul, Erf, Add, Mul, Mul with
                        scalar constants; approximate="tanh": the same around Tanh of
                        sqrt(2/pi) * (x + 0.044715 x**3)
Flatten                 Flatten(axis=1): (N, C, H, W) -> (N, C*H*W), gpucnn's feature order
Dense                   Gemm(x, weight (in, out), bias)
Dropout                 nothing: it is the identity at inference
Sequential (nested)     its layers' nodes
Residual                the body's nodes, the shortcut's (if any) on the block's input,
                        then Add
======================  ============================================================

The export walks the model's layer tree; fused evaluation steps (:mod:`gpucnn.layers.fused`, e.g.
ReLU + MaxPool2D run as one) are an execution detail and appear as their separate nodes.
A layer without an ``onnx_nodes`` method (a user's own :class:`~gpucnn.layers.Layer` subclass
that does not write one) makes the export fail with :class:`ExportError` naming the layer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .layers import Layer

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17: the oldest runtimes can read it
INPUT_NAMES = {"image": "images", "vector": "features"}
LOGITS = "logits"
PROBABILITIES = "probabilities"
BATCH = "N"


class ExportError(ValueError):
    """The model cannot be written as ONNX, or the ``onnx`` package is missing."""


def require_onnx():
    """Import and return the ``onnx`` module, or raise :class:`ExportError` naming the extra."""
    try:
        import onnx
    except ImportError:
        raise ExportError(
            'ONNX export needs the onnx package: pip install "gpucnn[onnx]" (or pip install onnx)'
        ) from None
    return onnx


class _Graph:
    """Nodes and initializers accumulated layer by layer; ``current`` names the last tensor."""

    def __init__(self, onnx, state: dict[str, np.ndarray], input_name: str):
        self.onnx = onnx
        self.state = state
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.current = input_name

    def weight(self, layer: Layer, key: str) -> str:
        """Add the layer's array ``key`` (from the model state) as an initializer; its name."""
        name = f"{layer.path}.{key}"
        array = np.ascontiguousarray(self.state[name], dtype=np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def constant(self, layer: Layer, key: str, value: float) -> str:
        """Add a float32 scalar initializer ``"<path>/<key>"`` (a constant of the layer's
        formula, not model state: "/" keeps it apart from the state's dotted names); its name."""
        name = f"{layer.path}/{key}"
        array = np.asarray(value, dtype=np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(
        self, op: str, layer: Layer, inputs: list[str], output: str | None = None, **attributes: Any
    ) -> str:
        """Append node ``op`` on the current tensor and ``inputs``; its output, named after the
        layer's path (or ``output``, for a layer's intermediate nodes), becomes the current
        tensor. Returns that name."""
        output = layer.path if output is None else output
        self.nodes.append(
            self.onnx.helper.make_node(
                op, [self.current, *inputs], [output], name=output, **attributes
            )
        )
        self.current = output
        return output


def to_onnx_model(model, probabilities: bool = False):
    """Build the ONNX ``ModelProto`` of ``model`` (see the module docstring for the graph).

    Parameters
    ----------
    model : a built :class:`~gpucnn.Sequential`, on any backend and dtype.
    probabilities : also output ``probabilities``, Softmax of the logits over axis 1.

    Returns
    -------
    onnx.ModelProto, checked with ``onnx.checker.check_model(..., full_check=True)``.

    Raises
    ------
    ExportError : a layer has no ONNX mapping (the message names it), or ``onnx`` is missing.
    """
    for layer in model.modules():  # whether the model can be written does not need onnx
        if not layer.exportable and not layer.children():
            raise ExportError(
                f"cannot export layer '{layer.path}' of type {type(layer).__name__} to ONNX: "
                "expected a layer that writes its own ONNX nodes (an onnx_nodes method)"
            )
    onnx = require_onnx()
    from . import __version__

    helper, TensorProto = onnx.helper, onnx.TensorProto
    image = len(model.input_shape) == 3
    input_name = INPUT_NAMES["image" if image else "vector"]
    graph = _Graph(onnx, model.state_dict(), input_name)
    for layer in model.layers:
        layer.onnx_nodes(graph)
    if graph.nodes and graph.nodes[-1].output[0] == graph.current:
        graph.nodes[-1].output[0] = LOGITS
    else:  # the last layers made no node (e.g. a trailing Dropout)
        graph.nodes.append(helper.make_node("Identity", [graph.current], [LOGITS], name=LOGITS))
    outputs = [
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [BATCH, *model.output_shape])
    ]
    if probabilities:
        graph.nodes.append(
            helper.make_node("Softmax", [LOGITS], [PROBABILITIES], name="softmax", axis=1)
        )
        outputs.append(
            helper.make_tensor_value_info(
                PROBABILITIES, TensorProto.FLOAT, [BATCH, *model.output_shape]
            )
        )
    inputs = [
        helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [BATCH, *model.input_shape])
    ]
    onnx_graph = helper.make_graph(
        graph.nodes,
        "gpucnn_sequential",
        inputs,
        outputs,
        initializer=graph.initializers,
        doc_string="Exported by gpucnn from a Sequential; layout NCHW.",
    )
    proto = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="gpucnn",
        producer_version=__version__,
    )
    helper.set_model_props(proto, {"input_layout": "NCHW" if image else "ND"})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported graph does not pass the ONNX checker: {first}") from None
    return proto


def export_onnx(model, path: str | os.PathLike, probabilities: bool = False) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically: a temporary file, then a rename).

    See :func:`to_onnx_model` for the graph, its parameters and the errors raised.
    """
    proto = to_onnx_model(model, probabilities=probabilities)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a deployable file: the usual permissions, not 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def compare_with_onnxruntime(
    model, path: str | os.PathLike, batch_sizes: tuple[int, ...] = (1, 7), seed: int = 0
) -> float:
    """Largest absolute difference between ONNX Runtime on ``path`` and ``model.forward``.

    Runs both on random float32 inputs in [0, 1) of each batch size; needs ``onnxruntime``.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking an export needs onnxruntime: pip install onnxruntime") from None
    from .backend import to_numpy

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    largest = 0.0
    for n in batch_sizes:
        x = rng.random((n, *model.input_shape), dtype=np.float32)
        ours = to_numpy(model.forward(x, training=False))
        (theirs,) = session.run([LOGITS], {input_name: x})
        largest = max(largest, float(np.max(np.abs(theirs.astype(np.float64) - ours))))
    return largest


__all__ = [
    "ExportError",
    "OPSET",
    "compare_with_onnxruntime",
    "export_onnx",
    "require_onnx",
    "to_onnx_model",
]
