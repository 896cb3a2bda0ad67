"""Sequential: a stack of layers, and the model facade (shape inference, forward/backward,
predict, state, summary) when given an ``input_shape``.

At its boundary a model speaks the public image layout ``(N, C, H, W)``; inside, activations
are channels-last ``(N, H, W, C)`` (why: see :mod:`gpucnn.functional.im2col`). A Sequential
without ``input_shape`` is a plain container layer, to nest inside a model or a block.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .backend import Array, Backend, select_backend, to_device, to_numpy
from .cuda_graph import inference_step
from .functional._cpu_threads import parallel as cpu_parallel
from .functional.losses import softmax, softmax_cross_entropy
from .layers import Layer, layer_from_config
from .layers.base import LAYERS, BuildContext, public_shape
from .layers.containers import Container, child_config
from .parameter import Buffer, Parameter
from .precision import check_backend, compute_dtype
from .precision import policy as precision_policy
from .random import Random
from .validation import (
    ArgumentError,
    check_array,
    check_choice,
    check_instance,
    check_int,
    check_int_tuple,
)

DTYPES = ("float32", "float64")
MODEL_FILE = "model.npz"  # what a run folder holds once trained: the final model
CHECKPOINT_FILE = "checkpoint.npz"  # the resumable state, rewritten every epoch
# Images per block for CPU inference in predict_proba: a block's activations stay in cache,
# measured 6.8k -> 8.1k-9.1k images/s against one pass at batch 1000 on the reference network
# (blocks of 128, before the layers split their images over threads and took their own
# cache-sized blocks). Since then every layer's NumPy calls are paid once per block and
# thread, and larger blocks won. Measured (AMD EPYC, 2 threads, 1000 images, medians of 7-11
# alternating passes, 256 / 512 against 128): `lenet` 1.00-1.13x / 0.96-1.09x, `reference`
# 1.03-1.08x / 1.00-1.02x, `small` 0.95-1.10x / 0.98-1.11x, `resnet` 1.06-1.09x / 1.13-1.14x,
# `strided` 1.13x / 1.18-1.20x, `vgg` 1.05-1.09x / 0.99-1.06x; 256 is nowhere clearly slower.
INFERENCE_BLOCK = 256
GPU_INFERENCE_BATCH = 1024  # a GPU wants large batches; this bounds the activation memory
# step_hook(step_name, "forward" | "backward") returns a context manager wrapped around the
# step's evaluation (used by the benchmark's per-layer profile)
StepHook = Callable[[str, str], contextlib.AbstractContextManager]


@LAYERS.register("Sequential")
class Sequential(Container):
    """A feed-forward stack of layers; with ``input_shape``, a model.

    Parameters
    ----------
    layers : the layers (or their config dicts), in order; each is built for the shape its
        predecessor produces. Containers (``Sequential``, ``Residual``) nest.
    input_shape : per-sample input shape, ``(C, H, W)`` for images or ``(D,)`` for vectors.
        Without it (None) this Sequential is a container layer, built by the model it is
        placed in; the model methods (predict, state_dict, summary...) need a model.
    dtype : ``"float32"`` (default) or ``"float64"``: the parameters' dtype.
    precision : the precision policy (see :mod:`gpucnn.precision` and :meth:`set_precision`):
        None (default) computes in ``dtype``; ``"mixed_bfloat16"`` or ``"mixed_float16"``
        keeps float32 parameters and computes convolutions and dense layers in 16 bits (CuPy
        only).
    backend : ``"auto"``, ``"numpy"``, ``"cupy"``, an array namespace module or a Backend.
    seed : seeds weight initialisation and dropout.
    name : the name of a nested Sequential in its container.

    Examples
    --------
    >>> model = Sequential([Conv2D(8, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(10)],
    ...                    input_shape=(1, 28, 28), backend="numpy")
    >>> logits = model.forward(x)                  # inference: x (N, 1, 28, 28) -> (N, 10)
    >>> logits = model.forward(x, training=True)   # keeps what backward needs
    >>> grad_x = model.backward(grad_logits)
    """

    def __init__(
        self,
        layers: Sequence[Layer | dict[str, Any]],
        input_shape: Sequence[int] | None = None,
        dtype: str = "float32",
        backend: str | ModuleType | Backend | None = "auto",
        seed: int = 0,
        name: str | None = None,
        precision: str | None = None,
    ):
        super().__init__(layers, name)
        self.is_model = input_shape is not None
        if not self.is_model:
            if precision is not None:
                raise ValueError(
                    f"Sequential '{name}': expected precision only for a model (with "
                    f"input_shape); received precision={precision!r} for a nested Sequential"
                )
            return
        owner = "Sequential"
        dtype = check_choice("dtype", _dtype_name(dtype), DTYPES, owner=owner)
        shape = check_int_tuple(
            "input_shape", input_shape, (1, 3), owner=owner,
            describe="(C, H, W) or (D,) of positive ints",
        )  # fmt: skip
        seed = check_int("seed", seed, 0, owner=owner)
        self.backend = select_backend(backend)
        self.xp = self.backend.xp
        self.dtype_name = dtype
        self.dtype = getattr(self.xp, self.dtype_name)
        self.seed = seed
        self.random = Random(self.seed, self.xp)
        context = BuildContext(self.xp, self.dtype, self.random)
        inner = (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape
        self.path = ""  # the root: its children are named from the top (conv2d_1.weight)
        self.output_shape = public_shape(self._build(inner, context))
        self.input_shape = shape  # public shapes at a model's boundary
        self._backward_ready = False  # set by a training forward pass
        self._batch_size = 0  # N of the last forward pass, which backward must match
        self.set_precision(self.dtype_name if precision is None else precision)

    def _require_model(self, what: str) -> None:
        if not self.is_model:
            raise ValueError(
                f"Sequential '{self.name}': {what} needs a model: expected a Sequential built "
                "with input_shape (this one is a container inside another)"
            )

    def set_precision(self, precision: str, *, emulate: bool = False) -> None:
        """Compute under the precision policy ``precision`` from the next forward pass on.

        ``"mixed_bfloat16"`` / ``"mixed_float16"`` (a float32 model on CuPy): each forward pass
        casts the input and the parameters of every autocast layer (all but BatchNorm) to 16
        bits; outputs, gradients, the optimizer and saved weights stay float32 (see
        :mod:`gpucnn.precision`). The model's own dtype name (``"float32"``) computes in it.
        ``emulate=True`` runs ``"mixed_float16"`` on NumPy too (slowly: for tests of a
        mixed-precision set-up on a CPU). The policy is not part of :meth:`get_config` or the
        saved model: a model trained in mixed precision loads as a float32 model anywhere.
        """
        self._require_model("set_precision()")
        try:
            chosen = precision_policy(precision)
            if chosen.parameter_dtype != self.dtype_name:
                raise ValueError(
                    f"expected a precision that keeps parameters in the model's dtype "
                    f"({self.dtype_name}); received {precision!r}, which keeps them in "
                    f"{chosen.parameter_dtype}"
                )
            check_backend(chosen, self.backend, emulate)
            compute = compute_dtype(self.xp, chosen) if chosen.mixed else None
        except ValueError as exc:
            raise ValueError(f"Sequential: {exc}") from None
        self.precision = chosen
        self._compute_dtype = compute
        self._autocast = [
            p
            for layer in self.modules()
            if layer.autocast and compute is not None
            for p in layer._parameters.values()
        ]
        for p in self.parameters():
            p.cast = None
        self._inference = None  # a recorded inference pass computes in the old dtype

    def _cast_for_compute(self, x: Array) -> Array:
        """Under a mixed policy: the autocast parameters' compute copies made anew (they follow
        every update) and ``x`` cast; otherwise ``x`` as it is."""
        if self._compute_dtype is None:
            return x
        xp = self.xp
        for p in self._autocast:
            p.cast = xp.astype(p.data, self._compute_dtype)
        return xp.astype(x, self._compute_dtype)

    # ------------------------------------------------------------------ forward / backward
    def forward(
        self, x: Any, training: bool = False, check: bool = True, step_hook: StepHook | None = None
    ) -> Array:
        """Run the network on one batch.

        Parameters
        ----------
        x : array of shape ``(N, *input_shape)``, NumPy or of the model's namespace; floating
            point (it is cast to the model's dtype).
        training : False (default): inference, which never changes the model. True: keep what
            ``backward`` needs, draw dropout masks and update buffers (running statistics).
        check : also reject NaN/inf inputs; this reads one flag back from the device, so the
            trainer validates its data once and passes False.
        step_hook : optional ``hook(step_name, "forward")`` returning a context manager
            entered around each step (for profiling).

        Returns
        -------
        out : array of shape ``(N, *output_shape)`` in the model's namespace (logits for a
            classifier); a model whose output is an image returns it as (N, C, H, W).
        """
        if not self.is_model:  # a container inside another model: internal arrays
            return super().forward(x, training)
        x = self._cast_for_compute(self._prepare_input(x, check))
        self._backward_ready = training
        self._batch_size = x.shape[0]
        with self._threads():
            for step in self.steps:
                if step_hook is None:
                    x = step.forward(x, training)
                else:
                    with step_hook(step.name, "forward"):
                        x = step.forward(x, training)
        if x.dtype != self.dtype:  # mixed precision: the model's dtype at its boundary
            x = self.xp.astype(x, self.dtype)
        return self._to_public(x)

    def _threads(self) -> contextlib.AbstractContextManager:
        """On NumPy, the ops split their images over the CPU cores (see
        :mod:`gpucnn.functional._cpu_threads`)."""
        return cpu_parallel() if self.backend.name == "numpy" else contextlib.nullcontext()

    def _to_public(self, out: Array) -> Array:
        """An internal (N, OH, OW, F) image output as (N, F, OH, OW); flat outputs unchanged."""
        return self.xp.permute_dims(out, (0, 3, 1, 2)) if out.ndim == 4 else out

    def backward(
        self,
        grad_out: Array,
        need_input_grad: bool = True,
        step_hook: StepHook | None = None,
    ) -> Array | None:
        """Back-propagate ``grad_out`` ``(N, *output_shape)`` through every layer.

        Sets each parameter's ``grad`` and returns the gradient with respect to the input, of
        shape ``(N, *input_shape)``, or None when ``need_input_grad`` is False (which spares the
        first layer's input-gradient GEMM, as training does). Both are in the public layout:
        (N, C, H, W) for images. ``step_hook`` as in :meth:`forward`, called with
        ``"backward"``.

        Raises
        ------
        ValueError : ``grad_out`` is not of shape ``(N, *output_shape)`` for the N of the last
            forward pass; the message names the output layer.
        """
        if not self.is_model:
            return super().backward(grad_out, need_input_grad)
        if not self._backward_ready:
            raise RuntimeError("backward() needs a preceding forward(x, training=True)")
        expected = (self._batch_size, *self.output_shape)
        received = tuple(grad_out.shape) if hasattr(grad_out, "shape") else None
        if received != expected:
            raise self.layers[-1].error(
                f"expected a gradient of the model output's shape {expected} (public layout, "
                f"N of the last forward pass); received "
                f"{received if received is not None else type(grad_out).__name__}"
            )
        xp = self.xp
        g = xp.permute_dims(grad_out, (0, 2, 3, 1)) if grad_out.ndim == 4 else grad_out
        if self._compute_dtype is not None:
            g = xp.astype(g, self._compute_dtype)
        with self._threads():
            for index in range(len(self.steps) - 1, -1, -1):
                step, need = self.steps[index], index > 0 or need_input_grad
                if step_hook is None:
                    g = step.backward(g, need_input_grad=need)
                else:
                    with step_hook(step.name, "backward"):
                        g = step.backward(g, need_input_grad=need)
        if self._compute_dtype is not None:  # the optimizer and the caller see the model's dtype
            for p in self._autocast:
                if p.grad is not None and p.grad.dtype != self.dtype:
                    p.grad = xp.astype(p.grad, self.dtype)
            if g is not None:
                g = xp.astype(g, self.dtype)
        if g is None or len(self.input_shape) != 3:
            return g
        return xp.permute_dims(g, (0, 3, 1, 2))

    def loss_and_backward(
        self,
        x: Any,
        labels: Any,
        check: bool = True,
        step_hook: StepHook | None = None,
        label_smoothing: float = 0.0,
        loss_scale: float = 1.0,
    ) -> tuple[Array, Array]:
        """One training pass: forward, softmax cross-entropy (with ``label_smoothing``, see
        :func:`~gpucnn.functional.softmax_cross_entropy`), backward (input grad skipped).
        The loss and its gradient are computed in the model's dtype; ``loss_scale`` multiplies
        the gradient sent back (float16 loss scaling: the parameters' gradients come out
        scaled by it).

        Returns the 0-d loss and the (N, K) logits, both still on the device.
        """
        logits = self.forward(x, training=True, check=check, step_hook=step_hook)
        labels = to_device(labels, self.xp)
        loss, grad = softmax_cross_entropy(logits, labels, check, label_smoothing)
        if loss_scale != 1.0:
            grad = grad * loss_scale
        self.backward(grad, need_input_grad=False, step_hook=step_hook)
        return loss, logits

    def _prepare_input(self, x: Any, check: bool) -> Array:
        """``x`` validated, on the device, of the model's dtype, images channels-last."""
        x = self._input_on_device(x, check)
        if len(self.input_shape) == 3:
            x = self.xp.permute_dims(x, (0, 2, 3, 1))
        return x

    def _input_on_device(self, x: Any, check: bool) -> Array:
        """``x`` validated, on the device, of the model's dtype, in the public layout."""
        xp = self.xp
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"expected an array input; received {type(x).__name__}")
        expected = ("N", *self.input_shape)
        if x.ndim != len(expected) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input of shape {expected}; received {tuple(x.shape)}")
        x = to_device(x, xp)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(
                f"expected floating-point input (e.g. images scaled to [0, 1]); received dtype {x.dtype}"
            )
        if x.dtype != self.dtype:
            x = xp.astype(x, self.dtype)
        if check and not bool(xp.all(xp.isfinite(x))):
            raise ValueError("expected finite input values; received NaN or inf")
        return x

    # ------------------------------------------------------------------ inference
    @property
    def inference_batch_size(self) -> int:
        """Images per inference pass that run fastest here: small cache-sized blocks on a CPU,
        larger batches on a GPU."""
        return GPU_INFERENCE_BATCH if self.backend.is_gpu else INFERENCE_BLOCK

    def predict_proba(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, computed in batches: ``(N, *input_shape)`` -> NumPy (N, K).

        ``x`` may also be nested lists of numbers. ``batch_size`` defaults to
        :attr:`inference_batch_size`.
        """
        self._require_model("predict_proba()")
        x, batch_size = self._inference_args(x, batch_size, "Sequential.predict_proba")
        forward = self.inference_function()
        chunks = [
            to_numpy(softmax(forward(self._input_on_device(batch, check=True))))
            for batch in _batches(x, batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, *self.output_shape), np.float32)

    def inference_function(self) -> Callable[[Any], Array]:
        """``f(x) -> out``: the inference pass ``forward(x, training=False, check=False)``.

        ``x`` is ``(N, *input_shape)``, on the host or the device; ``out`` is a new array on the
        device. On a GPU each batch shape's pass is replayed as a CUDA graph (see
        :class:`gpucnn.cuda_graph.GraphedForward`), which saves the launch time of every
        kernel; on a CPU a large batch goes through in blocks of
        :attr:`inference_batch_size` images, whose activations stay in cache (the results are
        those of one pass, up to the rounding of GEMMs over fewer rows).
        """
        if getattr(self, "_inference", None) is None:
            self._inference = inference_step(self)
        step, xp = self._inference, self.xp
        if self.backend.is_gpu:
            return lambda x: step(self._input_on_device(x, check=False))
        block = self.inference_batch_size

        def blocked(x: Any) -> Array:
            x = self._input_on_device(x, check=False)
            if x.shape[0] <= block:
                return step(x)
            return xp.concat([step(x[i : i + block]) for i in range(0, x.shape[0], block)])

        return blocked

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """Predicted class indices: ``(N, *input_shape)`` -> NumPy (N,) int64."""
        self._require_model("predict()")
        x, batch_size = self._inference_args(x, batch_size, "Sequential.predict")
        return np.argmax(self.predict_proba(x, batch_size), axis=1)

    def _inference_args(self, x: Any, batch_size: Any, owner: str) -> tuple[Any, int]:
        """``x`` as an array (lists converted) and ``batch_size`` as an int >= 1 (None: the
        default), refused with a message naming ``owner`` otherwise."""
        x = check_array("x", x, owner=owner, describe="an array of images")
        if len(x.shape) == 0:
            raise ArgumentError(
                f"{owner}: expected x of shape {('N', *self.input_shape)}; received a 0-d array"
            )
        if batch_size is None:
            return x, self.inference_batch_size
        return x, check_int("batch_size", batch_size, 1, owner=owner)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """The model state: every parameter and buffer of the tree as a host NumPy copy, keyed
        by its qualified name (``conv2d_1.weight``, ``residual_1.batchnorm2d_1.running_mean``).

        Everything that saves, copies or compares a model (checkpoints, early stopping, the
        scikit-learn estimator, ONNX export) goes through this one state."""
        self._require_model("state_dict()")
        return {a.name: to_numpy(a.data).copy() for a in self._state_arrays()}

    def _state_arrays(self) -> list[Parameter | Buffer]:
        return [*self.parameters(), *self.buffers()]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a :meth:`state_dict` in; names and shapes must match this architecture exactly.

        Parameters get new arrays (in the model's dtype); buffers are overwritten in place, so
        their arrays keep their addresses."""
        self._require_model("load_state_dict()")
        arrays = {a.name: a for a in self._state_arrays()}
        missing = sorted(set(arrays) - set(state))
        extra = sorted(set(state) - set(arrays))
        if missing or extra:
            raise ValueError(
                f"model state does not match the architecture: missing {missing}, unexpected {extra}"
            )
        for name, target in arrays.items():
            value = state[name]
            if tuple(value.shape) != target.shape:
                raise ValueError(
                    f"{name}: expected shape {target.shape}; received {tuple(value.shape)}"
                )
        for name, target in arrays.items():  # nothing changes unless everything fits
            value = to_device(np.asarray(to_numpy(state[name])), self.xp, target.data.dtype)
            if isinstance(target, Buffer):
                target.data[...] = value
            else:
                target.data = value

    # ------------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-compatible data (see :meth:`from_config`): for a model
        ``{"input_shape", "dtype", "layers"}``, for a nested Sequential its layer config."""
        if not self.is_model:
            return super().get_config()
        return {
            "input_shape": list(self.input_shape),
            "dtype": self.dtype_name,
            "layers": [child_config(layer) for layer in self.layers],
        }

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        backend: str | ModuleType | Backend | None = "auto",
        seed: int = 0,
        dtype: str | None = None,
    ) -> Sequential:
        """Rebuild a model from :meth:`get_config` output (weights freshly initialised)."""
        if not isinstance(config, dict) or "layers" not in config or "input_shape" not in config:
            raise ValueError("expected an architecture with 'input_shape' and 'layers' keys")
        layers = [layer_from_config(spec) for spec in config["layers"]]
        return cls(
            layers,
            input_shape=tuple(config["input_shape"]),
            dtype=dtype or config.get("dtype", "float32"),
            backend=backend,
            seed=seed,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (architecture, parameters and buffers) to ``path`` as a ``.npz``.

        The file is a checkpoint without optimizer state, the format of a run's ``model.npz``:
        :func:`load_model`, ``gpucnn evaluate``, ``predict`` and ``export`` read it. Written to
        a temporary file and renamed, so a failed write leaves an earlier file intact.

        Parameters
        ----------
        path : the file; an existing folder (e.g. a run folder) gets ``path/model.npz``.

        Returns
        -------
        The path written.

        Raises
        ------
        gpucnn.checkpoint.CheckpointError (a ``ValueError``) when the file cannot be written.
        """
        from .checkpoint import save_checkpoint  # checkpoint imports this module

        self._require_model("save()")
        check_instance(
            "path", path, (str, os.PathLike), owner="Sequential.save",
            describe="a str or os.PathLike",
        )  # fmt: skip
        target = Path(path)
        if target.is_dir():
            target = target / MODEL_FILE
        return save_checkpoint(target, self)

    def to_onnx(self, path: str | os.PathLike, probabilities: bool = False) -> Path:
        """Write this model as an ONNX file (opset 17) for ONNX Runtime and other consumers.

        Input ``images`` (N, C, H, W) float32, output ``logits`` (and ``probabilities`` if
        asked). Needs the ``onnx`` package (``pip install "gpucnn[onnx]"``); see
        :mod:`gpucnn.export` for the graph. Raises ``ExportError`` (a ``ValueError``) for a
        layer that has no ONNX counterpart.
        """
        self._require_model("to_onnx()")
        from .export import export_onnx

        return export_onnx(self, path, probabilities=probabilities)

    def summary(self, print_fn=print) -> str:
        """Print (and return) a table of each layer's output shape and parameter count; the
        layers of a block are indented under it (a block's count includes them)."""
        self._require_model("summary()")
        rows = [("Layer (type)", "Output shape", "Params")]
        rows.append(("input", str(("N", *self.input_shape)).replace("'", ""), "0"))
        for layer in list(self.modules())[1:]:
            shape = str(("N", *public_shape(layer.output_shape))).replace("'", "")
            indent = "  " * layer.path.count(".")
            label = f"{indent}{layer.name} ({type(layer).__name__})"
            rows.append((label, shape, f"{layer.num_params:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        rule = "-" * (sum(widths) + 4)
        lines = [rule]
        for k, (a, b, c) in enumerate(rows):
            lines.append(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}")
            if k == 0:
                lines.append(rule)
        lines += [
            rule,
            f"Total params: {self.num_params:,}  (backend: {self.backend.name}, dtype: "
            f"{self.dtype_name}{'' if not self.precision.mixed else ', precision: ' + self.precision.name})",
        ]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text


def model_file(path: str | os.PathLike) -> Path:
    """The saved-model file ``path`` names: itself, or ``path/model.npz`` for a run folder.

    Raises
    ------
    gpucnn.checkpoint.CheckpointError when ``path`` is a folder without ``model.npz`` (the
    message says whether the run is unfinished).
    """
    from .checkpoint import CheckpointError

    path = Path(path)
    if not path.is_dir():  # a file, or a missing path that loading reports as not found
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    unfinished = (
        f"; it holds {CHECKPOINT_FILE} (the run has not finished): load "
        f"{path / CHECKPOINT_FILE} for its latest epoch"
        if (path / CHECKPOINT_FILE).is_file()
        else ""
    )
    raise CheckpointError(
        f"{path}: expected a run folder with {MODEL_FILE}; found none{unfinished}"
    )


def load_model(
    path: str | os.PathLike, backend: str | ModuleType | Backend | None = "auto"
) -> Sequential:
    """Load a model saved by :meth:`Sequential.save` or by ``gpucnn train``.

    Parameters
    ----------
    path : a ``.npz`` model (or checkpoint) file, or a run folder (its ``model.npz`` is read).
    backend : where the model runs: ``"auto"``, ``"numpy"``, ``"cupy"``...

    Returns
    -------
    The model in inference mode, with its saved architecture, parameters and buffers.

    Raises
    ------
    gpucnn.checkpoint.CheckpointError (a ``ValueError``) for a missing, corrupt or foreign file.

    Examples
    --------
    >>> model = gpucnn.load_model("runs/digits-small-20250101-120000")   # a run folder
    >>> labels = model.predict(x)                                         # x (N, C, H, W)
    """
    from .checkpoint import load_model as load_model_and_checkpoint

    check_instance(
        "path", path, (str, os.PathLike), owner="load_model", describe="a str or os.PathLike"
    )
    model, _ = load_model_and_checkpoint(model_file(path), backend=backend)
    return model


def _dtype_name(dtype: Any) -> Any:
    """``"float32"`` for ``np.float32`` or ``np.dtype("float32")``; other values unchanged,
    for the dtype check to report."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return dtype


def _batches(x: Any, batch_size: int) -> Iterator[Any]:
    batch_size = check_int("batch_size", batch_size, 1)
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


__all__ = ["Sequential", "load_model", "model_file"]
