"""A scikit-learn classifier: gpucnn networks in Pipeline, GridSearchCV and cross_val_score.

:class:`CNNClassifier` follows scikit-learn's estimator conventions: ``__init__`` only stores
its arguments, everything learnt ends in ``_``, and ``get_params``/``set_params``/``clone``
work, so the estimator can be tuned, cross-validated and put after transformers.

What ``X`` may be
-----------------
* ``(N, C, H, W)`` images;
* ``(N, H, W)`` images with one channel;
* ``(N, D)`` rows, reshaped to ``image_shape=(C, H, W)`` when that is given (``D == C*H*W``);
* ``(N, D)`` rows under ``image_shape="auto"`` (the default): square images when ``D`` says
  so -- ``D = S*S`` with ``S >= 8`` is one channel of ``S x S`` (digits' 64 columns, MNIST's
  784), ``D = 3*S*S`` three channels stored channel by channel (CIFAR's 3072) -- and a
  feature matrix otherwise;
* ``(N, D)`` rows read as a feature matrix (``image_shape=None``, or ``"auto"`` with another
  ``D``): it trains a dense network (``model="auto"``: ``Dense(100), ReLU, Dense(K)``, as
  :class:`~sklearn.neural_network.MLPClassifier`'s default) or the list of Dense-style layers
  given as ``model``.

``n_features_in_`` is the number of values per sample (``C*H*W`` for images), so a model fitted
on images also predicts flat rows of that length. Labels may be any type scikit-learn accepts
(ints, strings, ...); ``classes_`` keeps them sorted and ``predict_proba``'s columns follow it.

What is not supported: ``sample_weight`` (``fit`` has no such parameter, which is how
scikit-learn's meta-estimators learn it), sparse input, NaN/inf values and multi-label ``y``.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y, validate_data

from .architectures import BUILTIN, architecture
from .augment import Augment
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from .layers import BatchNorm1D
from .model import DTYPES, Sequential
from .optim import SGD, Adam, ConstantLR, Optimizer, make_optimizer, make_schedule
from .recipes import SCHEDULE_NAMES, schedule_config
from .safe_read import read_json
from .trainer import HISTORY_KEYS, EarlyStopping, Trainer
from .validation import check_bool, check_choice, check_float, check_int, fail, is_int

FLOAT_DTYPES = (np.float32, np.float64)
OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.1, "adam": 0.001}  # fit: the schedule's peak (cosine by default)
# partial_fit trains at a constant rate: lower (and without random shifts under "auto"). Five
# passes of partial_fit over digits 0-1199 in chunks of 400, scored on the rest (seeds 0-2):
# 0.946 / 0.956 / 0.967 with these, 0.879 / 0.874 / 0.906 with fit's lr 0.1 and 1-pixel shifts
INCREMENTAL_LR = {"sgd": 0.05, "adam": 0.001}
# The dense network model="auto" trains on a plain feature matrix; the output layer is added.
TABULAR_LAYERS = ({"type": "Dense", "units": 100}, {"type": "ReLU"})
# epochs="auto": AUTO_EPOCHS, or enough for AUTO_MIN_STEPS gradient steps, up to AUTO_MAX_EPOCHS.
# cross_val_score on digits (1437 training images per fold, batch 32): 34 epochs (this rule) with
# the other defaults 0.975-0.982 over seeds 0-4; 10 epochs, lr 0.05, no weight decay or shift
# 0.959 (docs/guide/interop.md)
AUTO_EPOCHS, AUTO_MIN_STEPS, AUTO_MAX_EPOCHS = 10, 1500, 100
AUTO_SHIFT = 1  # augment_shift="auto" on images: pixels each way
# image_shape="auto" reads S*S (or 3*S*S) columns as S x S images from this side on (digits: 8)
MIN_AUTO_IMAGE_SIDE = 8
NO_Y = object()  # _validate's "only X" marker: y=None is a user error that fit reports
SAVE_KEY = "sklearn"  # where save() keeps the estimator's own data in the checkpoint's meta


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A gpucnn network as a scikit-learn classifier (softmax cross-entropy, mini-batch training).

    Parameters
    ----------
    model : ``"auto"`` (default), a built-in name (``"small_bn"``, ``"small"``, ``"lenet"``, ...),
        the path of a JSON architecture file, or a list of layer configs as the command line's
        JSON takes, e.g. ``[{"type": "Conv2D", "filters": 8, "kernel_size": 3}, {"type": "ReLU"}]``.
        ``"auto"`` is ``"small_bn"`` (the small network with BatchNorm) for images and
        ``Dense(100), ReLU`` for a feature matrix. A list that ends with a Dense layer is used
        as is (its ``units`` must equal the number of classes); otherwise ``Flatten`` (for
        images, if the list has none) and ``Dense(K)`` are appended.
    image_shape : ``(C, H, W)`` (or ``(H, W)`` for one channel) to reshape 2-D ``X`` of
        ``C*H*W`` columns into images; also checked against 3-D/4-D ``X``. ``"auto"``
        (default): 2-D ``X`` of ``S*S`` or ``3*S*S`` columns (``S >= 8``) is read as square
        images, other 2-D ``X`` as a feature matrix (``input_shape_`` says which); a ``model``
        list of Dense-style layers always takes rows. Tabular data with such a column count
        (64, 100, ... features) needs ``image_shape=None``: 2-D ``X`` is then always a feature
        matrix.
    epochs : passes over the training data (fewer when early stopping ends training).
        ``"auto"`` (default): 10, or more on a small training set so that training takes at
        least 1500 gradient steps (at most 100 epochs): 34 for 1437 images at batch 32.
    batch_size : samples per gradient step.
    optimizer : ``"sgd"`` (with ``momentum``) or ``"adam"``.
    lr : learning rate; None gives 0.1 for SGD (0.05 in ``partial_fit``, which trains at a
        constant rate) and 0.001 for Adam.
    momentum : SGD momentum in [0, 1); unused by Adam.
    weight_decay : L2 penalty on weights (not biases and BatchNorm's scales); decoupled for
        Adam. Default 1e-3.
    schedule : learning-rate schedule over ``epochs``: ``"cosine"`` (default), ``"step"``
        (x0.1 every third of the run), ``"exponential"`` (x0.8 per epoch) or ``"constant"``.
    validation_fraction : part of the training data held out (stratified where possible) to
        decide early stopping; used only when ``early_stopping`` is True.
    early_stopping : stop when the validation loss has not improved for ``patience`` epochs
        and keep the best epoch's weights.
    patience : epochs without improvement before stopping.
    augment_shift : P >= 0: in training, shift each image by a random offset of up to P
        pixels each way (zero-filled), a new one every epoch; 0 turns it off. Images only.
        ``"auto"`` (default): 1 for images in ``fit``, else 0.
    backend : ``"auto"``, ``"numpy"`` or ``"cupy"``; everything returned is NumPy either way.
    dtype : ``"float32"`` or ``"float64"``.
    random_state : int, RandomState or None; seeds weights, shuffling and the validation split.
    verbose : 0 silent, 1 one line per epoch, 2 also a progress bar (``True`` counts as 1).

    Attributes
    ----------
    model_ : the trained :class:`~gpucnn.Sequential`.
    classes_ : array of shape (K,), the sorted labels seen in ``fit``.
    n_features_in_ : values per sample (``C*H*W`` for images, ``D`` for a feature matrix).
    feature_names_in_ : column names, when ``X`` was a DataFrame with string column names.
    input_shape_ : per-sample shape the network takes, ``(C, H, W)`` or ``(D,)``.
    history_ : per-epoch lists ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ...
    n_iter_ : epochs trained.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = CNNClassifier(image_shape=(1, 8, 8), epochs=5, random_state=0).fit(X / 16, y)
    >>> clf.predict_proba(X[:3] / 16).shape
    (3, 10)
    """

    def __init__(
        self,
        model: str | list[dict[str, Any]] = "auto",
        image_shape: tuple[int, ...] | str | None = "auto",
        epochs: int | str = "auto",
        batch_size: int = 32,
        optimizer: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        schedule: str = "cosine",
        validation_fraction: float = 0.1,
        early_stopping: bool = False,
        patience: int = 3,
        augment_shift: int | str = "auto",
        backend: str = "auto",
        dtype: str = "float32",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ):
        self.model = model
        self.image_shape = image_shape
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.augment_shift = augment_shift
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ training
    def fit(self, X: Any, y: Any) -> CNNClassifier:
        """Train a fresh network on ``(X, y)``.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, D) (see the module docstring).
        y : array of shape (N,), labels of any type.

        Returns
        -------
        self
        """
        self._check_params()
        self._forget()
        images, y = self._validate(X, y, reset=True)
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        self._start(images.shape[1:])
        validation, callbacks = None, []
        if self.early_stopping:
            images, targets, validation = self._hold_out(images, targets)
            callbacks = [EarlyStopping("val_loss", patience=self.patience)]
        self._check_batch_size_one(len(images), forget=True)
        epochs = self._epochs(len(images))
        history = self._train(
            images, targets, epochs, self._make_schedule(epochs), callbacks, validation, call=0
        )
        self.history_ = {key: list(values) for key, values in history.items()}
        self.n_iter_ = len(self.history_["loss"])
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> CNNClassifier:
        """Train one more epoch on ``(X, y)``, continuing from the current weights.

        The first call (on an unfitted estimator) needs ``classes``, every label ``y`` may ever
        hold. Later calls keep the weights and the optimizer state (momentum, Adam moments);
        the learning rate stays ``lr`` (None: 0.05 with SGD; schedules and early stopping
        belong to :meth:`fit`), and ``augment_shift="auto"`` shifts nothing.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, D), with the per-sample shape of
            the first call.
        y : array of shape (N,), labels within ``classes``.
        classes : array of shape (K,), required on the first call; if given later it must
            equal ``classes_``.

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_")
        if first:
            self._check_params()
            if classes is None:
                raise ValueError(
                    "partial_fit: expected classes= (every label y may hold) on the first call; "
                    "received None"
                )
        images, y = self._validate(X, y, reset=first)
        check_classification_targets(y)
        if classes is not None:
            classes = np.unique(np.asarray(classes))
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(
                    f"partial_fit: expected classes={self.classes_.tolist()} as in the first call; "
                    f"received {classes.tolist()}"
                )
        if first:
            self.classes_ = classes
            self._start(images.shape[1:], incremental=True)
            self.history_ = {key: [] for key in HISTORY_KEYS}
            self.n_iter_ = 0
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(
                f"partial_fit: expected labels in classes_={self.classes_.tolist()}; "
                f"received {unknown.tolist()}"
            )
        targets = np.searchsorted(self.classes_, y)
        self._check_batch_size_one(len(images), forget=first)
        if self.lr is None:  # after fit too: partial_fit's own default rate
            rate = INCREMENTAL_LR[self.optimizer]
            self._optimizer.lr = self._optimizer.base_lr = rate
        history = self._train(
            images, targets, 1, ConstantLR(), [], None, call=self.n_iter_, incremental=True
        )
        for key in HISTORY_KEYS:
            self.history_[key].extend(history[key])
        self.n_iter_ += 1
        return self

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: X -> float64 array of shape (N, K), columns in ``classes_`` order."""
        check_is_fitted(self)
        images = self._validate(X, reset=False)
        proba = self.model_.predict_proba(images).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # rows sum to 1 in float64 too

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels: X -> array of shape (N,) holding values of ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted estimator to ``path`` as a gpucnn ``.npz`` checkpoint (never pickle).

        The file holds the network (architecture and weights), the optimizer state and this
        estimator's parameters and fitted attributes; :meth:`load` reads it back. Labels must
        be JSON values (numbers, strings, booleans); a ``RandomState`` instance is saved as None.
        """
        check_is_fitted(self)
        params = self.get_params(deep=False)
        if not isinstance(params["random_state"], (numbers.Integral, type(None))):
            params["random_state"] = None
        params = {k: _json_value(v) for k, v in params.items()}
        fitted = {
            "params": params,
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str,
            "n_features_in": int(self.n_features_in_),
            "input_shape": list(self.input_shape_),
            "history": self.history_,
            "n_iter": int(self.n_iter_),
            "seed": self._seed,
        }
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in"] = self.feature_names_in_.tolist()
        try:
            json.dumps(fitted)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"save: expected labels and parameters that JSON can store; received {exc}"
            ) from None
        return save_checkpoint(path, self.model_, self._optimizer, **{SAVE_KEY: fitted})

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> CNNClassifier:
        """Read an estimator written by :meth:`save`; ``backend`` overrides the saved one."""
        checkpoint = load_checkpoint(path)
        fitted = checkpoint.meta.get(SAVE_KEY)
        if not isinstance(fitted, dict):
            raise CheckpointError(
                f"{path}: expected a file written by CNNClassifier.save; received a checkpoint "
                "without estimator data (use gpucnn.checkpoint.load_model for it)"
            )
        try:
            params = dict(fitted["params"])
            if isinstance(params.get("image_shape"), list):
                params["image_shape"] = tuple(params["image_shape"])
            if backend is not None:
                params["backend"] = backend
            estimator = cls(**params)
            estimator.classes_ = np.asarray(
                fitted["classes"], dtype=np.dtype(fitted["classes_dtype"])
            )
            estimator.n_features_in_ = fitted["n_features_in"]
            if "feature_names_in" in fitted:
                estimator.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
            estimator.input_shape_ = tuple(fitted["input_shape"])
            estimator.history_ = {k: list(v) for k, v in fitted["history"].items()}
            estimator.n_iter_ = fitted["n_iter"]
            estimator._seed = fitted["seed"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # a file edited by hand or written by another version: say so, not KeyError
            raise CheckpointError(
                f"{path}: expected the estimator data CNNClassifier.save writes; received "
                f"incomplete or malformed data ({type(exc).__name__}: {exc})"
            ) from None
        estimator._restore(checkpoint)
        return estimator

    def __getstate__(self) -> dict[str, Any]:
        # The network holds array-namespace modules, which pickle cannot store: a pickled
        # estimator carries its network and optimizer state as .npz checkpoint bytes instead,
        # the format save() writes, restored by the same code as load().
        state = dict(super().__getstate__())
        if "model_" in state:
            del state["model_"], state["_optimizer"]
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.npz"
                save_checkpoint(path, self.model_, self._optimizer)
                state["_npz"] = path.read_bytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        npz = state.pop("_npz", None)
        super().__setstate__(state)
        if npz is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.npz"
                path.write_bytes(npz)
                self._restore(load_checkpoint(path))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # (N, H, W) images
        return tags

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        """Reject bad hyper-parameters with "expected ...; received ..." before any work."""

        # scikit-learn's convention: check in fit, never rewrite the parameters (clone needs them)
        owner = type(self).__name__
        for name in ("batch_size", "patience"):
            check_int(name, getattr(self, name), 1, owner=owner)
        _check_int_or_auto("epochs", self.epochs, 1, owner)
        check_choice("dtype", self.dtype, DTYPES, owner=owner)
        check_choice("optimizer", self.optimizer, OPTIMIZERS, owner=owner)
        check_choice("schedule", self.schedule, SCHEDULE_NAMES, owner=owner)
        check_float(
            "validation_fraction", self.validation_fraction, 0, 1, low_open=True, high_open=True,
            owner=owner,
        )  # fmt: skip
        if self.lr is not None:
            check_float("lr", self.lr, 0, low_open=True, owner=owner, describe="a learning rate lr")
        check_float("momentum", self.momentum, 0, 1, high_open=True, owner=owner)
        check_float("weight_decay", self.weight_decay, 0, owner=owner)
        check_bool("early_stopping", self.early_stopping, owner=owner)
        if not isinstance(self.verbose, bool):  # verbose=True is scikit-learn usage
            check_int("verbose", self.verbose, 0, owner=owner)
        _check_int_or_auto("augment_shift", self.augment_shift, 0, owner)
        if not _is_auto(self.image_shape) and self.image_shape is not None:
            if _image_shape(self.image_shape) is None:
                expected = "(C, H, W) or (H, W) of positive ints, 'auto' or None"
                raise fail("image_shape", expected, self.image_shape, owner, show_type=False)

    def _check_batch_size_one(self, samples: int, forget: bool) -> None:
        """Refuse to train a network with BatchNorm1D on one sample (its batch variance is
        undefined) in one line naming the estimator; ``forget`` drops the network just built.
        BatchNorm2D takes the N*H*W values of each channel, so images train even one by one."""
        if samples >= 2 or not any(isinstance(m, BatchNorm1D) for m in self.model_.modules()):
            return
        if forget:
            self._forget()
        raise ValueError(
            f"{type(self).__name__}: expected at least 2 training samples for a network with "
            f"BatchNorm1D (the variance of one value is undefined); received {samples} (a "
            "model without BatchNorm1D trains on one; for flat rows image_shape=None gives the "
            "dense network)"
        )

    def _forget(self) -> None:
        """Drop what an earlier fit learnt, so a failing fit leaves no stale network behind."""
        for name in ("model_", "_optimizer", "classes_", "history_", "n_iter_", "input_shape_"):
            self.__dict__.pop(name, None)

    def _validate(self, X: Any, y: Any = NO_Y, reset: bool = False):
        """Check X (and y) and return X as the network's input ``(N, *input_shape_)``.

        2-D input goes through scikit-learn's ``validate_data`` (feature names, ``n_features_in_``
        and its messages); 3-D and 4-D images through ``check_array(allow_nd=True)``.
        """
        ndim = getattr(X, "ndim", None)
        if ndim is None:  # a list or another array-like without ndim
            try:
                ndim = np.asarray(X).ndim
            except ValueError:  # ragged: let validate_data say what is wrong
                ndim = 2
        if ndim in (1, 2):  # 1-D is refused by validate_data with its usual message
            if y is NO_Y:
                X = validate_data(self, X, reset=reset, dtype=FLOAT_DTYPES)
            else:
                X, y = validate_data(self, X, y, reset=reset, dtype=FLOAT_DTYPES)
        elif ndim in (3, 4):
            if y is NO_Y:
                X = check_array(X, allow_nd=True, dtype=FLOAT_DTYPES)
            else:
                X, y = check_X_y(X, y, allow_nd=True, dtype=FLOAT_DTYPES)
            if ndim == 3:
                X = X[:, None]
            if reset:
                self.n_features_in_ = math.prod(X.shape[1:])
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif tuple(X.shape[1:]) != self.input_shape_:
                raise ValueError(
                    f"X has per-sample shape {tuple(X.shape[1:])}, but {type(self).__name__} is "
                    f"expecting {self.input_shape_} as input"
                )
        else:
            raise ValueError(
                f"expected X of shape (N, C, H, W), (N, H, W) or (N, D); received {ndim}-D input "
                f"of shape {np.shape(X)}"
            )
        X = X.astype(self.dtype, copy=False)
        if X.ndim == 2:
            if not reset:
                target = self.input_shape_
            elif _is_auto(self.image_shape):
                target = _square_image_shape(X.shape[1]) if self._convolutional() else None
            else:
                target = _image_shape(self.image_shape)
            if target is not None and len(target) == 3:
                if X.shape[1] != math.prod(target):
                    raise ValueError(
                        f"image_shape={tuple(target)} needs {math.prod(target)} columns "
                        f"(C*H*W); received X with {X.shape[1]}"
                    )
                X = X.reshape(X.shape[0], *target)
        elif reset and self.image_shape is not None and not _is_auto(self.image_shape):
            expected = _image_shape(self.image_shape)
            if tuple(X.shape[1:]) != expected:
                raise ValueError(
                    f"expected images of shape (N, {', '.join(map(str, expected))}) as "
                    f"image_shape says; received X of shape {tuple(X.shape)}"
                )
        if reset:
            self.input_shape_ = tuple(X.shape[1:])
        return X if y is NO_Y else (X, y)

    def _convolutional(self) -> bool:
        """Whether ``model`` takes images: "auto", a built-in name, or layers (a list or a
        JSON file) with a 2-D layer or Flatten. A list of Dense-style layers takes rows even
        under ``image_shape="auto"``; a file that cannot be read counts as convolutional here
        (building it reports the problem)."""
        spec = self.model
        if isinstance(spec, str) and (spec == "auto" or spec in BUILTIN):
            return True
        if isinstance(spec, (str, os.PathLike)):
            try:
                spec = read_json(spec, "architecture file", error=ValueError)
            except ValueError:
                return True
            if isinstance(spec, dict):
                spec = spec.get("layers")
        return not isinstance(spec, (list, tuple)) or _has_spatial_layer(spec)

    def _architecture(self, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
        """The network for this data as ``{"input_shape", "layers"}`` (see ``model``)."""
        spec, tabular = self.model, len(input_shape) == 1
        if isinstance(spec, str):
            if spec == "auto":
                spec = list(TABULAR_LAYERS) if tabular else "small_bn"
            elif spec in BUILTIN and tabular:
                raise ValueError(
                    f"model={spec!r} is a convolutional network and needs images: pass X of "
                    "shape (N, C, H, W) or (N, H, W), or 2-D X with image_shape=(C, H, W); for a "
                    "plain feature matrix use model='auto' or a list of Dense layers"
                )
        if isinstance(spec, str):
            config = architecture(spec, input_shape, num_classes)
            if spec in BUILTIN:
                return config
            layers = config["layers"]
        elif isinstance(spec, (list, tuple)) and all(isinstance(c, dict) for c in spec):
            layers = spec
        else:
            raise ValueError(
                f"expected model to be 'auto', a name in {sorted(BUILTIN)}, a JSON file or a list "
                f"of layer configs (dicts); received {spec!r}"
            )
        layers = copy.deepcopy(list(layers))  # never edit the caller's configs
        last = layers[-1] if layers else {}
        if last.get("type") == "Dense":
            if last.get("units") != num_classes:
                raise ValueError(
                    f"model: the last layer is Dense(units={last.get('units')!r}), but y has "
                    f"{num_classes} classes; end the list with Dense(units={num_classes}), or with "
                    "another layer to have the output layer added"
                )
        else:
            if not tabular and not any(layer.get("type") == "Flatten" for layer in layers):
                layers.append({"type": "Flatten"})
            layers.append({"type": "Dense", "units": num_classes})
        return {"input_shape": list(input_shape), "layers": layers}

    def _start(self, input_shape: tuple[int, ...], incremental: bool = False) -> None:
        """Build a freshly initialised network and optimizer for ``input_shape``.

        One seed drawn from ``random_state`` seeds the weights, the shuffle orders and the
        validation split (an int gives the same run every time; a RandomState moves on).
        """
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        config = self._architecture(tuple(input_shape), len(self.classes_))
        self.model_ = Sequential.from_config(
            config, backend=self.backend, seed=self._seed, dtype=self.dtype
        )
        self._optimizer = self._make_optimizer(incremental)

    def _make_optimizer(self, incremental: bool = False) -> Optimizer:
        """``incremental`` (partial_fit, at a constant rate): the lower default rate."""
        lr = self.lr
        if lr is None:
            lr = (INCREMENTAL_LR if incremental else DEFAULT_LR)[self.optimizer]
        if self.optimizer == "adam":
            return Adam(lr=lr, weight_decay=self.weight_decay)
        return SGD(lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def _epochs(self, samples: int) -> int:
        """``epochs`` for a training set of ``samples``, with ``"auto"`` resolved."""
        if not _is_auto(self.epochs):
            return int(self.epochs)
        steps_per_epoch = math.ceil(samples / int(self.batch_size))
        needed = math.ceil(AUTO_MIN_STEPS / steps_per_epoch)
        return min(max(AUTO_EPOCHS, needed), AUTO_MAX_EPOCHS)

    def _make_schedule(self, epochs: int):
        return make_schedule(schedule_config(self.schedule, epochs))

    def _hold_out(self, images: np.ndarray, targets: np.ndarray):
        """Split off ``validation_fraction`` (stratified when every class can give a sample)."""
        counts = np.bincount(targets)
        stratify = targets if counts[counts > 0].min() >= 2 else None
        try:
            x_fit, x_val, y_fit, y_val = train_test_split(
                images, targets, test_size=self.validation_fraction, random_state=self._seed,
                stratify=stratify,
            )  # fmt: skip
        except ValueError:  # too few samples per class for a stratified split
            x_fit, x_val, y_fit, y_val = train_test_split(
                images, targets, test_size=self.validation_fraction, random_state=self._seed
            )
        return x_fit, y_fit, (x_val, y_val)

    def _train(self, images, targets, epochs, schedule, callbacks, validation, call: int,
               incremental: bool = False):  # fmt: skip
        """Run a Trainer for ``epochs`` epochs with this estimator's optimizer; its history.
        ``incremental`` (partial_fit): ``augment_shift="auto"`` shifts nothing.

        ``call`` numbers the training runs since the network was built (0 for ``fit``, the
        epoch count for ``partial_fit``): each gets its own shuffle order, all from one seed.
        """
        seed = int(np.random.SeedSequence([self._seed, call]).generate_state(1)[0])
        augment, shift = None, self.augment_shift
        if _is_auto(shift):
            shift = AUTO_SHIFT if len(self.input_shape_) == 3 and not incremental else 0
        if shift:
            if len(self.input_shape_) != 3:
                raise ValueError(
                    f"augment_shift={self.augment_shift} shifts images; received a feature "
                    f"matrix of {self.input_shape_[0]} columns (give image_shape=(C, H, W))"
                )
            augment = Augment(int(shift), seed=seed + 1)
        trainer = Trainer(
            self.model_,
            optimizer=self._optimizer,
            schedule=schedule,
            callbacks=callbacks,
            augment=augment,
            seed=seed,
            progress=self.verbose >= 2,
            log=print if self.verbose else None,
        )
        return trainer.fit(
            images,
            np.asarray(targets, dtype=np.int64),
            validation_data=validation,
            epochs=int(epochs),
            batch_size=int(self.batch_size),
        )

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Rebuild ``model_`` and the optimizer state from a checkpoint on ``self.backend``."""
        self.model_ = Sequential.from_config(checkpoint.meta["architecture"], backend=self.backend)
        restore_model(checkpoint, self.model_)
        saved = checkpoint.meta.get("optimizer")
        if saved is None:
            self._optimizer = self._make_optimizer()
        else:  # the optimizer as it was saved, even if set_params changed lr or momentum since
            self._optimizer = make_optimizer(saved["config"])
            restore_optimizer(checkpoint, self._optimizer)


