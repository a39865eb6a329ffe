"""TLS and authentication to the broker: `vitalmon run` against a real mosquitto.

The certificates are made here with the ``openssl`` CLI (EC P-256, valid 2 days):

* ``ca``: the CA the broker's certificates are issued by; ``other-ca``: an unrelated one;
* ``server``: CN ``localhost``, SAN ``DNS:localhost, IP:127.0.0.1``;
* ``server-dns``: CN ``localhost``, SAN ``DNS:localhost`` only: connecting to
  ``127.0.0.1`` with ``verify_hostname: true`` must fail (the address is not in it);
* ``client``: a client certificate from ``ca`` (mutual TLS).

One mosquitto (module-scoped, no persistence, a client id per test) listens on three
TLS ports, all with ``allow_anonymous false`` and a password file made by
``mosquitto_passwd``: ``good`` (``server``), ``dns_only`` (``server-dns``) and ``mtls``
(``server``, a client certificate required).

Every wait polls with a deadline. The repeat filter of the log is off
(``log.repeat_window_s: 0``): these tests count one line per failed attempt.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import MOSQUITTO, DaemonProc, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

USER = "vitalmon"
PASSWORD = "s3cret-Pw-" + secrets.token_hex(6)  # unique: grep the log for it
WRONG_PASSWORD = "wrong-Pw-" + secrets.token_hex(6)

#: One WARNING line per failed attempt, each with its backoff.
REFUSED = re.compile(
    r"WARNING +vitalmon\.mqtt: broker 127\.0\.0\.1:\d+ refused the connection: "
    r"(bad user name or password|not authorized) \((user '\w+'|anonymous)[^;]*; "
    r"retrying in \d+\.\d s\)$"
)
TLS_FAILED = re.compile(
    r"WARNING +vitalmon\.mqtt: TLS handshake with [\w.]+:\d+ failed: "
    r"certificate verify failed: (?P<why>.+) \(retrying in \d+\.\d s\)$"
)


# ------------------------------------------------------------------ certificates


def openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_ca(pki: Pki, name: str) -> None:
    cnf = pki.dir / f"{name}.cnf"
    cnf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n"
        f"[dn]\nCN = vitalmon test {name}\n"
        "[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    openssl(
        "req",
        "-x509",
        "-new",
        *_EC,
        "-keyout",
        pki.key(name),
        "-out",
        pki.crt(name),
        "-days",
        "2",
        "-config",
        cnf,
        "-extensions",
        "ext",
    )


def issue(pki: Pki, ca: str, name: str, *, san: str | None, usage: str) -> None:
    cnf = pki.dir / f"{name}.cnf"
    cnf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n"
        "[ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        f"extendedKeyUsage = {usage}\nsubjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n" + (f"subjectAltName = {san}\n" if san else "")
    )
    csr = pki.dir / f"{name}.csr"
    openssl("req", "-new", *_EC, "-keyout", pki.key(name), "-out", csr, "-config", cnf)
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        pki.crt(ca),
        "-CAkey",
        pki.key(ca),
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        "2",
        "-out",
        pki.crt(name),
        "-extfile",
        cnf,
        "-extensions",
        "ext",
    )


# ------------------------------------------------------------------------ broker


@dataclass
class TlsBroker:
    """mosquitto with password auth on three TLS listeners (see the module docstring)."""

    workdir: Path
    pki: Pki
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> None:
        passwd = self.workdir / "passwd"
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", "-c", str(passwd), USER, PASSWORD],
            check=True,
            capture_output=True,
            timeout=30,
        )
        ca, pki = self.pki.crt("ca"), self.pki
        listeners = {"good": "server", "dns_only": "server-dns", "mtls": "server"}
        conf = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            "persistence false",
            "user root",  # ignored unless run as root (then: keep reading tmp_path)
        ]
        for name, cert in listeners.items():
            conf += [
                f"listener {self.ports[name]} 127.0.0.1",
                f"cafile {ca}",
                f"certfile {pki.crt(cert)}",
                f"keyfile {pki.key(cert)}",
                "tls_version tlsv1.2",
                f"require_certificate {'true' if name == 'mtls' else 'false'}",
            ]
        (self.workdir / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.workdir / "mosquitto.conf")], stdout=out, stderr=out
        )
        for port in self.ports.values():
            wait_for(lambda p=port: self._accepting(p), 10, f"mosquitto on port {port}")

    def _accepting(self, port: int) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    for tool in (OPENSSL, MOSQUITTO, MOSQUITTO_PASSWD):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} is not installed: run scripts/test (it installs it)")
    p = Pki(tmp_path_factory.mktemp("pki"))
    make_ca(p, "ca")
    make_ca(p, "other-ca")
    issue(p, "ca", "server", san="DNS:localhost,IP:127.0.0.1", usage="serverAuth")
    issue(p, "ca", "server-dns", san="DNS:localhost", usage="serverAuth")
    issue(p, "ca", "client", san=None, usage="clientAuth")
    return p


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    b = TlsBroker(
        tmp_path_factory.mktemp("tls-broker"),
        pki,
        {name: free_port() for name in ("good", "dns_only", "mtls")},
    )
    b.start()
    yield b
    b.stop()


# ------------------------------------------------------------------------ daemon


def daemon_yaml(
    path: Path,
    port: int,
    *,
    client_id: str,
    host: str = "127.0.0.1",
    mqtt: dict[str, Any] | None = None,
    tls: dict[str, Any] | None = None,
) -> Path:
    """A daemon config (JSON is YAML) with TLS ``tls`` and extra ``mqtt`` keys."""
    doc = {
        "mqtt": {
            "host": host,
            "port": port,
            "client_id": client_id,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 0.5,
            "tls": tls,
            **(mqtt or {}),
        },
        "sources": [{"type": "mqtt", "topic": "vitals/{ward}/{bed}/{device}", "qos": 1}],
        "store": [{"type": "sqlite", "path": str(path.parent / f"{client_id}.db")}],
        "spool_path": str(path.parent / f"{client_id}-spool.db"),
        "alerts": {"topic": "alerts/{ward}/{bed}", "qos": 1},
        "rules": {"thresholds": {"spo2": {"low": {"warn": 90, "crit": 85}, "delay_s": 15}}},
        "log": {"repeat_window_s": 0},
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """``run_daemon(port, ready=..., **daemon_yaml keys)``: `vitalmon run` at debug level.
    ``ready=True`` waits for "ready:"; otherwise it is only started."""
    procs: list[DaemonProc] = []

    def make(port: int, *, ready: bool = True, **kw: Any) -> DaemonProc:
        n = len(procs)
        kw.setdefault("client_id", f"vm-{os.getpid()}-{time.monotonic_ns()}")
        cfg = daemon_yaml(tmp_path / f"vitalmon{n}.yaml", port, **kw)
        d = DaemonProc(cfg, port, tmp_path / f"daemon{n}.log")
        procs.append(d)
        if ready:
            d.start()
        else:
            d.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "-c", str(cfg), "--log-level", "debug"],
                stdout=d.logfile.open("ab"),
                stderr=subprocess.STDOUT,
            )
        return d

    yield make
    for d in procs:
        d.kill()


def mqtt_lines(d: DaemonProc) -> list[str]:
    """The daemon's WARNING-or-worse lines from the MQTT client (and paho)."""
    return [
        line
        for line in d.log().splitlines()
        if re.search(r"(WARNING|ERROR|CRITICAL) +vitalmon\.mqtt", line)
    ]


