"""Logging: one handler on the root logger, set up from ``log:`` and changed on SIGHUP.

* ``human``: ``2026-11-28 12:00:00,123 INFO    vitalmon.engine: message`` (local time).
* ``json``: one object per line, ``{"ts", "level", "logger", "msg"}`` plus ``exc`` (the
  traceback, one JSON string, so still one line), ``stack``, ``suppressed`` and the
  entries of ``extra={"fields": {...}}`` (a field named like a key above gets a ``_``).
* ``auto``: ``json`` when our stream is journald's (``JOURNAL_STREAM`` names its device
  and inode, as systemd documents), ``human`` otherwise.

Under journald every line starts with its syslog priority, ``<3>`` error, ``<4>`` warning,
``<6>`` info, ``<7>`` debug (``<2>`` critical). journald strips the prefix
(``SyslogLevelPrefix=`` defaults to yes), so ``journalctl -p warning`` selects by level,
while the JSON after it keeps the fields and the traceback in one entry. A traceback in
``human`` text would be split into one journal entry per line. The prefix follows the
stream, not the format: ``format: human`` under journald is prefixed as well.

Two filters sit on the handler:

* repeats: the same (logger, level, message template) is written at most once per
  ``repeat_window_s``; the next one written says how many were suppressed. Memory is
  bounded: the least recently seen keys are forgotten (with their counts) beyond
  :data:`MAX_REPEAT_KEYS`.
* redaction: every secret registered with :func:`redact` is written as ``***``, in the
  message, its fields and the traceback. A safety net only: secrets must not be logged.

Levels: the root logger gets ``log.level`` (or the ``--log-level`` override, which holds
for the whole run, reloads included), ``log.levels`` sets loggers below ``vitalmon.``
(``mqtt`` is ``vitalmon.mqtt``). Third-party loggers, and paho through
``vitalmon.mqtt.paho``, stay at warning or above unless ``log.levels`` names
``mqtt.paho``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from monitor.config import LogConfig

#: Loggers of libraries (and paho's, routed below ``vitalmon.``) kept at warning or above.
THIRD_PARTY = ("vitalmon.mqtt.paho", "urllib3", "influxdb_client", "amqtt", "transitions")
#: Distinct (logger, level, template) keys the repeat filter remembers.
MAX_REPEAT_KEYS = 1024
#: Secrets shorter than this are not replaced: "***" for every "a" would wreck the log.
MIN_SECRET_LEN = 4
#: JSON keys that ``fields`` cannot override.
RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack", "suppressed"})

_SUPPRESSED_ATTR = "vitalmon_suppressed"


def priority(levelno: int) -> int:
    """Python level -> syslog priority (journald's ``<N>`` prefix)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_journald(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd names in ``JOURNAL_STREAM``."""
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


# -------------------------------------------------------------------------- redaction

_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None
_secret_lock = threading.Lock()


def redact(secret: str) -> None:
    """Write ``secret`` as ``***`` wherever it would appear in our log output."""
    global _secret_re  # noqa: PLW0603  # one process-wide set, swapped atomically
    if len(secret) < MIN_SECRET_LEN:
        return
    with _secret_lock:
        _secrets.add(secret)
        ordered = sorted(_secrets, key=len, reverse=True)  # the longest match first
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _secret_re
    return text if pattern is None else pattern.sub("***", text)


# -------------------------------------------------------------------------- repeats


class RepeatFilter(logging.Filter):
    """At most one record per (logger, level, message text) per ``window_s``; the next
    one passed carries the number suppressed meanwhile. ``window_s`` 0 passes all.

    The key is the formatted text, not the template: lines that differ (every error of
    a refused reload) are all kept; only the very same line repeated is folded. A line
    that must appear each time (one per connection retry) is logged with
    ``extra={"every_time": True}``."""

    def __init__(
        self,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_REPEAT_KEYS,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        #: key -> [time last passed, suppressed since]; most recently seen last.
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()  # Handler.handle calls filters outside its lock

    def __len__(self) -> int:
        return len(self._seen)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window_s <= 0 or getattr(record, "every_time", False):
            return True  # (a record logged with extra={"every_time": True}: never folded)
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: the template stands for it
            text = str(record.msg)
        key = (record.name, record.levelno, text)
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None:
                self._seen.move_to_end(key)
                if now - entry[0] < self.window_s:
                    entry[1] += 1
                    return False
                setattr(record, _SUPPRESSED_ATTR, int(entry[1]))
                entry[0], entry[1] = now, 0
                return True
            self._seen[key] = [now, 0]
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        return True


def _suppressed(record: logging.LogRecord) -> int:
    n = getattr(record, _SUPPRESSED_ATTR, 0)
    return n if isinstance(n, int) else 0


def _suffix(n: int) -> str:
    if n <= 0:
        return ""
    return f" ({n} similar message{'s' if n != 1 else ''} suppressed)"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    f = getattr(record, "fields", None)
    return dict(f) if isinstance(f, Mapping) else {}


# -------------------------------------------------------------------------- formatters


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """Control characters (line breaks, NUL, ESC, ...) written as escapes: ``\\n``,
    ``\\x00``. Input text (device names, topics, payload fragments) never makes a log
    line of its own or a terminal sequence."""
    return text.translate(_CONTROLS)


class HumanFormatter(logging.Formatter):
    """``2026-11-28 12:00:00,123 INFO    vitalmon.engine: message [k=v]``."""

    def __init__(self, prefix: bool = False) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if fields := _fields(record):
            msg += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        # one record, one line: a device name "a\nb" from a payload must not forge a line
        # (control characters as escapes; a traceback below is vitalmon's own text)
        msg = escape_controls(msg) + _suffix(_suppressed(record))
        text = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {msg}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        text = scrub(text)
        return f"<{priority(record.levelno)}>{text}" if self.prefix else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, prefix: bool = False) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        n = _suppressed(record)
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage() + _suffix(n)),
        }
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = scrub(record.exc_text)
        if record.stack_info:
            out["stack"] = scrub(self.formatStack(record.stack_info))
        if n:
            out["suppressed"] = n
        for k, v in _fields(record).items():
            name = scrub(str(k))
            out["_" + name if name in RESERVED else name] = _clean(v)
        line = json.dumps(out, ensure_ascii=False, default=str)
        return f"<{priority(record.levelno)}>{line}" if self.prefix else line


