"""The alert lifecycle has one owner, the engine.

Acknowledgements come to it in batches (``Batch.acks``) and are applied in queue order,
each answered through its ``outcome``; escalations and re-notifications are taken at a
batch's clock ``tick``; technical alarms raised outside the rules come as ``alarms`` and
go through the lifecycle there. Everything else only reads the lifecycle: a check of
the source tree keeps it so.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from engine_sinks import Recorder

from monitor.config import AlertsConfig, RulesConfig
from monitor.engine import Engine
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.system import SystemAlarms
from monitor.model import AlertEvent, AlertState, DeviceAlarm, DeviceAlarmReport, Priority
from monitor.pipeline import Ack, Batch, UnknownAlert

ROOT = Path(__file__).resolve().parent.parent / "monitor"
#: What a module outside the engine may call on the lifecycle (it only reads).
READ_ONLY = {"active", "due"}
T0 = 1764324000.0
INOP = DeviceAlarm("Leads Off", Priority.MEDIUM, "technical", "Leads Off", "HardInop")
BRADY = DeviceAlarm("xBrady", Priority.MEDIUM, "device", "**xBrady 42<45", "YellowAlarm")


def _report(ts: float, *alarms: DeviceAlarm) -> DeviceAlarmReport:
    return DeviceAlarmReport(ts, "icu", "7", "BX40", alarms, None)


def _uses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: lifecycle.<name>`` of every use of an attribute of something called
    ``lifecycle`` (``x.lifecycle.tick()``, ``lifecycle.cfg = ...``) that is not a read."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name == "lifecycle" and node.attr not in READ_ONLY:
            found.append(f"{path.relative_to(root.parent)}:{node.lineno}: lifecycle.{node.attr}")
    return found


def test_only_the_engine_changes_the_lifecycle() -> None:
    outside = [p for p in sorted(ROOT.rglob("*.py")) if p.parent != ROOT / "engine"]
    assert len(outside) > 50
    wrong = [u for p in outside for u in _uses(p)]
    assert not wrong, "the lifecycle changed outside the engine:\n" + "\n".join(wrong)


def test_the_ownership_check_sees_a_change(tmp_path: Path) -> None:
    probe = tmp_path / "monitor" / "reload.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "def f(d, lifecycle):\n"
        "    d.lifecycle.cfg = 1\n"
        "    n = len(d.lifecycle.active())\n"
        "    return lifecycle.observe(n), d.lifecycle.due()\n"
    )
    assert _uses(probe, tmp_path / "monitor") == [
        "monitor/reload.py:2: lifecycle.cfg",
        "monitor/reload.py:4: lifecycle.observe",
    ]


def test_the_engine_applies_acknowledgements_and_ticks_in_queue_order() -> None:
    clock = [5000.0]
    lifecycle = Lifecycle(AlertsConfig(escalate_after_s=30, renotify_s=0), clock=lambda: clock[0])
    sink = Signalling()
    engine = Engine(RulesConfig(), [sink], lifecycle=lifecycle)

    async def main() -> tuple[object, ...]:
        task = asyncio.create_task(engine.run())
        loop = asyncio.get_running_loop()
        await engine.put(Batch([], device_alarms=[_report(T0, BRADY, INOP)]))
        first: asyncio.Future[AlertEvent | None] = loop.create_future()
        again: asyncio.Future[AlertEvent | None] = loop.create_future()
        unknown: asyncio.Future[AlertEvent | None] = loop.create_future()
        await engine.put(Batch([], acks=[Ack("pending", "kim", None, unknown)]))
        # the alert ids are only known once the report is evaluated
        await asyncio.wait_for(sink.wait_for(2), 5)
        brady, inop = sink.events
        await engine.put(Batch([], acks=[Ack(brady.id, "kim", "kim", first)]))
        await engine.put(Batch([], acks=[Ack(brady.id, "lee", None, again)]))
        acked = await asyncio.wait_for(first, 5)
        twice = await asyncio.wait_for(again, 5)
        with pytest.raises(UnknownAlert):
            await asyncio.wait_for(unknown, 5)
        clock[0] += 31  # escalation due for the unacknowledged INOP only
        assert lifecycle.due()
        await engine.put(Batch([], tick=clock[0]))
        engine.stop()
        await asyncio.wait_for(task, 5)
        return brady, inop, acked, twice

    brady, inop, acked, twice = asyncio.run(main())
    assert isinstance(brady, AlertEvent) and isinstance(inop, AlertEvent)
    assert isinstance(acked, AlertEvent)
    assert (acked.id, acked.state, acked.seq) == (brady.id, AlertState.ACKNOWLEDGED, 2)
    assert acked.extra["ack_by"] == "kim" and acked.extra["ack_identity"] == "kim"
    assert twice is None  # acknowledged before: nothing published
    escalated = sink.events[-1]
    assert (escalated.id, escalated.priority, escalated.extra["action"]) == (
        inop.id,
        Priority.HIGH,
        "escalate",
    )
    # published in queue order: raise, raise, acknowledgement, escalation
    assert [(e.id, e.seq) for e in sink.events] == [
        (brady.id, 1),
        (inop.id, 1),
        (brady.id, 2),
        (inop.id, 2),
    ]
    assert not lifecycle.due()


def test_alarms_from_outside_the_rules_go_through_the_lifecycle() -> None:
    """A technical alarm the daemon raises (a batch's ``alarms``) is numbered by the
    lifecycle and tracked by it, so it escalates and resolves like any other."""
    lifecycle = Lifecycle(AlertsConfig(), clock=lambda: 0.0)
    sink = Signalling()
    engine = Engine(RulesConfig(), [sink], lifecycle=lifecycle)
    alarms = SystemAlarms("test", clock=lambda: T0)
    raised = alarms.set("store.failing", "sqlite", True, "disk full")
    assert raised is not None

    async def main() -> None:
        task = asyncio.create_task(engine.run())
        await engine.put(Batch([], alarms=[raised]))
        await asyncio.wait_for(sink.wait_for(1), 5)
        assert [e.id for e in lifecycle.active()] == [raised.id]
        resolved = alarms.set("store.failing", "sqlite", False, "committing again")
        assert resolved is not None
        await engine.put(Batch([], alarms=[resolved]))
        engine.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert [(e.id, e.state, e.seq) for e in sink.events] == [
        (raised.id, AlertState.ACTIVE, 1),
        (raised.id, AlertState.RESOLVED, 2),
    ]
    assert lifecycle.active() == []


class Signalling(Recorder):
    """A recorder that can be awaited until it holds ``n`` events."""

    def __init__(self) -> None:
        super().__init__()
        self.grew = asyncio.Event()

    async def write(self, readings, events, done=None):  # type: ignore[no-untyped-def]
        await super().write(readings, events, done)
        self.grew.set()

    async def wait_for(self, n: int) -> None:
        while len(self.events) < n:
            self.grew.clear()
            await self.grew.wait()
