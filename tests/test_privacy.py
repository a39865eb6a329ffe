"""monitor.privacy: keyed pseudonyms, log masks, secret file permissions."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from monitor.privacy import Pseudonymizer, check_secret_file, mask


def test_pseudonym_is_deterministic_and_keyed() -> None:
    p = Pseudonymizer(b"key one")
    a = p("MRN-0042")
    assert re.fullmatch(r"p-[0-9a-f]{16}", a)
    assert p("MRN-0042") == a
    assert Pseudonymizer(b"key one")("MRN-0042") == a
    assert Pseudonymizer(b"key two")("MRN-0042") != a
    assert p("MRN-0043") != a
    assert "0042" not in a
    assert p(None) is None
    assert p("") == ""


def test_known_value() -> None:
    # HMAC-SHA256(b"k", b"MRN-0042"), first 16 hex digits
    import hashlib
    import hmac

    want = hmac.new(b"k", b"MRN-0042", hashlib.sha256).hexdigest()[:16]
    assert Pseudonymizer(b"k")("MRN-0042") == "p-" + want
    assert Pseudonymizer(b"k").digest("MRN-0042") == want


def test_digest_matches_the_influx_tag() -> None:
    influx = pytest.importorskip("monitor.sinks.influx")
    assert Pseudonymizer(b"k").digest("MRN-7") == influx.Pseudonyms(b"k")("MRN-7")


def test_from_file(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("s3cret-key\nignored\n")
    assert Pseudonymizer.from_file(f)("x") == Pseudonymizer(b"s3cret-key")("x")
    assert Pseudonymizer.from_file(str(f))("x") == Pseudonymizer(b"s3cret-key")("x")
    assert "s3cret" not in repr(Pseudonymizer.from_file(f))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        Pseudonymizer.from_file(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty"):
        Pseudonymizer(b"")


def test_check_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("t\n")
    os.chmod(f, 0o600)
    assert check_secret_file(f) is None
    assert check_secret_file(str(f)) is None
    os.chmod(f, 0o644)
    warning = check_secret_file(f)
    assert warning is not None
    assert "group and others" in warning
    assert "0644" in warning
    assert str(f) in warning
    os.chmod(f, 0o640)
    warning = check_secret_file(f)
    assert warning is not None
    assert "group" in warning
    assert "others" not in warning
    os.chmod(f, 0o400)
    assert check_secret_file(f) is None
    missing = check_secret_file(tmp_path / "missing")
    assert missing is not None
    assert "cannot check" in missing


def test_mask_hides_the_id() -> None:
    ids = ["MRN-0042", "NHS 943 476 5919", "x", "Jane Doe"]
    for pid in ids:
        m = mask(pid)
        assert re.fullmatch(r"pt#[0-9a-f]{8}", m)
        assert pid not in m
        assert mask(pid) == m  # stable within the process
    assert len({mask(pid) for pid in ids}) == len(ids)
    assert mask(None) == "-"
    assert mask("") == "-"
    # unrelated to a stored pseudonym
    assert mask("MRN-0042")[3:] not in Pseudonymizer(b"k")("MRN-0042")


def test_a_full_run_logs_no_password_and_no_patient_id(
    daemon, subscribe, publisher, broker, tmp_path
):
    """Debug logging, a password, pseudonyms on: readings and an admission naming
    MRN-0042, an alert, an ack, a discharge, a restart. Neither the password nor the id
    appears in any log line, the store or an alert; the alerts carry the pseudonym."""
    import json
    import sqlite3
    import subprocess

    from conftest import wait_for

    password, mrn = "s3cret-Pa55word", "MRN-0042"
    (tmp_path / "mqtt.password").write_text(password + "\n")
    (tmp_path / "mqtt.password").chmod(0o600)
    (tmp_path / "pseudo.key").write_text("a-long-random-key\n")
    (tmp_path / "pseudo.key").chmod(0o600)
    d = daemon(start=False)
    text = d.config.read_text().replace(
        "  client_id: vitalmon\n",
        f"  client_id: vitalmon\n  username: vitalmon\n  password_file: {tmp_path}/mqtt.password\n",
    )
    d.config.write_text(
        text + f"privacy:\n  pseudonymize_patient: true\n  key_file: {tmp_path}/pseudo.key\n"
    )
    d.start()
    alerts = subscribe("alerts/#")
    expected = Pseudonymizer(b"a-long-random-key")(mrn)
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            "vitalmon/cmd/admit",
            "-m",
            json.dumps({"ward": "icu", "bed": "8", "patient": mrn, "by": "kim"}),
        ],
        check=True,
        timeout=10,
    )
    now = time.time()
    for i in range(20):
        publisher.publish("vitals/icu/8/ox", {"ts": now - 25 + i, "spo2": 80, "patient": mrn})
    raised = wait_for(alerts.json, 5, "the alert")[0]
    assert raised["patient"] == expected
    publisher.publish("vitalmon/cmd/ack", {"id": raised["id"], "by": "kim"})
    publisher.publish("vitalmon/cmd/discharge", {"ward": "icu", "bed": "8", "patient": mrn})
    wait_for(lambda: any("discharged" in a["message"] for a in alerts.json()), 5, "discharge")
    d.terminate()
    d.start()
    d.terminate()
    log_text = d.log()
    assert "DEBUG" in log_text  # the most talkative level was on
    assert password not in log_text
    assert mrn not in log_text
    conn = sqlite3.connect(tmp_path / "vitals.db")
    try:
        stored = [
            row
            for table in ("readings", "alert_events", "audit", "beds")
            for row in conn.execute(f"SELECT * FROM {table}")
        ]
    finally:
        conn.close()
    assert stored and mrn not in repr(stored)
    assert expected in repr(stored)


def test_check_config_warns_of_every_readable_secret_of_routes_and_the_web(tmp_path: Path) -> None:
    """Route secrets (webhook key, SMTP password), the web's TLS key and users file are
    secrets too: readable by others, check-config says which key names them."""
    from monitor.cli import secret_warnings
    from monitor.config import parse

    def secret(name: str, mode: int) -> str:
        p = tmp_path / name
        p.write_text("s3cret-s3cret-s3cret\n")  # (a webhook key: 16 bytes at least)
        p.chmod(mode)
        return str(p)

    cfg = parse(
        {
            "alerts": {
                "routes": [
                    {"name": "hook", "receiver": {"type": "webhook", "url": "http://h/",
                                                  "secret_file": secret("hook", 0o644)}},
                    {"name": "mail", "receiver": {"type": "smtp", "host": "mx",
                                                  "from": "vm@ward.example",
                                                  "to": ["kim@ward.example"], "username": "u",
                                                  "password_file": secret("smtp", 0o640)}},
                    {"name": "ok", "receiver": {"type": "webhook", "url": "http://h/",
                                                "secret_file": secret("fine", 0o600)}},
                ]
            },
            "web": {"users_file": secret("users", 0o644),
                    "tls": {"cert_file": secret("crt", 0o644), "key_file": secret("key", 0o604)}},
        }
    )  # fmt: skip
    keys = sorted(w.split(":")[0] for w in secret_warnings(cfg))
    assert keys == [
        "alerts.routes[0].receiver.secret_file",
        "alerts.routes[1].receiver.password_file",
        "web.tls.key_file",
        "web.users_file",
    ]
