"""An HL7 v2 message as python-hl7 parses it, read with its own separators and escape
character (:class:`_Msg`), and the text helpers the parser, the alarms and the ACK share:
names fit for MQTT topics, clipped texts, HL7 escaping."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import hl7

from monitor.hl7v2 import escape as _escape

# python-hl7 logs the whole field it cannot unescape (an empty ``\\`` sequence): patient
# identifiers, in a log that must carry none. Its logger says nothing else.
hl7.util.logger.addFilter(lambda _record: False)

#: OBX-11 result statuses that mean "no value here, on purpose": ignored.
_IGNORED_STATUS: Final = frozenset({"N", "I", "D", "W"})
#: OBX-11 "results cannot be obtained for this observation": no sensor.
_NO_RESULT_STATUS: Final = "X"

_UNSAFE = re.compile(r"[/+#\x00-\x1f\x7f]")
_MAX_NAME = 64


#: A segment as python-hl7 parses it (``hl7.Segment``; the library is untyped).
_Seg = Any


@dataclass(slots=True)
class _Msg:
    """A message parsed by python-hl7, whose separators and escape character are those of
    its MSH-1 and MSH-2 (any encoding characters, not only ``|^~\\&``).

    Fields go by their HL7 number (``seg[0]`` is the name; for MSH, 1 is the field
    separator and 2 the encoding characters, as python-hl7 numbers them). Every text read
    through here is unescaped by :meth:`hl7.Message.unescape` with the message's own
    encoding characters (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\.br\\`` and the other
    formatting sequences, ``\\Xhh..\\``; see :class:`_Unescapes`): nothing is split or
    unescaped by hand.
    """

    message: Any  #: the ``hl7.Message``
    segments: list[_Seg]  #: its segments, MSH first
    standard_encoding: bool  #: MSH-1 and MSH-2 are ``|`` and ``^~\\&``
    unescapes: _Unescapes
    #: (id of the segment, field) -> :meth:`comps` (fields are read several times)
    _comps: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    @staticmethod
    def name(seg: _Seg) -> str:
        return str(seg[0]).strip().upper()

    def tree(self, seg: _Seg, n: int) -> list[list[list[str]]]:
        """Field ``n`` as python-hl7 parsed it: repetitions -> components -> escaped
        subcomponents (one empty repetition when the field is absent)."""
        if n >= len(seg):
            return [[[""]]]
        return [[[str(s) for s in _parts(c)] for c in _parts(r)] for r in _parts(seg[n])]

    def unescape(self, raw: str) -> str:
        """One subcomponent's text: :meth:`hl7.Message.unescape`."""
        return str(self.message.unescape(raw, self.unescapes))

    def comps(self, seg: _Seg, n: int) -> list[str]:
        """The components of field ``n`` (first repetition), each unescaped (its
        subcomponents, if any, joined by ``&``)."""
        key = (id(seg), n)
        got = self._comps.get(key)
        if got is None:
            got = self._comps[key] = [self._comp(c) for c in self.tree(seg, n)[0]]
        return list(got)

    def value(self, seg: _Seg, n: int) -> str:
        """The first component of field ``n`` (first repetition), unescaped."""
        return self.comps(seg, n)[0]

    def firsts(self, seg: _Seg, n: int) -> list[str]:
        """The first component of every repetition of field ``n``, unescaped."""
        return [self._comp(r[0]) for r in self.tree(seg, n)]

    def text(self, seg: _Seg, n: int) -> str:
        """Field ``n`` (first repetition) as text: a TX/ST/FT value. Its components (a
        sender that did not escape ``^``) are joined by ``^``."""
        return "^".join(self.comps(seg, n))

    def first_sub(self, subs: list[str]) -> str:
        """The first non-empty subcomponent of a component (escaped, from :meth:`tree`)."""
        return next((t for t in (self.unescape(s).strip() for s in subs) if t), "")

    def standard(self, seg: _Seg, n: int) -> str:
        """Field ``n`` (first repetition) in standard encoding (``^``, ``&``, ``\\``): to
        echo it in the ACK, or to look it up in ``beds``. A message in standard encoding is
        echoed as it came; another one is unescaped and escaped again."""
        comps = self.tree(seg, n)[0]
        if self.standard_encoding:
            return "^".join("&".join(c) for c in comps)
        return "^".join("&".join(_escape(self.unescape(s)) for s in c) for c in comps)

    def status(self, seg: _Seg) -> str:
        """OBX-11, the result status (upper case)."""
        return self.value(seg, 11).strip().upper()

    def ignored(self, seg: _Seg) -> bool:
        """OBX-11 says there is no value here, on purpose (:data:`_IGNORED_STATUS`)."""
        return self.status(seg) in _IGNORED_STATUS

    def segment(self, name: str) -> _Seg | None:
        """The first segment called ``name``."""
        return next((s for s in self.segments if self.name(s) == name), None)

    def _comp(self, subs: list[str]) -> str:
        return "&".join(self.unescape(s) for s in subs)


