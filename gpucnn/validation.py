"""Checks for the arguments of public constructors and methods.

Each ``check_*`` function takes the argument's ``name`` and ``value``, returns the value
normalised to a plain Python type (``int``, ``float``, ``bool``, ``tuple``, ``list``) and
otherwise raises :class:`ArgumentError` with one line that names the caller and the argument
and states what was expected and what was received::

    SGD: expected momentum in [0, 1); received '0.9' (str)

Policy
------
* Every refused argument raises :class:`ArgumentError`, a ``ValueError``, whether its type or
  its value is wrong: one exception for callers to catch, and the one the command line turns
  into a one-line message and exit code 2.
* Numbers: NumPy scalars count (``np.int64(2)``, ``np.float32(0.1)``), as values read from
  arrays and configs often are. Booleans never count as numbers (``lr=True`` is a mistake,
  not 1.0), and neither do strings (``"0.9"``), which are never parsed.
* An integer is wanted where a count is wanted: ``2.0`` is refused for ``batch_size``.
* ``owner`` (the class or function, e.g. ``"SGD"``, ``"Trainer.fit"``) prefixes the message.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class ArgumentError(ValueError):
    """A public argument of the wrong type or out of range (see the module docstring)."""


def _received(value: Any, show_type: bool) -> str:
    is_array = hasattr(value, "shape") and hasattr(value, "dtype")
    if is_array and not isinstance(value, np.generic):  # an array: its kind, not its values
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)) and any(hasattr(v, "shape") for v in value):
        items = ", ".join(_received(v, False) for v in value)  # arrays inside, e.g. (x_val,)
        if isinstance(value, list):
            text = f"[{items}]"
        else:
            text = f"({items},)" if len(value) == 1 else f"({items})"
        return f"{text} ({type(value).__name__})" if show_type else text
    text = " ".join(repr(value).split())  # one line, whatever the value prints as
    if len(text) > 80:  # a large array or list would drown the message
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})" if show_type else text


def fail(
    name: str, expected: str, value: Any, owner: str | None = None, show_type: bool = True
) -> ArgumentError:
    """The error for ``value``: ``"<owner>: expected <name> <expected>; received <value>"``.

    Returned, not raised, so the caller's ``raise`` shows where the check failed.
    """
    prefix = f"{owner}: " if owner else ""
    subject = f"{name} " if name else ""
    return ArgumentError(
        f"{prefix}expected {subject}{expected}; received {_received(value, show_type)}"
    )


def is_int(value: Any) -> bool:
    """True for a Python or NumPy integer, False for a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """True for a Python or NumPy real number (integers included), False for a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _number(bound: float) -> str:
    return str(bound) if is_int(bound) else f"{bound:g}"  # ints in full: 4294967295


def _bounds_text(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"in {left}{_number(low)}, {_number(high)}{right}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_number(high)}"
    return ""


def check_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    owner: str | None = None,
) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (either bound may be None).

    Message: ``"expected batch_size to be an int >= 1; received 2.5 (float)"``.
    """
    expected = "to be an int"
    bounds = _bounds_text(minimum, maximum, False, False)
    if bounds:
        expected += f" {bounds}"
    if not is_int(value):
        raise fail(name, expected, value, owner)
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise fail(name, expected, value, owner, show_type=False)
    return number


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    owner: str | None = None,
    describe: str | None = None,
) -> float:
    """``value`` (any real number, ints included) as a ``float`` within the bounds.

    Parameters
    ----------
    low, high : the bounds; None for none. ``low_open``/``high_open`` exclude them.
    finite : refuse NaN and infinities (a bound never admits NaN either way).
    describe : what the message calls the argument instead of ``name``
        (``"a learning rate lr"``).

    Message: ``"expected momentum in [0, 1); received '0.9' (str)"``, or
    ``"expected clip_norm to be a finite float > 0; ..."`` without bounds wording.
    """
    bounds = _bounds_text(low, high, low_open, high_open)
    expected = bounds or ("to be a finite float" if finite else "to be a float")
    subject = describe or name
    if not is_real(value):
        raise fail(subject, expected, value, owner)
    number = float(value)
    inside = not math.isnan(number) and not (finite and math.isinf(number))
    if low is not None:
        inside = inside and (number > low if low_open else number >= low)
    if high is not None:
        inside = inside and (number < high if high_open else number <= high)
    if not inside:
        raise fail(subject, expected, value, owner, show_type=False)
    return number


