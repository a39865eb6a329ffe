"""MQTT topics as NATS subjects, and the stream's partitioning transform. Pure.

The NATS server turns a device's MQTT topic into a subject: ``/`` becomes ``.`` and a
``.`` inside a level becomes ``//`` (``vitals/icu/7/MX800.ecg`` ->
``vitals.icu.7.MX800//ecg``). The capture session publishes each message on
``<prefix>.in.<subject>``; the stream rewrites that, as it stores it, to
``<prefix>.p.<n>.<subject>``, where ``n`` is NATS's own ``partition(P, ward, bed)`` of
the topic's ward and bed levels: one bed is always in one partition, whatever the
device, and the mapping is the server's, not ours.
"""

from __future__ import annotations

from monitor.config import parse_topic_template


def topic_to_subject(topic: str) -> str:
    """``vitals/icu/7/MX800.ecg`` -> ``vitals.icu.7.MX800//ecg`` (ValueError: a topic
    NATS cannot carry: an empty level, a space, a wildcard)."""
    levels = topic.split("/")
    for lvl in levels:
        if not lvl or any(c in lvl for c in " \t\r\n*>+#"):
            raise ValueError(f"topic {topic!r} has a level NATS cannot carry: {lvl!r}")
    return ".".join(lvl.replace(".", "//") for lvl in levels)


def subject_to_topic(subject: str) -> str:
    """The inverse of :func:`topic_to_subject`."""
    return "/".join(tok.replace("//", ".") for tok in subject.split("."))


def partition_transform(template: str, prefix: str, partitions: int) -> tuple[str, str]:
    """The stream's subject transform ``(source, destination)`` for a topic template:
    ``vitals/{ward}/{bed}/{device}``, prefix ``vitalmon``, 8 partitions ->
    ``vitalmon.in.vitals.*.*.*`` -> ``vitalmon.p.{{partition(8,1,2)}}.vitals.
    {{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}`` (ward and bed decide the partition;
    a template without ``{ward}``: the bed alone)."""
    levels = parse_topic_template(template)
    src: list[str] = [prefix, "in"]
    dst: list[str] = []
    keys: list[int] = []
    n = 0
    for lvl in levels:
        if lvl is not None and lvl.startswith("{"):
            n += 1
            src.append("*")
            dst.append(f"{{{{wildcard({n})}}}}")
            if lvl in ("{ward}", "{bed}"):
                keys.append(n)
        else:
            assert lvl is not None
            src.append(topic_to_subject(lvl))
            dst.append(topic_to_subject(lvl))
    part = f"{{{{partition({partitions},{','.join(map(str, keys))})}}}}"
    return ".".join(src), ".".join([prefix, "p", part, *dst])


def partition_filter(prefix: str, n: int) -> str:
    """The subjects of partition ``n``: a consumer's filter."""
    return f"{prefix}.p.{n}.>"


def captured_subject(prefix: str, topic: str) -> str:
    """Where the capture session publishes a device's message."""
    return f"{prefix}.in.{topic_to_subject(topic)}"


def stored_topic(prefix: str, subject: str) -> tuple[int, str]:
    """A stored message's ``<prefix>.p.<n>.<subject>`` -> (n, MQTT topic)."""
    head = f"{prefix}.p."
    if not subject.startswith(head):
        raise ValueError(f"subject {subject!r} is not a partition subject of {prefix!r}")
    n, _, rest = subject[len(head) :].partition(".")
    return int(n), subject_to_topic(rest)


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def bed_partition(template: str, ward: str, bed: str, partitions: int) -> int:
    """The partition the stream's transform files a bed under, computed here as the
    server does (``partition(P, ...)``: FNV-1a 32 of the key levels' subject tokens, one
    after the other, modulo P): an instance knows a bed's partition before it has read
    any of its messages (an admitted bed that has not sent yet, an acknowledgement's
    alert). Checked against the server in tests/test_jetstream.py."""
    key = b""
    for lvl in parse_topic_template(template):
        if lvl == "{ward}":
            key += topic_to_subject(ward).encode()
        elif lvl == "{bed}":
            key += topic_to_subject(bed).encode()
    return _fnv32a(key) % partitions


def kv_token(text: str) -> str:
    """``text`` as one KV key token (letters, digits, ``-`` and ``_`` kept; every other
    byte of its UTF-8 as ``=XX``): reversible, and never a ``.`` or a wildcard."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in "-_"):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "".join(out) or "="


def kv_untoken(part: str) -> str:
    """The inverse of :func:`kv_token`."""
    if part == "=":
        return ""
    raw = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "=":
            raw.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += part[i].encode()
            i += 1
    return raw.decode()
