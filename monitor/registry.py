"""Factories keyed by ``type``: how the daemon builds its sources and sinks.

A config schema (:mod:`monitor.config.sources`, :mod:`monitor.config.sinks`) carries its
``type`` tag and names the module implementing it (``implementation``); that module
registers its factory for the schema::

    @register_source(SerialSourceConfig)
    def _build(cfg: SerialSourceConfig, ctx: SourceContext) -> SerialSource: ...

The daemon asks the registry to build each configured item: the implementing module is
imported then (not when a config is merely validated), and its factory called with the
item's config and what the daemon shares with it (the context).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from monitor.config.base import type_tag

Ctx = TypeVar("Ctx")
Built = TypeVar("Built")


class Schema(Protocol):
    """A config schema the registry can build from."""

    implementation: ClassVar[str]

    @property
    def type(self) -> str: ...


S = TypeVar("S", bound=BaseModel)


class Registry(Generic[Ctx, Built]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, Callable[[Any, Ctx], Built]] = {}

    def register(
        self, schema: type[S]
    ) -> Callable[[Callable[[S, Ctx], Built]], Callable[[S, Ctx], Built]]:
        """Decorator: ``factory`` builds the items of ``schema``'s ``type``."""
        tag = type_tag(schema)

        def add(factory: Callable[[S, Ctx], Built]) -> Callable[[S, Ctx], Built]:
            if tag in self._factories:
                raise ValueError(f"{self.what} type {tag!r} is registered twice")
            self._factories[tag] = factory
            return factory

        return add

    def factory(self, tag: str, implementation: str) -> Callable[[Any, Ctx], Built]:
        """The factory of ``tag``, registered by the module ``implementation``."""
        if tag not in self._factories:
            importlib.import_module(implementation)  # registers the factory
        if tag not in self._factories:
            raise LookupError(f"{implementation} registers no {self.what} {tag!r}")
        return self._factories[tag]

    def build(self, cfg: Schema, ctx: Ctx) -> Built:
        """The item ``cfg`` describes, by its ``type``'s factory."""
        return self.factory(cfg.type, cfg.implementation)(cfg, ctx)