def assert_clean(d: DaemonProc) -> None:
    """Still running, no traceback, no paho line, the password nowhere."""
    assert d.proc is not None and d.proc.poll() is None, d.log()
    text = d.log()
    assert "Traceback" not in text, text
    assert "vitalmon.mqtt.paho" not in text, text
    assert "***" not in text  # not even masked by the log's redaction safety net
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text
        assert secret not in d.config.read_text()  # (a file or the environment only)


def failing_lines(d: DaemonProc, pattern: re.Pattern[str], n: int = 2) -> list[str]:
    """Wait for ``n`` failed attempts; every MQTT warning must be one of ``pattern``."""
    wait_for(lambda: len(mqtt_lines(d)) >= n, 10, f"{n} failed attempts")
    lines = mqtt_lines(d)
    for line in lines:
        assert pattern.search(line), f"unexpected line: {line}\n{d.log()}"
    assert "ready:" not in d.log()
    assert_clean(d)
    return lines


# ------------------------------------------------------------------ test client


class TlsClient:
    """A paho client over TLS with the good credentials, recording what it receives."""

    def __init__(self, port: int, ca: Path, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{secrets.token_hex(4)}")
        c.tls_set(ca_certs=str(ca))
        c.username_pw_set(USER, PASSWORD)

        def on_connect(client: paho.Client, *_: Any) -> None:
            if topics:
                client.subscribe([(t, 1) for t in topics])
            else:
                ready.set()

        def on_message(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))

        c.on_connect = on_connect
        c.on_subscribe = lambda *_: ready.set()
        c.on_message = on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert ready.wait(10), "the TLS test client did not connect"

    def received(self, prefix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tls_client(tls_broker: TlsBroker) -> Iterator[Callable[..., TlsClient]]:
    made: list[TlsClient] = []

    def make(*topics: str) -> TlsClient:
        made.append(TlsClient(tls_broker.ports["good"], tls_broker.pki.crt("ca"), *topics))
        return made[-1]

    yield make
    for c in made:
        c.close()


def good_tls(pki: Pki, **kw: Any) -> dict[str, Any]:
    return {"ca_file": str(pki.crt("ca")), **kw}


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[str], str]:
    def make(secret: str) -> str:
        path = tmp_path / f"pw-{secrets.token_hex(3)}"
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return str(path)

    return make


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "secret_from"), [("5", "file"), ("3.1.1", "env")])
def test_tls_and_password_reading_to_alert_round_trip(
    tls_broker, run_daemon, tls_client, password_file, monkeypatch, protocol, secret_from
):
    """Good CA and credentials, MQTT 5 (password file) and 3.1.1 (``${ENV}``): ready,
    status ``online`` retained, and a reading published over TLS raises an alert."""
    if secret_from == "env":
        monkeypatch.setenv("VITALMON_TEST_MQTT_PASSWORD", PASSWORD)  # inherited by the daemon
        creds = {"password": "${VITALMON_TEST_MQTT_PASSWORD}"}
    else:
        creds = {"password_file": password_file(PASSWORD)}
    cid = f"vm-rt-{protocol}"
    d = run_daemon(
        tls_broker.ports["good"],
        client_id=cid,
        tls=good_tls(tls_broker.pki),
        mqtt={"protocol": protocol, "username": USER, **creds},
    )
    watch = tls_client(f"vitalmon/status/{cid}", "alerts/#")
    wait_for(
        lambda: (f"vitalmon/status/{cid}", b"online", True) in watch.received("vitalmon/"),
        5,
        "retained online status over TLS",
    )
    pub = tls_client()
    now = time.time()
    for i in range(20):
        pub.publish("vitals/icu/3/mon1", {"ts": now - 19 + i, "spo2": 80})
    alerts = wait_for(lambda: watch.received("alerts/"), 5, "the alert over TLS")
    event = json.loads(alerts[0][1])
    assert (event["bed"], event["vital"], event["state"]) == ("3", "spo2", "active")
    assert f"MQTT {protocol}" in d.log() and "TLS >= 1.2" in d.log()
    assert mqtt_lines(d) == []
    assert_clean(d)
    code, _took = d.terminate()
    assert code == 0, d.log()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_password_is_refused_clearly_and_retried(
    tls_broker, run_daemon, password_file, protocol
):
    d = run_daemon(
        tls_broker.ports["good"],
        ready=False,
        tls=good_tls(tls_broker.pki),
        mqtt={
            "protocol": protocol,
            "username": USER,
            "password_file": password_file(WRONG_PASSWORD),
        },
    )
    lines = failing_lines(d, REFUSED)
    # (mosquitto 2.0 answers "not authorized" to both protocols; others say "bad user
    # name or password")
    assert all(
        f"(user '{USER}': check the user name and password; retrying in" in line for line in lines
    )


