"""A strict registry: config names map to classes; duplicates fail, unknown names list the known."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from pseudostream.server.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names (as written in config) to classes of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@POLICIES.register("fixed")``."""

        def add(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an unknown name raises listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