def _parts(node: Any) -> list[Any]:
    """A python-hl7 container's parts. python-hl7 does not nest a text without a deeper
    separator (``Field(["x"])`` rather than a repetition of a component): a bare string
    is its own only part."""
    if isinstance(node, str):
        return [node]
    return list(node) or [""]


class _Unescapes:
    """The ``app_map`` given to :meth:`hl7.Message.unescape`: the escape sequences its
    defaults get wrong. It keeps ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (the message's own
    separators and escape character), ``\\.br\\ \\.sp\\ \\.ce\\`` (line breaks),
    ``\\.in\\ \\.ti\\ \\.sk\\`` (spaces), ``\\.fi\\ \\.nf\\`` (nothing), and ``\\.sp\\``,
    ``\\.in\\``, ``\\.ti\\``, ``\\.sk\\`` with a count of at most 999; here:

    * ``\\H\\``, ``\\N\\`` (highlighting on and off) are nothing (python-hl7: ``_``);
    * ``\\Xhhhh..\\`` is bytes in the message's character set (how its frame decoded:
      UTF-8, else ISO 8859-1), not one character per byte;
    * anything else (another formatting command, a count over 999 that would make
      megabytes of a few bytes, ``\\C..\\``/``\\M..\\`` character set switches, ``\\Z..\\``
      local escapes, malformed hex) is dropped (a formatting command becomes one space),
      where python-hl7 would log the field (patient data) or raise.
    """

    __slots__ = ("encoding",)

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def __bool__(self) -> bool:
        return True

    def __contains__(self, seq: object) -> bool:
        return (
            isinstance(seq, str) and seq not in _LIB_ESCAPES and _LIB_COUNTED.fullmatch(seq) is None
        )

    def __getitem__(self, seq: str) -> str:
        if seq[:1] == "X" and _HEX.fullmatch(seq[1:]):
            data = bytes.fromhex(seq[1:])
            try:
                return data.decode(self.encoding)
            except UnicodeDecodeError:
                return data.decode("latin-1")
        return " " if seq.startswith(".") else ""


#: Escape sequences python-hl7 unescapes well by itself.
_LIB_ESCAPES: Final = frozenset(
    {"F", "S", "T", "R", "E", ".br", ".sp", ".fi", ".nf", ".in", ".ti", ".sk", ".ce"}
)
_LIB_COUNTED: Final = re.compile(r"\.(?:sp|in|ti|sk) ?[+-]?[0-9]{1,3}")
_HEX: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def _decode(frame: bytes) -> tuple[str, str]:
    try:
        return frame.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return frame.decode("latin-1"), "latin-1"  # ISO 8859-1 (Philips 8859/1)


def _split(text: str, encoding: str) -> _Msg | None:
    """Text -> segments with CR, LF or CRLF ends, parsed by python-hl7 (separators and
    escape character from MSH-1 and MSH-2); None: no MSH."""
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        return None
    lines = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]
    try:
        parsed = hl7.parse("\r".join(lines))
    except (hl7.ParseException, IndexError, ValueError):
        return None
    if len(str(parsed.separators)) < 5:
        return None
    segments = list(parsed)
    if not segments or _Msg.name(segments[0]) != "MSH" or len(segments[0]) < 3:
        return None
    standard = str(segments[0][1]) == "|" and str(segments[0][2]) == "^~\\&"
    return _Msg(parsed, segments, standard, _Unescapes(encoding))


def _first_nonempty(components: list[str]) -> str:
    return next((c.strip() for c in components if c.strip()), "")


def _clean(text: str) -> str:
    """A name fit for an MQTT topic level and a log line."""
    return _UNSAFE.sub("_", text.strip())[:_MAX_NAME].strip()


def _clip(text: str, n: int = 40) -> str:
    return _UNSAFE.sub("_", text)[:n]
