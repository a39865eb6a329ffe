"""The web station under a ward's load: N beds at 1 Hz, from publication to the tile drawn
in a real headless Chromium, vs a bare MQTT subscriber on the same broker in the same run.

Runs mosquitto (a free loopback port), ``vitalmon web`` (a subprocess, push every
``web.push_interval_s``) and Debian's chromium through chromium-driver, logged in and on
the ward page at 1280x800. A publisher sends every bed one reading a second (hr, spo2,
rr, sbp, dbp, temp; QoS 0; ``ts`` = the time of publication) for ``--seconds``:

* baseline: a bare paho subscriber to ``vitals/#``: publication -> message received;
* ours: publication (the reading's ``ts``) -> its bed's tile redrawn in the browser
  (``window.vitalmonStats.drawn``, taken in the frame that draws it): the station's MQTT
  intake, its push interval, SSE, JSON parsing and the DOM update;
* the browser's frame time (``requestAnimationFrame`` intervals: 16.7 ms is 60 fps) and
  the script time per update message.

No daemon runs: the tiles need only the readings (the alarm path is the daemon's, measured
by benchmarks/latency.py).

    python benchmarks/web.py [--beds 200] [--seconds 30] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from webtools import WebProc, add_users, chrome  # noqa: E402

from monitor import broker as mosquitto  # noqa: E402


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beds", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--push", type=float, default=0.5, help="web.push_interval_s")
    ap.add_argument("--quick", action="store_true", help="20 beds, 5 s")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "web.json"))
    a = ap.parse_args()
    if a.quick:
        a.beds, a.seconds = 20, 5.0
    work = Path(tempfile.mkdtemp(prefix="vitalmon-bench-web-"))
    port = mosquitto.free_port()
    exe = mosquitto.find_mosquitto() or "/usr/sbin/mosquitto"
    conf = work / "mosquitto.conf"
    broker = mosquitto.spawn(
        conf,
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n",
        work / "mosquitto.log",
        exe,
    )
    mosquitto.wait_accepting(broker, port, 10, work / "mosquitto.log")
    users = work / "users.yaml"
    add_users(users, {"bench": ("viewer", "bench-password")})
    cfg = work / "vitalmon.yaml"
    cfg.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {port}, client_id: bench}}\n"
        f"store: {{type: sqlite, path: {work / 'vitals.db'}}}\n"
        f"web: {{listen: 127.0.0.1:{mosquitto.free_port()}, users_file: {users},"
        f" push_interval_s: {a.push}}}\n"
    )
    web = WebProc(cfg, work / "web.log")
    driver = None
    received: list[float] = []
    try:
        web.start()
        driver = chrome()
        from selenium.webdriver.common.by import By

        driver.get(web.url + "login")
        driver.find_element(By.ID, "username").send_keys("bench")
        driver.find_element(By.ID, "password").send_keys("bench-password")
        driver.find_element(By.ID, "login-button").click()
        deadline = time.time() + 10
        while (
            driver.execute_script("return window.vitalmonStats && window.vitalmonStats.messages")
            is None
        ):
            if time.time() > deadline:
                raise SystemExit("the ward page did not open")
            time.sleep(0.1)

        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        ready = threading.Event()
        sub.on_connect = lambda c, *_: c.subscribe("vitals/#", 0)
        sub.on_subscribe = lambda *_: ready.set()

        def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
            received.append(time.time() - json.loads(m.payload)["ts"])

        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        ready.wait(10)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        driver.execute_script(
            "const s = window.vitalmonStats; s.drawn = []; s.frames = []; s.renders = [];"
        )
        t_end = time.time() + a.seconds
        k = 0
        while time.time() < t_end:
            t_tick = time.time()
            # an alarm probe: a raise on bed "probe" every second (as the daemon publishes
            # it), measured from its ``at`` to its tile drawn red
            probe = {"id": f"probe-{k}", "ward": "load", "bed": "probe", "device": "mon",
                     "vital": "spo2", "rule": "spo2.low", "kind": "physiological",
                     "priority": "high", "state": "active", "value": 80, "limit": 85,
                     "message": "probe", "seq": 1, "started_at": _iso(t_tick),
                     "at": _iso(time.time())}  # fmt: skip
            pub.publish("alerts/load/probe", json.dumps(probe), qos=0)
            for b in range(a.beds):
                doc = {"ts": time.time(), "hr": 60 + (b + k) % 30, "spo2": 95 + k % 4,
                       "rr": 14 + k % 5, "sbp": 120, "dbp": 80, "temp": 36.8}  # fmt: skip
                pub.publish(f"vitals/load/{b}/mon", json.dumps(doc), qos=0)
            k += 1
            time.sleep(max(0.0, t_tick + 1 - time.time()))
        time.sleep(2 * a.push + 0.5)
        stats = driver.execute_script("return window.vitalmonStats")
        tiles = driver.execute_script("return document.querySelectorAll('#tiles article').length")
        pub.loop_stop()
        sub.loop_stop()
    finally:
        if driver is not None:
            driver.quit()
        web.kill()
        mosquitto.stop(broker)
    drawn = [x * 1000 for x in stats["drawn"]]
    base = [x * 1000 for x in received]
    frames, renders, draws = stats["frames"], stats["renders"], stats["draws"]
    alarms = [x * 1000 for x in stats["alarms"]]
    rows = [
        ("bare MQTT subscriber", base),
        (f"reading -> tile drawn (push {a.push:g} s)", drawn),
        ("alarm event -> tile drawn", alarms),
    ]
    print(
        f"\n{a.beds} beds x 1 Hz for {a.seconds:g} s; {os.cpu_count()} cores; "
        f"{tiles} tiles on the page\n"
    )
    print(f"{'path':42} {'n':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 ratio':>10}")
    for name, xs in rows:
        ratio = statistics.median(xs) / statistics.median(base) if xs and base else float("nan")
        print(
            f"{name:42} {len(xs):>7} {pct(xs, 0.5):>8.1f} {pct(xs, 0.95):>8.1f} "
            f"{max(xs, default=float('nan')):>8.1f} {ratio:>9.0f}x"
        )
    print(
        f"\nbrowser frame time: p50 {pct(frames, 0.5):.1f} ms, p95 {pct(frames, 0.95):.1f} ms,"
        f" max {max(frames, default=float('nan')):.1f} ms ({len(frames)} frames); script per"
        f" update message: p50 {pct(renders, 0.5):.2f} ms, p95 {pct(renders, 0.95):.2f} ms;"
        f" redraw of the changed tiles: p50 {pct(draws, 0.5):.1f} ms,"
        f" p95 {pct(draws, 0.95):.1f} ms ({len(draws)} redraws)"
    )
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "beds": a.beds,
                "seconds": a.seconds,
                "push_interval_s": a.push,
                "tiles": tiles,
                "baseline_ms": {"p50": pct(base, 0.5), "p95": pct(base, 0.95), "n": len(base)},
                "drawn_ms": {"p50": pct(drawn, 0.5), "p95": pct(drawn, 0.95), "n": len(drawn)},
                "alarm_ms": {"p50": pct(alarms, 0.5), "p95": pct(alarms, 0.95), "n": len(alarms)},
                "frame_ms": {"p50": pct(frames, 0.5), "p95": pct(frames, 0.95)},
                "script_ms": {"p50": pct(renders, 0.5), "p95": pct(renders, 0.95)},
                "redraw_ms": {"p50": pct(draws, 0.5), "p95": pct(draws, 0.95)},
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0 if tiles >= a.beds else 1


if __name__ == "__main__":
    raise SystemExit(main())
