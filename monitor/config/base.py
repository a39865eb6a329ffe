"""What every configuration section shares: the frozen model base, the error type, and
the validators several sections use (a readable file, a listen address, a time zone, a
topic template, a vital as a key, per-vital overrides merged over defaults)."""

from __future__ import annotations

import os
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict

from monitor.model import VITALS


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def type_tag(schema: type[BaseModel]) -> str:
    """The ``type`` a schema of ``sources[]`` or ``store`` items stands for."""
    tag: str = get_args(schema.model_fields["type"].annotation)[0]
    return tag


def readable(what: str = "") -> AfterValidator:
    """A file the daemon must be able to read (``what`` names it in the error)."""

    def check(v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read {what}{' ' if what else ''}{v!r}")
        return v

    return AfterValidator(check)


#: A path to a file the daemon reads (a CA, a key, a token): checked at load time.
ReadableFile = Annotated[str | None, readable()]


def first_line(path: str) -> str:
    """A secret file's secret: its first line, without the line break ("" for an empty
    file or one that starts with a line break; never an IndexError). OSError when it
    cannot be read, UnicodeDecodeError when it is not UTF-8."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def secret_in(what: str, min_bytes: int = 1, hint: str = "") -> AfterValidator:
    """A secret file (after :func:`readable`) whose first line is the secret: refused when
    that line is empty or blank (a key anyone can use, a password that is none), or
    shorter than ``min_bytes`` (UTF-8). Read once here, at load time, and not kept; the
    errors name the file, never its content."""

    def check(v: str | None) -> str | None:
        if v is None:
            return v
        try:
            line = first_line(v)
        except UnicodeDecodeError:
            raise ValueError(f"{v!r} ({what}): not UTF-8 text") from None
        except OSError as exc:
            raise ValueError(
                f"cannot read {what} {v!r}: {exc.strerror or type(exc).__name__}"
            ) from None
        if not line.strip():
            raise ValueError(f"{what} (the first line of {v!r}) is empty")
        size = len(line.encode())
        if size < min_bytes:
            raise ValueError(
                f"{what} (the first line of {v!r}) is {size} bytes: at least {min_bytes} "
                f"are needed{hint}"
            )
        return v

    return AfterValidator(check)


def host_port(v: str, example: str) -> str:
    """A ``host:port`` to listen on (port 0: any free one); ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen is host:port, e.g. {example}")
    return v


def is_ward_bed(v: str) -> bool:
    """``icu/7``: a ward and a bed, neither empty."""
    return v.count("/") == 1 and "" not in v.split("/")


def _zone(v: str | None) -> str | None:
    if v is not None:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name: Europe/Paris)") from None
    return v


#: An IANA time zone name, or null (local time).
TimeZone = Annotated[str | None, AfterValidator(_zone)]

_SEGMENT = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


def parse_topic_template(template: str, required: tuple[str, ...] = ("bed",)) -> list[str | None]:
    """``"vitals/{ward}/{bed}/{device}"`` -> ``[literal | None(named)]`` names list.

    Returns one entry per level: the literal text, or the placeholder name wrapped as
    ``"{name}"``. Raises ValueError with a clear message for bad templates.
    """
    if not template or template.startswith("$"):
        raise ValueError("topic template must be non-empty and not start with '$'")
    levels: list[str | None] = []
    names: list[str] = []
    problems: list[str] = []  # all of them, not just the first
    for level in template.split("/"):
        m = _SEGMENT.match(level)
        if m:
            name = m.group(1)
            if name in names:
                problems.append(f"placeholder {{{name}}} appears twice")
            names.append(name)
            levels.append("{" + name + "}")
        elif any(c in level for c in "{}+#"):
            problems.append(
                f"level {level!r}: a level is either literal text or one whole {{name}}; "
                "MQTT wildcards are derived from the placeholders"
            )
        else:
            levels.append(level)
    problems += [f"placeholder {{{name}}} is required" for name in required if name not in names]
    if problems:
        raise ValueError("; ".join(problems))
    return levels


def _vital_key(v: str) -> str:
    if v not in VITALS:
        raise ValueError(f"unknown vital {v!r} (known: {', '.join(sorted(VITALS))})")
    return v


#: A key naming a vital: an unknown one is an error at its own key path
#: (``rules.thresholds.spo3``), next to the errors of the other keys' values.
VitalKey = Annotated[str, AfterValidator(_vital_key)]


def overlay(base: Mapping[str, Any], given: Any, deep: bool = False) -> Any:
    """Per-vital settings ``given`` over ``base``: a vital given replaces only the keys it
    names (``deep``: and, in a key holding a mapping, only the keys that names), ``null``
    switches the vital off (``{"enabled": false}``). Anything but a mapping is returned
    as it is, for pydantic to report."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        return given
    merged: dict[str, Any] = {
        vital: {k: dict(v) if isinstance(v, Mapping) else v for k, v in over.items()}
        for vital, over in base.items()
    }
    for vital, over in given.items():
        if over is None:
            merged[vital] = {"enabled": False}
        elif isinstance(over, Mapping):
            old = merged.get(vital, {})
            merged[vital] = {
                **old,
                **{
                    k: {**old[k], **v}
                    if deep and isinstance(v, Mapping) and isinstance(old.get(k), Mapping)
                    else v
                    for k, v in over.items()
                },
            }
        else:
            merged[vital] = over
    return merged
