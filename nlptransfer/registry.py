"""Name -> object registries with duplicate rejection and closest-name hints; lazy package names."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from nlptransfer.errors import UnknownNameError

T = TypeVar("T")


def closest_hint(name: str, choices: list[str]) -> str:
    """Return ``" Did you mean 'x'?"`` when a choice is close to ``name``, else ``""``."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    match = match or [c for c in choices if name and c.startswith(name)][:1]
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """A named collection of components (strategies, poolings, backbones...).

    Saved models store registry names, never import paths, so loading a model
    can only ever build components that this package registered itself.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # name -> the module of this package that registers it when first asked for (costly imports).
        self._lazy: dict[str, str] = {}

    def register_lazy(self, name: str, module: str) -> None:
        """``name`` is registered by ``module`` (of this package), imported on the first ``get``."""
        self._lazy[name] = module

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._items:
            valid = ", ".join(self.names())
            raise UnknownNameError(
                f"Unknown {self.kind} '{name}'. Valid {self.kind} names: {valid}."
                + closest_hint(name, self.names())
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def lazy_attributes(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for ``names`` (name -> module that
    defines it): each module is imported when one of its names is first used, so importing the
    package stays cheap (and lower layers can import one of its modules without the others)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*names, *vars(sys.modules[package])})

    return __getattr__, __dir__
