"""Key paths of validation errors, as the user wrote the keys: ``sources[0].topic``."""

from __future__ import annotations

from typing import Any, get_args

from monitor.config.base import type_tag
from monitor.config.routes import ReceiverConfig
from monitor.config.sinks import StoreConfig
from monitor.config.sources import SourceConfig

KeyPath = tuple[int | str, ...]


def schemas(union: Any) -> dict[str, Any]:
    """A discriminated union of schemas (``SourceConfig``) -> {its ``type`` tag: schema}."""
    return {type_tag(m): m for m in get_args(get_args(union)[0])}


#: Discriminator tags pydantic inserts into an error's location after a list index.
_TAGS = frozenset(schemas(SourceConfig)) | frozenset(schemas(StoreConfig))
#: ... and after a key holding one of several schemas (``alerts.routes[0].receiver``).
_KEY_TAGS = {"receiver": frozenset(schemas(ReceiverConfig))}


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def key_path(loc: KeyPath) -> KeyPath:
    """An error's location as the user's keys (without the discriminator tags)."""
    out: list[int | str] = []
    for part in loc:
        if isinstance(part, str) and part in _TAGS and out and isinstance(out[-1], int):
            continue  # discriminator tag inserted by pydantic, not a user key
        if out and isinstance(out[-1], str) and part in _KEY_TAGS.get(out[-1], ()):
            continue
        if part == "[key]":
            continue  # the key itself is wrong: its path is the error's
        out.append(part)
    return tuple(out)


def loc(loc: KeyPath) -> str:
    """An error's location as text: ``sources[0].topic`` (``<root>``: the document)."""
    out = ""
    for part in key_path(loc):
        out = out + f"[{part}]" if isinstance(part, int) else join(out, part)
    return out or "<root>"
