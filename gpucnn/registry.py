"""One way to turn ``get_config()`` output back into objects: layers, optimizers, schedules.

A class joins a :class:`Registry` under a name; its ``get_config()`` puts that name under
``"type"`` (the base classes do it, subclasses add their own arguments), and
``registry.from_config(config)`` rebuilds it. Unknown types or arguments raise ``ValueError``
naming what was expected.

**Plugins from installed packages.** A registry made with ``entry_point_group`` (the layer
registry's is ``"gpucnn.layers"``) loads that group's entry points the first time it reads a
config, once per process. A package makes its layers known to every gpucnn program (the
command line included, without ``--plugin``) by declaring, in its ``pyproject.toml``::

    [project.entry-points."gpucnn.layers"]
    MyLayer = "my_package.layers:MyLayer"     # a Layer subclass: registered as "MyLayer"
    my_package = "my_package.layers"          # or a module whose import registers its layers

A class the module did not register with ``@LAYERS.register(name)`` is registered under the
entry point's name. An entry point that fails to load raises :class:`PluginError`, one line
naming the entry point, its package and the error, on every read of a config in that process.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class PluginError(ValueError):
    """An installed package's entry point (e.g. in ``gpucnn.layers``) failed to load."""


class Registry:
    """Named classes of one kind.

    Parameters
    ----------
    kind : what the classes are, for messages (``"layer"``, ``"optimizer"``...).
    entry_point_group : the entry-point group whose plugins are loaded before the first
        :meth:`from_config` (see the module docstring); None for none.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.article = "an" if kind[0] in "aeiou" else "a"
        self.classes: dict[str, type] = {}
        self.entry_point_group = entry_point_group
        self._entry_points_loaded = entry_point_group is None
        self._entry_point_error: PluginError | None = None

    def load_entry_points(self) -> None:
        """Load the ``entry_point_group`` plugins, once per process (later calls only repeat
        the first call's :class:`PluginError`, if any)."""
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            for entry_point in metadata.entry_points(group=self.entry_point_group):
                try:
                    self._load(entry_point)
                except Exception as exc:  # noqa: BLE001 - a package's code: one line about it
                    self._entry_point_error = PluginError(
                        f"{self.kind} plugin entry point {entry_point.name!r} = "
                        f"{entry_point.value!r} ({_package(entry_point)}, group "
                        f"{self.entry_point_group}) failed to load: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}; fix or uninstall that package"
                    )
                    break
        if self._entry_point_error is not None:
            raise self._entry_point_error

    def _load(self, entry_point: metadata.EntryPoint) -> None:
        loaded = entry_point.load()  # imports the module: its @register decorators run
        if isinstance(loaded, type) and loaded not in self.classes.values():
            self.register(entry_point.name)(loaded)

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
        self.load_entry_points()
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


def _package(entry_point: metadata.EntryPoint) -> str:
    """``package NAME VERSION`` of an entry point, or what can be said without it."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "package unknown"
    return f"package {dist.metadata['Name']} {dist.version}"


__all__ = ["PluginError", "Registry"]
