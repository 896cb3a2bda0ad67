"""One way to turn ``get_config()`` output back into objects: layers, optimizers, schedules.

A class joins a :class:`Registry` under a name; its ``get_config()`` puts that name under
``"type"`` (the base classes do it, subclasses add their own arguments), and
``registry.from_config(config)`` rebuilds it. Unknown types or arguments raise ``ValueError``
naming what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class Registry:
    """Named classes of one kind.

    Parameters
    ----------
    kind : what the classes are, for messages (``"layer"``, ``"optimizer"``...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.article = "an" if kind[0] in "aeiou" else "a"
        self.classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: file the class under ``name`` and set its ``config_name``."""

        def add(cls: T) -> T:
            known = self.classes.get(name)
            # the same class defined again (a notebook cell run twice) replaces itself
            if known is not None and _identity(known) != _identity(cls):
                raise ValueError(
                    f"{self.kind} type {name!r} is already registered (by "
                    f"{known.__module__}.{known.__qualname__}); choose another name"
                )
            cls.config_name = name
            self.classes[name] = cls
            return cls

        return add

    def from_config(self, config: dict[str, Any]) -> Any:
        """Build an object from ``{"type": name, **constructor arguments}``."""
        if not isinstance(config, dict) or "type" not in config:
            raise ValueError(
                f"expected {self.article} {self.kind} as a dict with a 'type' key; received {config!r}"
            )
        kwargs = dict(config)
        name = kwargs.pop("type")
        cls = self.classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(
                f"expected {self.article} {self.kind} type in {sorted(self.classes)}; received {name!r}"
            )
        if not all(isinstance(key, str) for key in kwargs):
            raise ValueError(f"expected argument names as strings for {self.kind} {name}")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad arguments for {self.kind} {name}: {exc}") from None


def _identity(cls: type) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


__all__ = ["Registry"]
