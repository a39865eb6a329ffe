"""monitor.logs: formats, journald detection and priority prefix, levels, repeats, redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor import logs
from monitor.config import LogConfig

HUMAN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) +([\w.]+): (.*)$")


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    logs.reset()
    yield
    logs.reset()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(**kw: object) -> LogConfig:
    return LogConfig.model_validate({"format": "human", "repeat_window_s": 0, **kw})


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def records(buf: io.StringIO) -> list[dict[str, object]]:
    out = []
    for line in lines(buf):
        obj = json.loads(line)
        assert isinstance(obj, dict)
        out.append(obj)
    return out


def journal_env(f: object) -> dict[str, str]:
    st = os.fstat(f.fileno())  # type: ignore[attr-defined]
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


# ------------------------------------------------------------------------ formats


def test_human_format() -> None:
    buf = io.StringIO()
    logs.setup(cfg(), stream=buf)
    logging.getLogger("vitalmon.engine").info("bed %s: %d readings", "7", 3)
    logging.getLogger("vitalmon.engine").warning("careful", extra={"fields": {"bed": "7"}})
    (first, second) = lines(buf)
    m = HUMAN.match(first)
    assert m is not None
    assert m.groups() == ("INFO", "vitalmon.engine", "bed 7: 3 readings")
    assert " INFO    vitalmon.engine: " in first  # levelname padded to 7 as before
    assert second.endswith("WARNING vitalmon.engine: careful [bed=7]")


def test_json_format() -> None:
    buf = io.StringIO()
    logs.setup(cfg(format="json"), stream=buf)
    log = logging.getLogger("vitalmon.engine")
    log.info("bed %s", "7", extra={"fields": {"bed": "7", "n": 3, "msg": "clash"}})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    assert len(lines(buf)) == 2  # the traceback stays on its line
    a, b = records(buf)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(a["ts"]))
    assert a["level"] == "info"
    assert a["logger"] == "vitalmon.engine"
    assert a["msg"] == "bed 7"
    assert a["bed"] == "7"
    assert a["n"] == 3
    assert a["_msg"] == "clash"  # a field cannot overwrite a reserved key
    assert "exc" not in a
    assert b["level"] == "error"
    assert "RuntimeError: boom" in str(b["exc"])
    assert "Traceback" in str(b["exc"])


def test_setup_twice_keeps_one_handler() -> None:
    buf = io.StringIO()
    logs.setup(cfg(), stream=buf)
    logs.setup(cfg(), stream=buf)
    logging.getLogger("vitalmon.x").warning("once")
    assert len(lines(buf)) == 1


# ------------------------------------------------------------------------ journald


def test_journald_detected_on_a_file(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+", encoding="utf-8") as f:
        logs.setup(cfg(format="auto"), stream=f, env=journal_env(f))
        logging.getLogger("vitalmon.engine").warning("spo2 %d", 85)
        f.flush()
        f.seek(0)
        (line,) = f.read().splitlines()
    assert line.startswith("<4>{")
    obj = json.loads(line[3:])
    assert obj["msg"] == "spo2 85"
    assert obj["level"] == "warning"


def test_journald_detected_on_a_pipe() -> None:
    r, w = os.pipe()
    with os.fdopen(r, encoding="utf-8") as rf, os.fdopen(w, "w", encoding="utf-8") as wf:
        logs.setup(cfg(format="auto"), stream=wf, env=journal_env(wf))
        logging.getLogger("vitalmon.engine").error("down")
        wf.flush()
        line = rf.readline()
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["msg"] == "down"


def test_journal_stream_of_another_file_is_not_journald(tmp_path: Path) -> None:
    with (tmp_path / "other").open("w") as other, (tmp_path / "ours").open("w+") as f:
        assert not logs.under_journald(f, journal_env(other))
        assert logs.under_journald(f, journal_env(other) | journal_env(f))
        assert not logs.under_journald(f, {})
        assert not logs.under_journald(f, {"JOURNAL_STREAM": "garbage"})
        assert not logs.under_journald(io.StringIO(), journal_env(f))  # no fileno
        logs.setup(cfg(format="auto"), stream=f, env=journal_env(other))
        logging.getLogger("vitalmon.engine").warning("plain")
        f.flush()
        f.seek(0)
        assert HUMAN.match(f.read().splitlines()[0])


def test_human_under_journald_is_prefixed_too(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as f:
        logs.setup(cfg(format="human"), stream=f, env=journal_env(f))
        logging.getLogger("vitalmon.engine").info("hello")
        f.flush()
        f.seek(0)
        line = f.read().splitlines()[0]
    assert line.startswith("<6>")
    assert HUMAN.match(line[3:])


@pytest.mark.parametrize(
    ("level", "n"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
    ],
)
def test_priority_prefix(tmp_path: Path, level: int, n: int) -> None:
    assert logs.priority(level) == n
    with (tmp_path / "journal").open("w+") as f:
        logs.setup(cfg(format="json", level="debug"), stream=f, env=journal_env(f))
        logging.getLogger("vitalmon.engine").log(level, "x")
        f.flush()
        f.seek(0)
        assert f.read().startswith(f"<{n}>{{")


# ------------------------------------------------------------------------ levels


def test_levels_per_component_and_third_party() -> None:
    buf = io.StringIO()
    c = cfg(level="info", levels={"mqtt": "debug", "source.serial": "error"})
    logs.setup(c, stream=buf)
    logging.getLogger("vitalmon.mqtt").debug("mqtt debug")
    logging.getLogger("vitalmon.mqtt.session").debug("child debug")
    logging.getLogger("vitalmon.engine").debug("engine debug")
    logging.getLogger("vitalmon.engine").info("engine info")
    logging.getLogger("vitalmon.source.serial").warning("serial warning")
    logging.getLogger("vitalmon.source.serial").error("serial error")
    logging.getLogger("vitalmon.mqtt.paho").info("paho info")
    logging.getLogger("vitalmon.mqtt.paho").warning("paho warning")
    logging.getLogger("urllib3").info("urllib3 info")
    got = [HUMAN.match(x).group(3) for x in lines(buf)]  # type: ignore[union-attr]
    assert got == ["mqtt debug", "child debug", "engine info", "serial error", "paho warning"]


def test_paho_when_configured_and_override() -> None:
    buf = io.StringIO()
    logs.setup(cfg(level="error", levels={"mqtt.paho": "debug"}), stream=buf, level_override="info")
    logging.getLogger("vitalmon.mqtt.paho").debug("paho debug")
    logging.getLogger("vitalmon.engine").info("engine info")
    logging.getLogger("urllib3").info("urllib3 info")
    got = [HUMAN.match(x).group(3) for x in lines(buf)]  # type: ignore[union-attr]
    assert got == ["paho debug", "engine info"]
    assert logging.getLogger().level == logging.INFO


def test_third_party_follows_a_stricter_root() -> None:
    logs.setup(cfg(level="error"), stream=io.StringIO())
    assert logging.getLogger("urllib3").level == logging.ERROR
    assert logging.getLogger("vitalmon.mqtt.paho").level == logging.ERROR


def test_reconfigure_in_place() -> None:
    buf = io.StringIO()
    clock = FakeClock()
    logs.setup(cfg(levels={"mqtt": "debug"}), stream=buf, clock=clock, level_override=None)
    n_handlers = len(logging.getLogger().handlers)
    logs.reconfigure(cfg(level="warning", levels={"engine": "debug"}, repeat_window_s=10))
    assert len(logging.getLogger().handlers) == n_handlers
    assert logging.getLogger("vitalmon.mqtt").level == logging.NOTSET  # no longer named
    assert logging.getLogger("vitalmon.engine").level == logging.DEBUG
    assert logging.getLogger().level == logging.WARNING
    log = logging.getLogger("vitalmon.engine")
    log.debug("again")
    log.debug("again")  # the new window applies
    logging.getLogger("vitalmon.mqtt").info("hidden")
    assert len(lines(buf)) == 1


def test_reconfigure_keeps_the_override() -> None:
    logs.setup(cfg(level="info"), stream=io.StringIO(), level_override="debug")
    logs.reconfigure(cfg(level="error"))
    assert logging.getLogger().level == logging.DEBUG


def test_reset_restores_levels() -> None:
    logs.setup(cfg(levels={"mqtt": "debug"}), stream=io.StringIO())
    logs.reset()
    assert logging.getLogger("vitalmon.mqtt").level == logging.NOTSET
    assert logging.getLogger("vitalmon.mqtt.paho").level == logging.NOTSET


# ------------------------------------------------------------------------ repeats


def test_repeats_suppressed_then_summarised() -> None:
    buf = io.StringIO()
    clock = FakeClock()
    logs.setup(cfg(repeat_window_s=10), stream=buf, clock=clock)
    log = logging.getLogger("vitalmon.source.mqtt")
    log.warning("bad payload from %s", "bed 1")
    for _ in range(5):
        clock.t += 1
        log.warning("bad payload from %s", "bed 1")  # the very same line
    log.warning("bad payload from %s", "bed 2")  # another text: its own key
    log.error("bad payload from %s", "bed 1")  # another level: its own key
    logging.getLogger("vitalmon.other").warning("bad payload from %s", "bed 1")  # other logger
    clock.t += 5  # 10 s after the first
    log.warning("bad payload from %s", "bed 1")
    clock.t += 1
    log.warning("bad payload from %s", "bed 1")  # inside the new window
    clock.t += 10
    log.warning("bad payload from %s", "bed 1")  # one suppressed since
    clock.t += 10
    log.warning("bad payload from %s", "bed 1")  # nothing suppressed since: no suffix
    got = [HUMAN.match(x).group(3) for x in lines(buf)]  # type: ignore[union-attr]
    assert got == [
        "bad payload from bed 1",
        "bad payload from bed 2",
        "bad payload from bed 1",
        "bad payload from bed 1",
        "bad payload from bed 1 (5 similar messages suppressed)",
        "bad payload from bed 1 (1 similar message suppressed)",
        "bad payload from bed 1",
    ]


def test_repeat_count_is_a_json_field() -> None:
    buf = io.StringIO()
    clock = FakeClock()
    logs.setup(cfg(format="json", repeat_window_s=10), stream=buf, clock=clock)
    log = logging.getLogger("vitalmon.engine")
    for _ in range(4):
        log.warning("same")
    clock.t += 10
    log.warning("same")
    a, b = records(buf)
    assert "suppressed" not in a
    assert b["suppressed"] == 3
    assert b["msg"] == "same (3 similar messages suppressed)"


def test_window_zero_is_off() -> None:
    buf = io.StringIO()
    logs.setup(cfg(repeat_window_s=0), stream=buf)
    for _ in range(3):
        logging.getLogger("vitalmon.engine").warning("same")
    assert len(lines(buf)) == 3


def test_repeat_keys_are_bounded_lru() -> None:
    clock = FakeClock()
    f = logs.RepeatFilter(10, clock=clock, max_keys=3)

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("vitalmon.x", logging.WARNING, __file__, 1, msg, None, None)

    for m in ("a", "b", "c"):
        assert f.filter(rec(m))
    assert not f.filter(rec("a"))  # a is now the most recently seen
    assert f.filter(rec("d"))  # evicts b, the least recently seen
    assert len(f) == 3
    assert f.filter(rec("b"))  # forgotten, so passed again (evicting c)
    assert not f.filter(rec("a"))
    assert not f.filter(rec("d"))
    for i in range(100):
        f.filter(rec(f"k{i}"))
    assert len(f) == 3


# ------------------------------------------------------------------------ redaction


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_registered_secret_is_redacted(fmt: str) -> None:
    buf = io.StringIO()
    logs.setup(cfg(format=fmt), stream=buf)
    logs.redact("hunter2-pw")
    logs.redact("e")  # too short to replace: ignored
    log = logging.getLogger("vitalmon.mqtt")
    log.warning("connecting with %s", "hunter2-pw", extra={"fields": {"pw": "hunter2-pw"}})
    try:
        raise ValueError('bad password "hunter2-pw"')
    except ValueError:
        log.exception("auth failed")
    out = buf.getvalue()
    assert "hunter2" not in out
    assert out.count("***") >= 3
    assert "ValueError" in out  # the short one did not wreck the log
    if fmt == "json":
        a, b = records(buf)
        assert a["msg"] == "connecting with ***"
        assert a["pw"] == "***"
        assert 'ValueError: bad password "***"' in str(b["exc"])


def test_longest_secret_first() -> None:
    logs.redact("abcd")
    logs.redact("abcdefgh")
    assert logs.scrub("k=abcdefgh;j=abcd") == "k=***;j=***"


def test_lines_marked_every_time_are_never_folded() -> None:
    buf = io.StringIO()
    logs.setup(cfg(repeat_window_s=10), stream=buf, clock=FakeClock())
    log = logging.getLogger("vitalmon.mqtt")
    for _ in range(3):  # one line per connection retry, even when the text repeats
        log.warning("refused (retrying in %.1f s)", 1.5, extra={"every_time": True})
    assert len(lines(buf)) == 3