def _clean(v: Any) -> Any:
    """A field value for JSON, with secrets scrubbed from every string in it."""
    if isinstance(v, str):
        return scrub(v)
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, Mapping):
        return {scrub(str(k)): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_clean(x) for x in v]
    return scrub(str(v))


# -------------------------------------------------------------------------- set-up


@dataclass
class _State:
    handler: logging.Handler
    repeats: RepeatFilter
    journald: bool
    override: str | None
    #: Loggers whose level we set, to reset those a reload no longer names.
    touched: set[str] = field(default_factory=set)


_state: _State | None = None


def _level(name: str) -> int:
    level = logging.getLevelNamesMapping().get(name.upper())
    if level is None:
        raise ValueError(f"unknown log level {name!r}")
    return level


def _formatter(cfg: LogConfig, journald: bool) -> logging.Formatter:
    fmt = cfg.format
    if fmt == "auto":
        fmt = "json" if journald else "human"
    return JsonFormatter(prefix=journald) if fmt == "json" else HumanFormatter(prefix=journald)


def _apply_levels(state: _State, cfg: LogConfig) -> None:
    root_level = _level(state.override or cfg.level)
    logging.getLogger().setLevel(root_level)
    wanted: dict[str, int] = {}
    for name in THIRD_PARTY:
        wanted[name] = max(logging.WARNING, root_level)
    for key, name in cfg.levels.items():
        wanted["vitalmon." + key.strip(".")] = _level(name)
    for name in state.touched - wanted.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, lvl in wanted.items():
        logging.getLogger(name).setLevel(lvl)
    state.touched = set(wanted)


def setup(
    cfg: LogConfig,
    *,
    level_override: str | None = None,
    stream: TextIO | None = None,
    env: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Install the handler on the root logger (replacing one an earlier call installed;
    other handlers, e.g. pytest's, are left alone). ``stream`` defaults to the current
    ``sys.stderr``; ``clock`` times the repeat window (tests pass a fake one)."""
    global _state  # noqa: PLW0603  # logging is process-wide state
    out = sys.stderr if stream is None else stream
    root = logging.getLogger()
    if _state is not None:
        root.removeHandler(_state.handler)
    journald = under_journald(out, env)
    handler = logging.StreamHandler(out)
    repeats = RepeatFilter(cfg.repeat_window_s, clock=clock)
    handler.addFilter(repeats)
    handler.setFormatter(_formatter(cfg, journald))
    touched = _state.touched if _state is not None else set()
    _state = _State(handler, repeats, journald, level_override, touched)
    _apply_levels(_state, cfg)
    root.addHandler(handler)


def reconfigure(cfg: LogConfig) -> None:
    """SIGHUP: apply levels, per-component levels, repeat window and format to the
    handler in place. The ``level_override`` given to :func:`setup` still wins."""
    if _state is None:
        setup(cfg)
        return
    _state.repeats.window_s = cfg.repeat_window_s
    _state.handler.setFormatter(_formatter(cfg, _state.journald))
    _apply_levels(_state, cfg)


def reset() -> None:
    """Remove our handler, reset the levels we set, forget registered secrets (tests)."""
    global _state, _secret_re  # noqa: PLW0603
    if _state is not None:
        logging.getLogger().removeHandler(_state.handler)
        for name in _state.touched:
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
        _state = None
    with _secret_lock:
        _secrets.clear()
        _secret_re = None
