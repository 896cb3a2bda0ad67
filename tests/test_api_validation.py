"""Public arguments of the wrong type or range fail in one line that names the caller and the
argument (see :mod:`gpucnn.validation`); NumPy scalars count as numbers, bools do not."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpucnn import SGD, Adam, Sequential
from gpucnn.augment import Augment
from gpucnn.checkpoint import CheckpointError, save_checkpoint
from gpucnn.data import load_data, load_dataset, load_mnist, standardize, train_val_split
from gpucnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D
from gpucnn.optim import CosineLR, ExponentialLR, StepLR
from gpucnn.sklearn import CNNClassifier
from gpucnn.trainer import EarlyStopping, Trainer
from gpucnn.validation import (
    ArgumentError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_int_tuple,
    check_sequence_of,
)

RNG = np.random.default_rng(0)
X = RNG.random((8, 1, 4, 4), dtype=np.float32)
Y = np.arange(8) % 3


def net() -> Sequential:
    return Sequential([Flatten(), Dense(3)], input_shape=(1, 4, 4), backend="numpy")


def trainer(**kwargs: Any) -> Trainer:
    return Trainer(net(), log=None, progress=False, **kwargs)


def npz(tmp_path: Path) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, x=RNG.random((20, 1, 4, 4), dtype=np.float32), y=np.arange(20) % 2)
    return path


def checkpoint_with(tmp_path: Path, **meta: Any) -> Path:
    path = tmp_path / "c.npz"
    save_checkpoint(path, net(), None, **meta)
    return path


# (id, call(tmp_path), exception, message pattern); every message is also checked to be one
# line that says what was received
REFUSED: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    # the model
    ("Sequential input_shape=[None]", lambda t: Sequential([Dense(2)], input_shape=[None]), ArgumentError,
     r"Sequential: expected input_shape \(C, H, W\) or \(D,\) of positive ints; received \[None\] \(list\)"),
    ("Trainer on a container (input_shape=None)", lambda t: Trainer(Sequential([Dense(2)])), ArgumentError,
     r"Trainer: expected model to be a Sequential built with input_shape; received a container"),
    ("Sequential input_shape='abc'", lambda t: Sequential([Dense(2)], input_shape="abc"), ArgumentError,
     r"expected input_shape .*received 'abc' \(str\)"),
    ("Sequential one layer, not a list", lambda t: Sequential(Dense(2), input_shape=(4,)), ValueError,
     r"Sequential: expected a non-empty list of layers; received Dense\(units=2\)"),
    ("Sequential seed='a'", lambda t: Sequential([Dense(2)], (4,), backend="numpy", seed="a"), ArgumentError,
     r"Sequential: expected seed to be an int >= 0; received 'a' \(str\)"),
    ("Sequential input_shape=(1, 2.5, 3)", lambda t: Sequential([Dense(2)], (1, 2.5, 3)), ArgumentError,
     r"expected input_shape .*received \(1, 2.5, 3\) \(tuple\)"),
    ("predict(None)", lambda t: net().predict(None), ArgumentError,
     r"Sequential.predict: expected x to be an array of images; received None"),
    ("predict(batch_size=2.5)", lambda t: net().predict(X, batch_size=2.5), ArgumentError,
     r"Sequential.predict: expected batch_size to be an int >= 1; received 2.5 \(float\)"),
    ("predict_proba(batch_size=True)", lambda t: net().predict_proba(X, batch_size=True), ArgumentError,
     r"Sequential.predict_proba: expected batch_size to be an int >= 1; received True \(bool\)"),
    ("predict(batch_size=0)", lambda t: net().predict(X, batch_size=0), ArgumentError,
     r"expected batch_size to be an int >= 1; received 0"),
    ("predict(ragged list)", lambda t: net().predict([[1.0], [1.0, 2.0]]), ArgumentError,
     r"expected x to be an array of images \(equal-length nested lists\)"),
    # layers
    ("Conv2D filters='2'", lambda t: Conv2D("2", 3), ArgumentError,
     r"Conv2D: expected filters to be an int >= 1; received '2' \(str\)"),
    ("Dense units=3.0", lambda t: Dense(3.0), ArgumentError,
     r"Dense: expected units to be an int >= 1; received 3.0 \(float\)"),
    ("Dropout rate=True", lambda t: Dropout(True), ArgumentError,
     r"Dropout: expected rate in \[0, 1\); received True \(bool\)"),
    ("MaxPool2D pool_size='2'", lambda t: MaxPool2D("2"), ArgumentError,
     r"expected MaxPool2D pool_size to be an int or a pair of ints; received '2' \(str\)"),
    # optimizers and schedules
    ("SGD momentum='0.9'", lambda t: SGD(momentum="0.9"), ArgumentError,
     r"SGD: expected momentum in \[0, 1\); received '0.9' \(str\)"),
    ("SGD lr=True", lambda t: SGD(lr=True), ArgumentError,
     r"SGD: expected a learning rate lr > 0; received True \(bool\)"),
    ("SGD nesterov='yes'", lambda t: SGD(momentum=0.9, nesterov="yes"), ArgumentError,
     r"SGD: expected nesterov to be True or False; received 'yes' \(str\)"),
    ("SGD clip_norm='1'", lambda t: SGD(clip_norm="1"), ArgumentError,
     r"SGD: expected clip_norm > 0; received '1' \(str\)"),
    ("Adam beta1='a'", lambda t: Adam(beta1="a"), ArgumentError,
     r"Adam: expected beta1 in \[0, 1\); received 'a' \(str\)"),
    ("Adam eps=-1", lambda t: Adam(eps=-1), ArgumentError, r"Adam: expected eps >= 0; received -1"),
    ("StepLR step_size='2'", lambda t: StepLR(step_size="2"), ArgumentError,
     r"StepLR: expected step_size to be an int >= 1; received '2' \(str\)"),
    ("ExponentialLR gamma='a'", lambda t: ExponentialLR(gamma="a"), ArgumentError,
     r"ExponentialLR: expected gamma in \(0, 1\]; received 'a' \(str\)"),
    ("CosineLR epochs='3'", lambda t: CosineLR(epochs="3"), ArgumentError,
     r"CosineLR: expected epochs to be an int >= 1; received '3' \(str\)"),
    # the trainer
    ("Trainer model='x'", lambda t: Trainer("x"), ArgumentError,
     r"Trainer: expected model to be an instance of Sequential; received 'x' \(str\)"),
    ("Trainer optimizer='sgd'", lambda t: trainer(optimizer="sgd").fit(X, Y), ArgumentError,
     r"Trainer: expected optimizer to be an Optimizer .*received 'sgd' \(str\)"),
    ("Trainer schedule='cosine'", lambda t: trainer(schedule="cosine"), ArgumentError,
     r"Trainer: expected schedule to be a Schedule .*received 'cosine' \(str\)"),
    ("Trainer callbacks=[1]", lambda t: trainer(callbacks=[1]).fit(X, Y), ArgumentError,
     r"Trainer: expected callbacks\[0\] to be a Callback; received 1 \(int\)"),
    ("Trainer callbacks=EarlyStopping()", lambda t: trainer(callbacks=EarlyStopping()), ArgumentError,
     r"Trainer: expected callbacks to be a list of Callback objects; received .*\(EarlyStopping\)"),
    ("Trainer clip_norm='1'", lambda t: trainer(clip_norm="1"), ArgumentError,
     r"Trainer: expected clip_norm > 0; received '1' \(str\)"),
    ("Trainer log=1", lambda t: Trainer(net(), log=1), ArgumentError,
     r"Trainer: expected log to be a function of one str, or None; received 1 \(int\)"),
    ("Trainer augment=2", lambda t: trainer(augment=2), ArgumentError,
     r"Trainer: expected augment to be an instance of Augment; received 2 \(int\)"),
    ("Trainer checkpoint_path=5", lambda t: trainer(checkpoint_path=5), ArgumentError,
     r"Trainer: expected checkpoint_path to be a str or os.PathLike, or None; received 5 \(int\)"),
    ("Trainer progress='yes'", lambda t: Trainer(net(), progress="yes"), ArgumentError,
     r"Trainer: expected progress to be True or False; received 'yes' \(str\)"),
    ("fit validation_data=x_val", lambda t: trainer().fit(X, Y, validation_data=X), ArgumentError,
     r"Trainer.fit: expected validation_data to be a pair \(x_val, y_val\) or None; received "
     r"ndarray of shape \(8, 1, 4, 4\) and dtype float32"),
    ("fit validation_data=(x_val,)", lambda t: trainer().fit(X, Y, validation_data=(X,)), ArgumentError,
     r"expected validation_data to be a pair .*received \(ndarray of shape \(8, 1, 4, 4\) and dtype float32,\) \(tuple\)"),
    ("fit batch_size=True", lambda t: trainer().fit(X, Y, batch_size=True), ArgumentError,
     r"Trainer.fit: expected batch_size to be an int >= 1; received True \(bool\)"),
    ("fit epochs=True", lambda t: trainer().fit(X, Y, epochs=True), ArgumentError,
     r"Trainer.fit: expected epochs to be an int >= 1; received True \(bool\)"),
    ("fit on 0 samples", lambda t: trainer().fit(X[:0], Y[:0]), ArgumentError,
     r"Trainer.fit: expected at least one training sample; received x of shape \(0, 1, 4, 4\)"),
    ("fit on 0 validation samples", lambda t: trainer().fit(X, Y, validation_data=(X[:0], Y[:0])), ArgumentError,
     r"expected at least one validation sample \(or validation_data=None\)"),
    ("fit y=None", lambda t: trainer().fit(X, None), ArgumentError,
     r"Trainer.fit: expected y to be an array of labels; received None"),
    ("EarlyStopping patience='abc'", lambda t: EarlyStopping(patience="abc"), ArgumentError,
     r"EarlyStopping: expected patience to be an int >= 0; received 'abc' \(str\)"),
    ("EarlyStopping patience=2.5", lambda t: EarlyStopping(patience=2.5), ArgumentError,
     r"EarlyStopping: expected patience to be an int >= 0; received 2.5 \(float\)"),
    ("EarlyStopping min_delta='x'", lambda t: EarlyStopping(min_delta="x"), ArgumentError,
     r"EarlyStopping: expected min_delta >= 0; received 'x' \(str\)"),
    ("EarlyStopping restore_best='no'", lambda t: EarlyStopping(restore_best="no"), ArgumentError,
     r"EarlyStopping: expected restore_best to be True or False; received 'no' \(str\)"),
    # augmentation
    ("Augment shift=1.5", lambda t: Augment(shift=1.5), ArgumentError,
     r"Augment: expected shift to be an int >= 0; received 1.5 \(float\)"),
    ("Augment flip='no'", lambda t: Augment(flip="no"), ArgumentError,
     r"Augment: expected flip to be True or False; received 'no' \(str\)"),
    ("Augment seed='a'", lambda t: Augment(seed="a"), ArgumentError,
     r"Augment: expected seed to be an int >= 0; received 'a' \(str\)"),
    # data
    ("load_data image_size='88'", lambda t: load_data(npz(t), image_size="88"), ArgumentError,
     r"load_data: expected image_size \(H, W\) with H, W >= 1; received '88' \(str\)"),
    ("load_data image_size=8", lambda t: load_data(npz(t), image_size=8), ArgumentError,
     r"load_data: expected image_size \(H, W\) with H, W >= 1; received 8 \(int\)"),
    ("load_data channels=True", lambda t: load_data(npz(t), channels=True), ArgumentError,
     r"load_data: expected channels in \(1, 3\); received True \(bool\)"),
    ("load_data test_fraction='0.2'", lambda t: load_data(npz(t), test_fraction="0.2"), ArgumentError,
     r"load_data: expected test_fraction to be a finite float; received '0.2' \(str\)"),
    ("load_data path=None", lambda t: load_data(None), ArgumentError,
     r"load_data: expected path to be a str or os.PathLike; received None \(NoneType\)"),
    ("load_data stream='yes'", lambda t: load_data(npz(t), stream="yes"), ArgumentError,
     r"load_data: expected stream to be True or False; received 'yes' \(str\)"),
    ("train_val_split val_fraction='0.2'", lambda t: train_val_split(X, Y, "0.2", 0), ArgumentError,
     r"train_val_split: expected val_fraction in \[0, 1\); received '0.2' \(str\)"),
    ("train_val_split x/y lengths", lambda t: train_val_split(X, Y[:3], 0.25, 0), ArgumentError,
     r"train_val_split: expected y of shape \(8,\), one label per sample of x; received y of shape \(3,\)"),
    ("load_dataset seed='a'", lambda t: load_dataset("digits", seed="a"), ArgumentError,
     r"load_dataset: expected seed to be an int in \[0, 4294967295\]; received 'a' \(str\)"),
    ("load_mnist root=5", lambda t: load_mnist(5), ArgumentError,
     r"load_mnist: expected root to be a str or os.PathLike, or None; received 5 \(int\)"),
    ("standardize(None)", lambda t: standardize(None), ArgumentError,
     r"standardize: expected x to be an array; received None"),
    # the scikit-learn estimator
    ("CNNClassifier momentum='0.9'", lambda t: CNNClassifier(momentum="0.9").fit(X, Y), ArgumentError,
     r"CNNClassifier: expected momentum in \[0, 1\); received '0.9' \(str\)"),
    ("CNNClassifier epochs=True", lambda t: CNNClassifier(epochs=True).fit(X, Y), ArgumentError,
     r"CNNClassifier: expected epochs to be an int >= 1 or 'auto'; received True \(bool\)"),
    ("CNNClassifier verbose='yes'", lambda t: CNNClassifier(verbose="yes").fit(X, Y), ArgumentError,
     r"CNNClassifier: expected verbose to be an int >= 0; received 'yes' \(str\)"),
    ("CNNClassifier early_stopping='no'", lambda t: CNNClassifier(early_stopping="no").fit(X, Y), ArgumentError,
     r"CNNClassifier: expected early_stopping to be True or False; received 'no' \(str\)"),
    ("CNNClassifier.load plain checkpoint", lambda t: CNNClassifier.load(checkpoint_with(t)), CheckpointError,
     r"expected a file written by CNNClassifier.save; received a checkpoint without estimator data"),
    ("CNNClassifier.load incomplete data", lambda t: CNNClassifier.load(checkpoint_with(t, sklearn={"params": {}})),
     CheckpointError,
     r"expected the estimator data CNNClassifier.save writes; received incomplete or malformed data \(KeyError: 'classes'\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    "call,error,message", [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
def test_a_bad_argument_is_refused_in_one_clear_line(tmp_path, call, error, message):
    with pytest.raises(error, match=message) as info:
        call(tmp_path)
    assert isinstance(info.value, ValueError)  # the CLI turns ValueError into exit code 2
    text = str(info.value)
    assert "\n" not in text and "expected" in text and "received" in text


def test_the_table_covers_the_cases_asked_for():
    assert len(REFUSED) >= 28
    assert len({row[0] for row in REFUSED}) == len(REFUSED)


# ---------------------------------------------------------------------- accepted values
def test_numpy_scalars_count_as_numbers():
    sgd = SGD(lr=np.float32(0.1), momentum=np.float64(0.5), weight_decay=np.int64(0))
    assert type(sgd.lr) is float and sgd.lr == pytest.approx(0.1)
    assert Adam(lr=np.float32(1e-3), beta1=np.float32(0.8)).beta1 == pytest.approx(0.8)
    assert type(Dropout(np.float32(0.5)).rate) is float
    layers = [
        Conv2D(np.int64(2), np.int64(3), stride=(np.int64(1), 1)),
        Flatten(),
        Dense(np.int64(3)),
    ]
    model = Sequential(layers, input_shape=np.array([1, 5, 5]), backend="numpy", seed=np.int64(1))
    json.dumps(model.get_config())  # NumPy integers did not leak into the config
    assert model.input_shape == (1, 5, 5) and model.seed == 1
    history = Trainer(net(), SGD(np.float32(0.1)), log=None, progress=False, seed=np.int64(3)).fit(
        X, Y, epochs=np.int64(2), batch_size=np.int64(4)
    )
    assert len(history["loss"]) == 2
    assert EarlyStopping(patience=np.int64(2), min_delta=np.float32(0.0)).patience == 2
    assert StepLR(np.int64(2), np.float32(0.5)).step_size == 2
    assert CosineLR(np.int64(3)).epochs == 3
    assert Augment(np.int64(1), np.bool_(True), seed=np.int64(0)).flip is True


def test_numpy_dtype_objects_name_the_model_dtype():
    for dtype in (np.float64, np.dtype("float64"), "float64"):
        model = Sequential([Dense(2)], input_shape=(3,), dtype=dtype, backend="numpy")
        assert model.dtype_name == "float64"


def test_nested_lists_are_accepted_as_arrays():
    model = net()
    np.testing.assert_array_equal(model.predict(X.tolist()), model.predict(X))
    np.testing.assert_allclose(
        model.predict_proba(X.tolist(), batch_size=3), model.predict_proba(X)
    )
    history = Trainer(net(), log=None, progress=False).fit(X.tolist(), Y.tolist(), (X, Y.tolist()))
    assert len(history["val_loss"]) == 1
    (x_fit, _), (x_val, _) = train_val_split(X.tolist(), Y.tolist(), 0.25, 0)
    assert len(x_fit) == 6 and len(x_val) == 2
    assert standardize([0.0, 2.0])[0].tolist() == [-1.0, 1.0]


def test_the_classifier_accepts_numpy_scalars_and_verbose_true(capsys):
    clf = CNNClassifier(
        epochs=np.int64(1), batch_size=np.int64(4), lr=np.float32(0.05), verbose=True,
        backend="numpy",
    )  # fmt: skip
    clf.fit(X.reshape(8, -1), Y)
    assert clf.n_iter_ == 1 and "epoch 1/1" in capsys.readouterr().out


# ---------------------------------------------------------------------- the checks themselves
@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: check_int("n", True), r"expected n to be an int; received True \(bool\)"),
        (lambda: check_int("n", "3", 1), r"expected n to be an int >= 1; received '3' \(str\)"),
        (lambda: check_int("n", 5, 0, 4, owner="f"), r"^f: expected n to be an int in \[0, 4\]; received 5$"),
        (lambda: check_float("p", np.bool_(True), 0, 1), r"expected p in \[0, 1\]; received .*\(bool_?\)"),
        (lambda: check_float("p", float("nan")), r"expected p to be a finite float; received nan$"),
        (lambda: check_float("p", float("inf"), 0), r"expected p >= 0; received inf$"),
        (lambda: check_float("p", 1.0, 0, 1, high_open=True), r"expected p in \[0, 1\); received 1.0$"),
        (lambda: check_bool("b", 1), r"expected b to be True or False; received 1 \(int\)"),
        (lambda: check_choice("c", True, (1, 2)), r"expected c in \(1, 2\); received True \(bool\)"),
        (lambda: check_int_tuple("s", (1, 0), (2,)), r"expected s to be a tuple of 2 ints >= 1; received \(1, 0\)$"),
        (lambda: check_sequence_of("items", "ab", str), r"expected items to be a list of str objects; received 'ab' \(str\)"),
    ],
)  # fmt: skip
def test_the_checks_state_expected_and_received(call, message):
    with pytest.raises(ArgumentError, match=message):
        call()


def test_the_checks_return_plain_python_values():
    assert type(check_int("n", np.int64(3))) is int
    assert type(check_float("x", np.float32(0.5))) is float
    assert type(check_float("x", 2)) is float
    assert check_bool("b", np.bool_(False)) is False
    assert check_choice("c", np.str_("sgd"), ("sgd", "adam")) == "sgd"
    assert check_int_tuple("s", [np.int64(2), 3], (2,)) == (2, 3)


def test_a_long_value_is_shortened_to_one_line():
    with pytest.raises(ArgumentError) as info:
        check_int("n", list(range(1000)))
    assert len(str(info.value)) < 200 and re.search(r"\.\.\. \(list\)$", str(info.value))