def check_bool(name: str, value: Any, *, owner: str | None = None) -> bool:
    """``value`` as a ``bool``; only ``True``/``False`` (or NumPy's) count, not 0/1 or ``"no"``."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(name, "to be True or False", value, owner)
    return bool(value)


def check_choice(
    name: str,
    value: Any,
    choices: Iterable[T],
    *,
    owner: str | None = None,
    describe: str | None = None,
) -> T:
    """The one of ``choices`` that equals ``value`` (so ``np.str_("sgd")`` gives ``"sgd"``);
    a bool never matches a number (``True`` is not the choice ``1``). ``describe`` replaces
    ``"<name> in <choices>"`` in the message (``"a dataset in ('digits', ...)"``)."""
    choices = tuple(choices)
    is_bool = isinstance(value, (bool, np.bool_))
    for choice in choices:
        if is_bool == isinstance(choice, bool) and _equal(value, choice):
            return choice
    if describe:
        raise fail("", describe, value, owner)
    raise fail(name, f"in {choices}", value, owner)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # an array compares element-wise: not a choice
        return False


def check_instance(
    name: str,
    value: Any,
    types: type | tuple[type, ...],
    *,
    owner: str | None = None,
    describe: str | None = None,
) -> Any:
    """``value`` when it is an instance of ``types``; ``describe`` words the expectation
    (default: ``"an instance of SGD or Adam"``)."""
    if not isinstance(value, types):
        kinds = types if isinstance(types, tuple) else (types,)
        expected = describe or "an instance of " + " or ".join(t.__name__ for t in kinds)
        raise fail(name, f"to be {expected}", value, owner)
    return value


def check_sequence_of(
    name: str,
    value: Any,
    types: type | tuple[type, ...],
    *,
    owner: str | None = None,
    describe: str | None = None,
) -> list[Any]:
    """``value`` as a list when it is a list or tuple whose items are all instances of
    ``types``. A string or a single item is refused (a common slip: ``callbacks=stop``);
    ``describe`` names the item type in the message (default: the class names)."""
    kinds = types if isinstance(types, tuple) else (types,)
    what = describe or " or ".join(t.__name__ for t in kinds)
    if not isinstance(value, (list, tuple)):
        raise fail(name, f"to be a list of {what} objects", value, owner)
    for index, item in enumerate(value):
        if not isinstance(item, types):
            article = "an" if what[0].lower() in "aeiou" else "a"
            raise fail(f"{name}[{index}]", f"to be {article} {what}", item, owner)
    return list(value)


def check_int_tuple(
    name: str,
    value: Any,
    lengths: Sequence[int],
    minimum: int | None = 1,
    *,
    owner: str | None = None,
    describe: str | None = None,
) -> tuple[int, ...]:
    """``value`` as a tuple of ints, each >= ``minimum``, whose length is one of ``lengths``
    (shapes and sizes: ``input_shape``, ``image_size``). A string is refused, not iterated.

    ``describe`` words the expectation after the name, e.g. ``"(C, H, W) or (D,) of positive
    ints"``.
    """
    counts = " or ".join(str(n) for n in lengths)
    floor = "" if minimum is None else f" >= {minimum}"
    expected = describe or f"to be a tuple of {counts} ints{floor}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise fail(name, expected, value, owner)
    items = tuple(value)
    if len(items) not in lengths or not all(is_int(n) for n in items):
        raise fail(name, expected, value, owner)
    if minimum is not None and min(items, default=minimum) < minimum:
        raise fail(name, expected, value, owner, show_type=False)
    return tuple(int(n) for n in items)


def check_array(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    owner: str | None = None,
    describe: str = "an array",
) -> Any:
    """An array-like ``value`` as an array.

    Anything with ``shape`` and ``dtype`` (NumPy, CuPy, a disk-backed image source) is
    returned as it is; nested lists or tuples of numbers become a NumPy array. Refused:
    ``None``, strings, scalars, ragged or non-numeric lists, and, with ``ndim``, arrays of
    another number of dimensions.
    """
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = value
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError:  # ragged nesting
            raise fail(
                name, f"to be {describe} (equal-length nested lists)", value, owner
            ) from None
        if array.dtype.kind not in "biuf":
            raise fail(name, f"to be {describe} of numbers", value, owner)
    else:
        raise fail(name, f"to be {describe}", value, owner)
    if ndim is not None and len(array.shape) != ndim:
        prefix = f"{owner}: " if owner else ""
        raise ArgumentError(
            f"{prefix}expected {name} to be {describe} with {ndim} dimensions; received shape "
            f"{tuple(array.shape)}"
        )
    return array


def check_callable(
    name: str, value: Any, *, owner: str | None = None, describe: str = "callable"
) -> Callable:
    """``value`` when it can be called (a function, a bound method, a class); ``describe``
    words the expectation (``"a function f(epoch) -> float"``)."""
    if not callable(value):
        raise fail(name, f"to be {describe}", value, owner)
    return value


def check_pair(name: str, value: Any, *, owner: str | None = None, describe: str) -> tuple:
    """``value`` as a tuple when it is a tuple or list of two items (``(x_val, y_val)``);
    ``describe`` words the pair, e.g. ``"a pair (x_val, y_val)"``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise fail(name, f"to be {describe}", value, owner)
    return tuple(value)


__all__ = [
    "ArgumentError",
    "check_array",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_float",
    "check_instance",
    "check_int",
    "check_int_tuple",
    "check_pair",
    "check_sequence_of",
    "fail",
    "is_int",
    "is_real",
]
