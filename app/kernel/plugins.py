"""A registry of plugin types: the YAML key → ``"module:Class"``, imported on first use.

Why lazy: a source or trigger module may pull in a heavy client library (a cloud SDK,
a broker client). Naming the class as text keeps the registry one line per type while
validating a manifest imports only the types it uses, and the spec models that consult
the registry never import the implementations at import time (no import cycle between a
model and the plugins that use its pieces). Used by :mod:`eventsources.registry` and
:mod:`sensors.triggers.registry`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["PluginRegistry"]


class PluginRegistry(Mapping[str, str], Generic[T]):
    """``{key: "package.module:Class"}``; :meth:`load` imports and returns the class.

    As a mapping it yields the keys and their import paths, so listing what is
    registered imports nothing.
    """

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, T] = {}

    def __getitem__(self, key: str) -> str:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, key: str) -> T:
        """The class registered under ``key`` (``KeyError`` when none is)."""
        cls = self._loaded.get(key)
        if cls is None:
            module_name, _, attr = self._entries[key].partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
            self._loaded[key] = cls
        return cls

    def load_all(self) -> dict[str, T]:
        """Every registered class (CRD schemas, tests)."""
        return {key: self.load(key) for key in self._entries}
