"""Name -> object registries with duplicate rejection and closest-name hints."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

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

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            valid = ", ".join(sorted(self._items))
            raise UnknownNameError(
                f"Unknown {self.kind} '{name}'. Valid {self.kind} names: {valid}."
                + closest_hint(name, list(self._items))
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