def _json_value(value: Any) -> Any:
    """A parameter as JSON can hold it: tuples and arrays as lists, NumPy scalars as numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _has_spatial_layer(layers: Any) -> bool:
    """Whether a list of layer configs (containers' children included) holds a layer that
    works on images: a type ending in "2D" (Conv2D, MaxPool2D, BatchNorm2D, ...) or Flatten."""
    for layer in layers if isinstance(layers, (list, tuple)) else ():
        if not isinstance(layer, dict):
            continue
        kind = str(layer.get("type", ""))
        children = list(layer.get("layers") or []) + [layer.get("shortcut")]
        if kind.endswith("2D") or kind == "Flatten" or _has_spatial_layer(children):
            return True
    return False


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


def _check_int_or_auto(name: str, value: Any, minimum: int, owner: str) -> None:
    """Refuse ``value`` unless it is "auto" or an int >= ``minimum``, in one line (the type is
    named only where the value is not an int)."""
    if not _is_auto(value) and not (is_int(value) and value >= minimum):
        raise fail(
            name, f"to be an int >= {minimum} or 'auto'", value, owner, show_type=not is_int(value)
        )


def _square_image_shape(columns: int) -> tuple[int, int, int] | None:
    """``image_shape="auto"``: ``(1, S, S)`` for ``S*S`` columns, ``(3, S, S)`` for ``3*S*S``
    (``S >= 8``: smaller squares are more likely features than pictures), else None."""
    for channels in (1, 3):
        side = math.isqrt(columns // channels)
        if columns == channels * side * side and side >= MIN_AUTO_IMAGE_SIDE:
            return (channels, side, side)
    return None


def _image_shape(value: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` from an ``image_shape`` value, or None when it is not a valid one."""
    try:
        shape = tuple(value)
    except TypeError:
        return None
    if len(shape) not in (2, 3) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        return None
    shape = tuple(int(n) for n in shape)
    return (1, *shape) if len(shape) == 2 else shape


__all__ = ["CNNClassifier"]