def test_anonymous_is_refused_clearly(tls_broker, run_daemon):
    d = run_daemon(tls_broker.ports["good"], ready=False, tls=good_tls(tls_broker.pki))
    lines = failing_lines(d, REFUSED)
    assert all("not authorized (anonymous: no mqtt.username; retrying in" in ln for ln in lines)


def test_wrong_ca_fails_verification_clearly_and_retries(tls_broker, run_daemon, password_file):
    d = run_daemon(
        tls_broker.ports["good"],
        ready=False,
        tls={"ca_file": str(tls_broker.pki.crt("other-ca"))},
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    for line in failing_lines(d, TLS_FAILED):
        why = TLS_FAILED.search(line).group("why")  # (mosquitto sends its CA in the chain)
        assert why in (
            "self-signed certificate in certificate chain",
            "unable to get local issuer certificate",
        ), line


@pytest.mark.parametrize(
    ("host", "verify_hostname", "connects"),
    [
        ("127.0.0.1", True, False),  # SAN DNS:localhost only: the address is not named
        ("127.0.0.1", False, True),  # a lab broker: chain still verified, the name not
        ("localhost", True, True),
    ],
)
def test_verify_hostname_against_a_dns_only_certificate(
    tls_broker, run_daemon, password_file, host, verify_hostname, connects
):
    """The ``server-dns`` certificate names only DNS:localhost (the ``good`` listener's
    also IP:127.0.0.1, which the round-trip test connects to with verification on)."""
    d = run_daemon(
        tls_broker.ports["dns_only"],
        ready=connects,
        host=host,
        tls=good_tls(tls_broker.pki, verify_hostname=verify_hostname),
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    if connects:
        assert mqtt_lines(d) == []
        assert_clean(d)
        return
    for line in failing_lines(d, TLS_FAILED):
        assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in line


def test_wrong_ca_is_refused_even_without_hostname_check(tls_broker, run_daemon, password_file):
    """``verify_hostname: false`` skips the name only: the chain is still verified."""
    d = run_daemon(
        tls_broker.ports["good"],
        ready=False,
        tls={"ca_file": str(tls_broker.pki.crt("other-ca")), "verify_hostname": False},
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    failing_lines(d, TLS_FAILED)


def test_client_certificate_mutual_tls(tls_broker, run_daemon, password_file):
    pki = tls_broker.pki
    d = run_daemon(
        tls_broker.ports["mtls"],
        tls=good_tls(
            pki,
            cert_file=str(pki.crt("client")),
            key_file=str(pki.key("client")),
            min_version="1.3",
        ),
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    assert "TLS >= 1.3" in d.log()
    assert mqtt_lines(d) == []
    assert_clean(d)


def test_missing_client_certificate_is_one_clear_line_per_attempt(
    tls_broker, run_daemon, password_file
):
    """The broker requires a client certificate. Under TLS 1.3 it says so after the
    client's side of the handshake: paho's own "failed to receive on socket" error is
    folded into our line, not printed as a second one."""
    d = run_daemon(
        tls_broker.ports["mtls"],
        ready=False,
        tls=good_tls(tls_broker.pki),
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    pattern = re.compile(
        r"WARNING +vitalmon\.mqtt: TLS handshake with 127\.0\.0\.1:\d+ failed: "
        r"(tlsv13 alert certificate required|sslv3 alert handshake failure) "
        r"\(retrying in \d+\.\d s\)$"
    )
    failing_lines(d, pattern, n=3)


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            {"ca_file": "garbage"},
            r"mqtt\.tls\.ca_file \S+garbage: cannot load CA certificates: "
            r"no certificate or crl found",
        ),
        (
            {"cert_file": "garbage", "key_file": "client.key"},
            r"mqtt\.tls\.cert_file \S+garbage: no PEM certificate in it",
        ),
        (
            {"cert_file": "client.crt", "key_file": "server.key"},
            r"mqtt\.tls\.key_file \S+server\.key: not the PEM private key of cert_file "
            r"\S+client\.crt"
            r" \(key values mismatch\)",
        ),
    ],
)
def test_unusable_tls_file_is_a_clear_fatal_error(tls_broker, tmp_path, tls, expected):
    """Readable but not usable: exit 1 at startup with one ``fatal:`` line naming it."""
    (tmp_path / "garbage").write_text("not a certificate\n")
    for name in ("client.crt", "client.key", "server.key"):
        shutil.copy(tls_broker.pki.dir / name, tmp_path / name)
    files = {k: str(tmp_path / v) for k, v in tls.items()}
    cfg = daemon_yaml(
        tmp_path / "c.yaml",
        tls_broker.ports["good"],
        client_id="vm-bad-file",
        tls={"ca_file": str(tls_broker.pki.crt("ca")), **files},
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    fatal = [line for line in out.stderr.splitlines() if "fatal:" in line]
    assert len(fatal) == 1 and re.search(expected, fatal[0]), out.stderr
    assert "Traceback" not in out.stderr


def test_broker_up_late_connects_after_failed_attempts(pki, tmp_path, run_daemon, password_file):
    """Nothing listens yet: one "cannot connect" line per attempt; then the TLS broker
    starts and the first success says after how many failed attempts."""
    late = TlsBroker(tmp_path / "late", pki, {n: free_port() for n in ("good", "dns_only", "mtls")})
    late.workdir.mkdir()
    d = run_daemon(
        late.ports["good"],
        ready=False,
        tls=good_tls(pki),
        mqtt={"username": USER, "password_file": password_file(PASSWORD)},
    )
    try:
        refused = (
            r"cannot connect to 127\.0\.0\.1:\d+: Connection refused \(retrying in [\d.]+ s\)$"
        )
        lines = failing_lines(d, re.compile(refused))
        late.start()
        wait_for(lambda: "ready:" in d.log(), 10, "ready once the broker is up")
        connected = re.search(
            r"INFO +vitalmon\.mqtt: connected to .* after (\d+) failed attempt", d.log()
        )
        assert connected and int(connected.group(1)) >= len(lines), d.log()
        assert_clean(d)
    finally:
        late.stop()
