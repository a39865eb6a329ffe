"""Peer: the same threshold flow in Node-RED and in vitalmon, throughput and alert latency side
by side, on the same broker in the same run.

Node-RED 4 (``npm install node-red@4``, cached in ``~/.cache/vitalmon-bench/node-red``) runs
one flow: ``mqtt in`` (``vitals/#``, QoS 1, JSON) -> ``function`` -> ``mqtt out`` (QoS 1).
The function applies vitalmon's default threshold rules (the limits, ``delay_s``,
``clear_band``, ``confirm`` and ``max_gap_s`` of ``RulesConfig()``, written into the flow
by this script) to every vital of every message, keeps each (topic, vital, side)'s level,
and publishes a raise, a level change or a resolve, like vitalmon, to
``alerts/{ward}/{bed}`` (``at``: the reading's ``ts``). It counts the messages and
readings it has evaluated and answers control messages (``{"bench": ...}`` on
``vitals/bench/ctl/mon1``, not counted) with the counts on ``bench/count``. Its MQTT
client socket gets TCP_NODELAY (settings.js sets it on every client socket: MQTT.js
leaves Nagle on); the broker has ``set_tcp_nodelay true`` as in the other benchmarks.

1. Throughput, per variant (20 beds, normal values; the same pre-encoded stream and raw
   QoS 1 publisher as ``ingest.py``): ``single`` (one reading per message, 60,000
   messages) and ``object`` (six vitals per message, 20,000).
   Node-RED: the clock runs from the first publish until the answer to an end marker,
   sent as the stream's last message by the same publisher (so it is evaluated after
   every other message), arrives; its counts must equal the stream's. vitalmon: a fresh
   ``python -m monitor run`` (default rules, SQLite), as in ``ingest.py``: filled first
   (``--fill-s`` of event time, default 4 h 5 min, one reading per ``--fill-step`` s, so
   its windows are full; Node-RED's flow keeps no windows), then each stream until
   ``vitalmon_readings_committed_total`` has grown by its readings. The bare
   ``mosquitto_sub -t 'vitals/#' -q 1`` on the same stream is the broker's ceiling.
2. Alert latency under a background load of ``--beds`` beds at 1 Hz (six vitals per
   message, ``common.py load``): ``{"ts": now, "mode": "intermittent", "temp": 41.0}``
   then ``37.0`` on ``vitals/probe/1/mon1`` (a spot thermometer's reading is judged on
   its own, ``temp`` ``delay_s`` 0, so every probe raises or resolves the alert), the
   clock running from the publish until the event
   for that ``ts`` arrives on ``alerts/probe/1``, as in ``latency.py`` (vitalmon with
   flapping detection off, its load beds filled first as in ``latency.py``). A warm-up,
   then ``--seconds`` of probes for each.

Targets (issue 16): vitalmon >= 2x Node-RED's msg/s for both variants, and vitalmon's
one-reading msg/s >= 50 % of mosquitto_sub's.

Without Node.js 20 and npm, or when npm cannot install Node-RED, the script prints one
line (``peer.py: ...``, the reason) and exits with status 2.

Node-RED and vitalmon run one after the other, the other one not running; each
subscriber's CPU (100 % = one core) is read from ``/proc``. vitalmon does more per
reading than the flow (it stores every reading in SQLite and runs trend, NEWS2 and
technical rules besides thresholds), and it acknowledges a message only once it has
taken it in, where Node-RED acknowledges on receipt and queues in memory.

    python benchmarks/peer.py [--beds 1000] [--seconds 15] [--quick] [--json FILE]
                              [--fill-s S] [--fill-step S]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from common import (
    SIX,
    Broker,
    Daemon,
    Fill,
    Load,
    RawPublisher,
    default_fill_s,
    fill_line,
    forget_session,
    machine,
    machine_line,
    parser,
    publish_packet,
    stop_process,
    table,
    target,
    targets_table,
    wait_for,
    write_json,
)
from ingest import BEDS, baseline, cpu_s, ours_filled, send_in_background
from latency import (
    ALERT_TOPIC,
    FILL_STEP_S,
    GRACE_S,
    RULES,
    Probes,
    fill_load,
    probe_options,
    stats,
)
from paho.mqtt.enums import CallbackAPIVersion

from monitor.broker import free_port
from monitor.config import RulesConfig

NODE_RED_SPEC = "node-red@4"  # 5.x needs Node 22
NPM_TIMEOUT_S = 300
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitalmon-bench"
INSTALL = CACHE / "node-red"
MESSAGES = {"single": 60_000, "object": 20_000}
QUICK = {"single": 1_000, "object": 400}
#: --quick: the fill's event time and step (throughput; the latency's load uses
#: latency.py's step)
QUICK_FILL = (600.0, 10.0)
TARGET_OVER_NODE_RED = 2.0
TARGET_PCT_OF_SUB = 50.0
CTL_TOPIC = "vitals/bench/ctl/mon1"
COUNT_TOPIC = "bench/count"
END_SEQ = -1


class Unavailable(Exception):
    """Node.js, npm or Node-RED cannot be had: reported in one line, exit status 2."""


# ------------------------------------------------------------------------ install


def node_red_install() -> dict[str, Any]:
    """Node-RED 4 in the cache (installed there by npm on the first run) ->
    {"red_js", "version", "node", "install_s" (None when it came from the cache)}."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise Unavailable("node and npm are needed (Node.js 20: apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    installed_s = None
    if _version(INSTALL) is None:
        CACHE.mkdir(parents=True, exist_ok=True)
        print(
            f"installing {NODE_RED_SPEC} into {INSTALL} (first run only)",
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="install-", dir=CACHE) as tmp:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    [
                        npm,
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel",
                        "error",
                        NODE_RED_SPEC,
                    ],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise Unavailable(
                    f"npm install {NODE_RED_SPEC} timed out after {NPM_TIMEOUT_S} s"
                ) from None
            installed_s = time.perf_counter() - t0
            if proc.returncode != 0 or _version(Path(tmp)) is None:
                why = npm_error(proc.stderr + proc.stdout) or f"exit status {proc.returncode}"
                raise Unavailable(f"npm install {NODE_RED_SPEC} failed: {why}")
            with contextlib.suppress(OSError):  # another run may have filled the cache
                Path(tmp).rename(INSTALL)
    found = _version(INSTALL)
    if found is None:
        raise Unavailable(f"no Node-RED 4 in {INSTALL} (delete it to reinstall)")
    return {
        "red_js": str(INSTALL / "node_modules" / "node-red" / "red.js"),
        "version": found,
        "node": version.stdout.strip() or "?",
        "install_s": installed_s,
    }


def npm_error(text: str) -> str:
    """npm's error output -> its code and first message line (``ENOTFOUND: request to ...``)."""
    lines = [re.sub(r"^npm (?:error|ERR!)", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    code = next((ln.split()[1] for ln in lines if ln.startswith("code ")), "")
    skip = ("code ", "syscall ", "errno ", "path ", "dest ", "A complete log")
    message = next((ln for ln in lines if not ln.startswith(skip)), "")
    return ": ".join(x for x in (code, message[:200]) if x)


def _version(where: Path) -> str | None:
    """The Node-RED 4.x installed under ``where``, or None."""
    package = where / "node_modules" / "node-red" / "package.json"
    try:
        version = str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None
    ok = version.startswith("4.") and (package.parent / "red.js").exists()
    return version if ok else None


# ------------------------------------------------------------------------ the flow


def threshold_rules() -> tuple[dict[str, list[dict[str, Any]]], float]:
    """vitalmon's default threshold rules, per vital one per side -> (rules, max_gap_s)."""
    cfg = RulesConfig()
    out: dict[str, list[dict[str, Any]]] = {}
    for vital, tc in cfg.thresholds.items():
        if not tc.enabled:
            continue
        for side, lv in (("low", tc.low), ("high", tc.high)):
            if lv is None:
                continue
            limits = {lvl: lim for lvl, lim in ((1, lv.warn), (2, lv.crit)) if lim is not None}
            out.setdefault(vital, []).append(
                {
                    "name": f"{vital}.{side}",
                    "low": side == "low",
                    "limits": [limits.get(1), limits.get(2)],  # by level - 1
                    "levels": sorted(limits, reverse=True),
                    "band": tc.clear_band,
                    "delay": tc.delay_s,
                    "confirm": tc.min_readings(vital),
                }
            )
    return out, cfg.max_gap_s


#: The function node's "On Start": the rules and the state, kept in the node's context.
FUNCTION_INIT = """context.set("st", {
    rules: RULES_JSON,
    maxGap: MAX_GAP_S,
    series: new Map(),  // "topic vital.side" -> {level, last, start[3], count[3], startedAt}
    messages: 0,
    readings: 0,
});
"""

#: The function node's body: vitalmon's threshold rule (monitor/engine/threshold.py) on a
#: stream, reading by reading: raising level L needs `confirm` consecutive readings beyond
#: L's limit covering `delay_s` of event time with no gap over `max_gap_s`; keeping L needs
#: the newest reading within the limit plus the clear band.
FUNCTION_BODY = """const st = context.get("st");
const p = msg.payload;
if (p === null || typeof p !== "object" || Array.isArray(p)) {
    return null;
}
if (p.bench !== undefined) {  // peer.py's control message: answer with the counts
    if (p.bench === "reset") {
        st.messages = 0;
        st.readings = 0;
        st.series.clear();
    }
    return {topic: "bench/count",
            payload: {seq: p.seq, messages: st.messages, readings: st.readings}};
}
st.messages += 1;
const ts = p.ts;
if (typeof ts !== "number") {
    return null;
}
let out = null;
const spot = p.mode === "intermittent";  // a spot reading: judged on its own (README)
for (const vital in p) {
    const value = p[vital];
    if (vital === "ts" || typeof value !== "number") {
        continue;
    }
    st.readings += 1;
    const rules = st.rules[vital];
    if (rules === undefined) {
        continue;  // no default limits (dbp)
    }
    for (const r of rules) {
        const key = msg.topic + " " + r.name;
        let s = st.series.get(key);
        if (s === undefined) {
            s = {level: 0, last: ts, start: [null, null], count: [0, 0], startedAt: ts};
            st.series.set(key, s);
        }
        const gap = ts - s.last;
        s.last = ts;
        for (const lvl of r.levels) {
            const i = lvl - 1;
            const lim = r.limits[i];
            if (!(r.low ? value < lim : value > lim)) {
                s.start[i] = null;
                s.count[i] = 0;
            } else if (s.start[i] === null || gap > st.maxGap) {
                s.start[i] = ts;
                s.count[i] = 1;
            } else {
                s.count[i] += 1;
            }
        }
        const current = s.level;
        let level = 0;
        for (let lvl = current; lvl > 0; lvl--) {
            const lim = r.limits[lvl - 1];
            if (lim !== null && (r.low ? value < lim + r.band : value > lim - r.band)) {
                level = lvl;
                break;
            }
        }
        for (const lvl of r.levels) {  // highest first
            if (lvl <= level) {
                break;
            }
            const start = s.start[lvl - 1];
            const n = s.count[lvl - 1];
            if (start !== null && (spot || (n >= r.confirm
                    && (r.delay <= 0 || (n >= 2 && ts - start >= r.delay - 1e-6))))) {
                level = lvl;
                if (current === 0) {
                    s.startedAt = start;
                }
                break;
            }
        }
        if (level !== current) {
            s.level = level;
            const parts = msg.topic.split("/");
            const shown = level || r.levels[r.levels.length - 1];
            if (out === null) {
                out = [];
            }
            out.push({topic: "alerts/" + parts[1] + "/" + parts[2], payload: {
                ward: parts[1], bed: parts[2], device: parts[3], vital: vital, rule: r.name,
                kind: "physiological", priority: (level || current) === 2 ? "high" : "medium",
                state: level ? "active" : "resolved", value: value, limit: r.limits[shown - 1],
                started_at: s.startedAt, at: ts,
            }});
        }
    }
}
return out === null ? null : [out];
"""

#: settings.js: no editor, no HTTP endpoints, warnings only. MQTT.js leaves Nagle's
#: algorithm on, so every client socket gets TCP_NODELAY before it connects.
SETTINGS = """const net = require("net");
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
    this.setNoDelay(true);
    return connect.apply(this, args);
};
module.exports = {
    uiPort: UI_PORT,
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    userDir: USER_DIR,
    flowFile: "flows.json",
    flowFilePretty: true,
    credentialSecret: false,
    logging: {console: {level: "warn", metrics: false, audit: false}},
    diagnostics: {enabled: false},
    runtimeState: {enabled: false},
    telemetry: {enabled: false},
    externalModules: {autoInstall: false, palette: {allowInstall: false}},
    functionExternalModules: false,
};
"""


def flows(broker_port: int) -> list[dict[str, Any]]:
    rules, max_gap = threshold_rules()
    init = FUNCTION_INIT.replace("RULES_JSON", json.dumps(rules))
    init = init.replace("MAX_GAP_S", json.dumps(max_gap))
    return [
        {"id": "bench", "type": "tab", "label": "vitalmon peer benchmark"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "bench broker",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": "node-red-bench",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoUnsubscribe": True,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
            "userProps": "",
            "sessionExpiry": "",
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "bench",
            "name": "vitals",
            "topic": "vitals/#",
            "qos": "1",
            "datatype": "json",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "x": 100,
            "y": 60,
            "wires": [["thresholds"]],
        },
        {
            "id": "thresholds",
            "type": "function",
            "z": "bench",
            "name": "thresholds",
            "func": FUNCTION_BODY,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": init,
            "finalize": "",
            "libs": [],
            "x": 300,
            "y": 60,
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "mqtt out",
            "z": "bench",
            "name": "alerts",
            "topic": "",
            "qos": "1",
            "retain": "false",
            "respTopic": "",
            "contentType": "",
            "userProps": "",
            "correl": "",
            "expiry": "",
            "broker": "broker",
            "x": 500,
            "y": 60,
            "wires": [],
        },
    ]


class Control:
    """A paho client that sends control messages into the flow and collects the answers
    (``bench/count``: seq, messages and readings evaluated since the last reset)."""

    def __init__(self, port: int) -> None:
        self.answers: dict[int, tuple[float, dict[str, Any]]] = {}  # seq -> (arrival, counts)
        self._cond = threading.Condition()
        self._seq = 0
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer-control")
        self.client.on_connect = lambda c, *_: c.subscribe(COUNT_TOPIC, 1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the control client did not subscribe")

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        counts = json.loads(m.payload)
        with self._cond:
            self.answers.setdefault(int(counts["seq"]), (now, counts))
            self._cond.notify_all()

    def send(self, kind: str) -> int:
        self._seq += 1
        self.client.publish(CTL_TOPIC, json.dumps({"bench": kind, "seq": self._seq}), qos=1)
        return self._seq

    def wait(self, seq: int, timeout: float) -> tuple[float, dict[str, Any]] | None:
        """-> (arrival time, counts) of the answer to ``seq``, or None after ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: seq in self.answers, timeout)
            return self.answers.get(seq)

    def ask(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        answer = self.wait(self.send(kind), timeout)
        if answer is None:
            raise RuntimeError(f"Node-RED did not answer {kind!r} within {timeout:g} s")
        return answer[1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NodeRed:
    """Node-RED running the flow, in ``workdir`` (its user directory)."""

    def __init__(self, install: dict[str, Any], workdir: Path, broker_port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.red_js = install["red_js"]
        self.port = broker_port
        self.workdir = workdir
        (workdir / "flows.json").write_text(json.dumps(flows(broker_port), indent=2) + "\n")
        self.settings = workdir / "settings.js"
        settings = SETTINGS.replace("UI_PORT", str(free_port()))
        self.settings.write_text(settings.replace("USER_DIR", json.dumps(str(workdir))))
        self.logfile = workdir / "node-red.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: Control | None = None

    def start(self, timeout: float = 60.0) -> NodeRed:
        node = shutil.which("node") or "node"
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    node,
                    self.red_js,
                    "--settings",
                    str(self.settings),
                    "--userDir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        try:
            self.control = Control(self.port)
            wait_for(self._answers, timeout, "Node-RED's flow (a control message round trip)")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        """Ready when a reset sent now comes back through mqtt in -> function -> mqtt out."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Node-RED exited: {self.logfile.read_text(errors='replace')}")
        assert self.control is not None
        return self.control.wait(self.control.send("reset"), 0.5) is not None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> NodeRed:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# ------------------------------------------------------------------------ throughput


def node_red_throughput(
    install: dict[str, Any], work: Path, port: int, packets: list[bytes], readings: int
) -> dict[str, Any]:
    end = publish_packet(
        CTL_TOPIC, json.dumps({"bench": "end", "seq": END_SEQ}).encode(), len(packets) % 65535 + 1
    )
    with NodeRed(install, work, port).start() as nr:
        assert nr.control is not None
        nr.control.ask("reset")
        pub = RawPublisher(port, "bench-pub")
        cpu0, t0 = cpu_s(nr.pid), time.perf_counter()
        sender = send_in_background(pub, [*packets, end])
        answer = nr.control.wait(END_SEQ, 600)
        cpu = cpu_s(nr.pid) - cpu0
        sender.join()
        pub.drain()
        pub.close()
    if answer is None:
        raise RuntimeError("Node-RED did not answer the end marker within 600 s")
    at, counts = answer
    if (counts["messages"], counts["readings"]) != (len(packets), readings):
        raise RuntimeError(
            f"Node-RED evaluated {counts}, the stream had {len(packets)} "
            f"messages and {readings} readings"
        )
    seconds = at - t0
    return {"seconds": seconds, "cpu_pct": 100 * cpu / seconds}


def throughput(
    install: dict[str, Any],
    work: Path,
    port: int,
    sizes: dict[str, int],
    fill: Fill,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """vitalmon (filled, then every stream), then per stream mosquitto_sub and Node-RED
    -> (vitalmon's fill, a result per variant)."""
    filled, vm_runs = ours_filled(work, port, sizes, BEDS, fill)
    print("throughput: vitalmon done", file=sys.stderr, flush=True)
    out = []
    for shape in sizes:
        vm = vm_runs[shape]
        packets, readings = vm["packets"], vm["readings"]
        msgs = len(packets)
        sub = baseline(port, packets)
        print(f"{shape}: mosquitto_sub done", file=sys.stderr, flush=True)
        nr = node_red_throughput(install, work / f"node-red-{shape}", port, packets, readings)
        print(f"{shape}: Node-RED done", file=sys.stderr, flush=True)

        def rates(r: dict[str, Any], msgs: int = msgs, readings: int = readings) -> dict[str, Any]:
            return {
                "seconds": r["seconds"],
                "msgs_per_s": msgs / r["seconds"],
                "readings_per_s": readings / r["seconds"],
                "cpu_pct": r["cpu_pct"],
            }

        out.append(
            {
                "variant": shape,
                "messages": msgs,
                "readings": readings,
                "readings_per_message": readings / msgs,
                "publisher_msgs_per_s": msgs / sub["publish_seconds"],
                "mosquitto_sub": rates(sub),
                "node_red": rates(nr),
                "vitalmon": rates(vm),
                "vitalmon_over_node_red": nr["seconds"] / vm["seconds"],
                "vitalmon_pct_of_sub": 100 * sub["seconds"] / vm["seconds"],
            }
        )
    return filled, out


# ------------------------------------------------------------------------ latency


class AlertProbes(Probes):
    """latency.py's probes; also takes an alert whose ``at`` is the reading's epoch
    seconds (Node-RED's flow) rather than vitalmon's ISO 8601 text."""

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if m.topic != ALERT_TOPIC:
            return
        at = json.loads(m.payload).get("at")
        if isinstance(at, int | float):
            self.take(round(at * 1000), now)
        elif isinstance(at, str):
            self.take(
                round(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000), now
            )


def probe_under_load(
    port: int,
    pid: int,
    processed: Callable[[], int],
    beds: int,
    warmup: float,
    seconds: float,
    interval: float,
) -> dict[str, Any]:
    """Background load, warm-up, then probes; ``processed()`` -> readings evaluated so far."""
    load = Load(port, beds)
    try:
        probes = AlertProbes(port)
        try:
            time.sleep(warmup)
            c0, cpu0, t0 = processed(), cpu_s(pid), time.monotonic()
            next_at = t0
            rng = random.Random(3)  # jittered: never in step with the load's ticks
            while time.monotonic() - t0 < seconds:
                probes.ours()
                next_at += interval * rng.uniform(0.5, 1.5)
                time.sleep(max(0.0, next_at - time.monotonic()))
            c1, cpu1, t1 = processed(), cpu_s(pid), time.monotonic()
            with contextlib.suppress(RuntimeError):  # what is left is counted as lost
                wait_for(lambda: probes.pending() == 0, GRACE_S, "the last probes")
            ms, missing = probes.latencies("alert:")
        finally:
            probes.close()
    finally:
        load.stop()
    offered = beds * len(SIX)
    kept = (c1 - c0) / (t1 - t0)
    return {
        **stats(ms, missing),
        "processed_readings_per_s": kept,
        "kept_up_pct": 100 * kept / offered if offered else 100.0,
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
    }


def latency(
    install: dict[str, Any],
    work: Path,
    port: int,
    beds: int,
    warmup: float,
    seconds: float,
    interval: float,
    fill: Fill | None = None,
) -> dict[str, Any]:
    with NodeRed(install, work / "node-red-latency", port).start() as nr:
        control = nr.control
        assert control is not None
        nr_run = probe_under_load(
            port,
            nr.pid,
            lambda: int(control.ask("count")["readings"]),
            beds,
            warmup,
            seconds,
            interval,
        )
    print("latency: Node-RED done", file=sys.stderr, flush=True)
    client_id = "bench-peer-latency"
    with Daemon(work / "latency", port, client_id=client_id, rules=RULES).start() as d:
        filled = fill_load(d, port, beds, fill)
        vm_run = probe_under_load(port, d.pid, d.committed, beds, warmup, seconds, interval)
        vm_run["fill"] = filled
    forget_session(port, client_id)
    print("latency: vitalmon done", file=sys.stderr, flush=True)
    return {
        "beds": beds,
        "offered_readings_per_s": beds * len(SIX),
        "node_red": nr_run,
        "vitalmon": vm_run,
        "vitalmon_over_node_red": {
            k: vm_run[k] / nr_run[k]
            for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
            if k in vm_run and k in nr_run and nr_run[k] > 0
        },
    }


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "peer")
    probe_options(p, "1000", 1.0)
    p.add_argument(
        "--load-fill-step",
        type=float,
        default=FILL_STEP_S,
        help="the latency's load beds: s of event time between a series' fill readings",
    )
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else MESSAGES
    beds, seconds, warmup = int(args.beds), args.seconds, args.warmup
    fill_s = default_fill_s() if args.fill_s is None else args.fill_s
    step = args.fill_step
    if args.quick:
        beds, seconds, warmup = 100, 2.0, 1.0
        if args.fill_s is None:
            fill_s, step = QUICK_FILL
    try:
        install = node_red_install()
    except Unavailable as exc:
        print(f"peer.py: {exc}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine(),
        "node": install["node"],
        "node_red": install["version"],
        "node_red_install_s": install["install_s"],
        "node_red_dir": str(INSTALL),
        "stream_beds": BEDS,
        "seconds": seconds,
        "warmup_s": warmup,
        "interval_s": args.interval,
        "fill_s": fill_s,
        "fill_step_s": step,
        "load_fill_step_s": args.load_fill_step,
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-peer-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            result["fill"], result["throughput"] = throughput(
                install, work, broker.port, sizes, Fill(fill_s, step)
            )
            load_fill = Fill(fill_s, args.load_fill_step, ward="load") if fill_s > 0 else None
            result["latency"] = latency(
                install, work, broker.port, beds, warmup, seconds, args.interval, load_fill
            )
    result["run_s"] = time.perf_counter() - t_start
    result["targets"] = targets(result)
    print(report(result))
    write_json(args.json, result)
    return 0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for v in result["throughput"]:
        out.append(
            target(
                f"peer: {v['variant']}, vitalmon msg/s over Node-RED's",
                TARGET_OVER_NODE_RED,
                v["vitalmon_over_node_red"],
                "x",
            )
        )
        if v["variant"] == "single":
            out.append(
                target(
                    "peer: single, vitalmon % of mosquitto_sub msg/s",
                    TARGET_PCT_OF_SUB,
                    v["vitalmon_pct_of_sub"],
                    "%",
                )
            )
    return out


def _ms(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:.1f}" if key in s else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(result: dict[str, Any]) -> str:
    tp = {r["variant"]: r for r in result["throughput"]}
    lat = result["latency"]
    single, obj = tp.get("single"), tp.get("object")
    rows = []
    for key, name in (
        ("mosquitto_sub", "mosquitto_sub"),
        ("node_red", "Node-RED"),
        ("vitalmon", "vitalmon"),
    ):
        s = single[key] if single else {}
        o = obj[key] if obj else {}
        la = lat.get(key, {})
        rows.append(
            [
                name,
                f"{s['msgs_per_s']:,.0f}" if s else "-",
                f"{s['cpu_pct']:.0f}" if s else "-",
                f"{o['msgs_per_s']:,.0f}" if o else "-",
                f"{o['readings_per_s']:,.0f}" if o else "-",
                f"{o['cpu_pct']:.0f}" if o else "-",
                f"{la['n']}/{la['missing']}" if la else "-",
                _ms(la, "p50_ms"),
                _ms(la, "p95_ms"),
                _ms(la, "p99_ms"),
                _ms(la, "max_ms"),
                f"{la['kept_up_pct']:.0f}" if la else "-",
                f"{la['cpu_pct']:.0f}" if la else "-",
            ]
        )

    def get(r: dict[str, Any] | None, who: str, k: str) -> float | None:
        return r[who][k] if r is not None and k in r[who] else None

    nr, vm = lat["node_red"], lat["vitalmon"]
    rows.append(
        [
            "vitalmon/Node-RED",
            _ratio(get(single, "vitalmon", "msgs_per_s"), get(single, "node_red", "msgs_per_s")),
            _ratio(get(single, "vitalmon", "cpu_pct"), get(single, "node_red", "cpu_pct")),
            _ratio(get(obj, "vitalmon", "msgs_per_s"), get(obj, "node_red", "msgs_per_s")),
            _ratio(get(obj, "vitalmon", "readings_per_s"), get(obj, "node_red", "readings_per_s")),
            _ratio(get(obj, "vitalmon", "cpu_pct"), get(obj, "node_red", "cpu_pct")),
            "",
            *(_ratio(vm.get(k), nr.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
            _ratio(vm["kept_up_pct"], nr["kept_up_pct"]),
            _ratio(vm["cpu_pct"], nr["cpu_pct"]),
        ]
    )
    n_single = f"{single['messages']:,}" if single else "-"
    n_obj = f"{obj['messages']:,}" if obj else "-"
    if result["node_red_install_s"] is None:
        installed = f"from the cache {result['node_red_dir']}"
    else:
        installed = (
            f"installed by npm in {result['node_red_install_s']:.0f} s (first run; "
            f"cached in {result['node_red_dir']})"
        )
    return "\n".join(
        [
            machine_line(result["machine"]),
            f"node-red {result['node_red']} on node {result['node']}: {installed}",
            f"throughput: {result['stream_beds']} beds, normal values, QoS 1, one raw publisher "
            f"(<= 1000 unacknowledged); single: {n_single} messages of one reading, object: "
            f"{n_obj} messages of six; until every message is evaluated (Node-RED: the answer "
            "to an end marker; vitalmon: vitalmon_readings_committed_total = readings)",
            f"alert latency: {lat['beds']:,} beds at 1 Hz ({lat['offered_readings_per_s']:,} "
            f"readings/s) in the background, {result['warmup_s']:g} s warm-up, then "
            f"{result['seconds']:g} s of temp probes every {result['interval_s']:g} s: publish -> "
            "alert received on alerts/probe/1, milliseconds",
            "",
            table(
                [
                    "system",
                    "single msg/s",
                    "CPU %",
                    "object msg/s",
                    "readings/s",
                    "CPU %",
                    "alerts n/lost",
                    "p50",
                    "p95",
                    "p99",
                    "max",
                    "kept up %",
                    "CPU %",
                ],
                rows,
            ),
            "",
            f"vitalmon {fill_line(result.get('fill'))}",
            "latency, vitalmon "
            + fill_line(result["latency"]["vitalmon"].get("fill"))
            + " (ward load, the background load's beds)",
            "",
            "Node-RED: mqtt in -> function (vitalmon's default threshold rules) -> mqtt out; "
            "vitalmon: python -m monitor run (all rules, SQLite). mosquitto_sub: the bare "
            "subscriber, the broker's ceiling. CPU %: the subscriber process (100 = one core), "
            "during the stream / during the probes. Ratios: vitalmon / Node-RED (msg/s: higher "
            "is better for vitalmon; ms and CPU: lower).",
            f"total {result['run_s']:.0f} s",
            "",
            targets_table(result["targets"]),
        ]
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
