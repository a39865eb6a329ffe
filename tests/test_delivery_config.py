"""``alerts.routes``: complete validation with key paths, and docs/delivery.md as written
(its YAML validates, its webhook receiver accepts what vitalmon sends and refuses a
forged signature)."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import wait_for

from monitor.broker import free_port
from monitor.config import ConfigError, WebhookReceiverConfig, parse, read_secret
from monitor.model import Priority, new_alert
from monitor.sinks.delivery.webhook import Refused, WebhookReceiver, body_of, signature

DOCS = Path(__file__).resolve().parent.parent / "docs" / "delivery.md"


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, env={})
    return info.value.errors


def routes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"alerts": {"routes": list(items)}}


def test_every_route_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("k" * 16 + "\n")
    gone = "/nonexistent/vitalmon.key"
    errs = errors_of(
        routes(
            {
                "name": "pager",
                "match": {"wards": [], "priorities": ["urgent"], "kinds": ["physio"]},
                "receiver": {"type": "webhook", "url": "ftp://pager", "secret_file": gone},
                "retry_min_s": 10,
                "retry_max_s": 1,
            },
            {
                "name": "bad name!",
                "receiver": {"type": "smtp", "host": "mail", "from": "nobody", "to": []},
                "colour": "red",
            },
            {
                "name": "acm",
                "receiver": {"type": "hl7-mllp", "host": "acm", "port": 70000},
                "match": {"states": ["open"], "escalated": "sometimes"},
            },
            {"name": "pager", "receiver": {"type": "mqtt", "topic": "pager/{room}"}},
            {"name": "fax", "receiver": {"type": "fax"}},
            {
                "name": "hook",
                "receiver": {
                    "type": "webhook",
                    "url": "https://user:hunter2@hooks.example/x",
                    "secret_file": str(secret),
                },
            },
            {
                "name": "mail",
                "receiver": {
                    "type": "smtp",
                    "host": "mail",
                    "starttls": False,
                    "username": "u",
                    "password_file": str(secret),
                    "from": "a@b.example",
                    "to": ["c@d.example"],
                },
            },
            {
                "name": "http-ca",
                "receiver": {
                    "type": "webhook",
                    "url": "http://h/x",
                    "secret_file": str(secret),
                    "ca_file": str(secret),
                },
            },
            {"name": "twice", "receiver": {"type": "mqtt", "topic": "a/{ward}"}},
            {"name": "twice", "receiver": {"type": "mqtt", "topic": "b/{ward}"}},
        )
    )
    assert errs == [
        "alerts.routes[0].match.wards: List should have at least 1 item after validation, not 0",
        "alerts.routes[0].match.priorities[0]: Input should be 'low', 'medium' or 'high'",
        "alerts.routes[0].match.kinds[0]: Input should be 'physiological', 'trend', 'score', "
        "'device' or 'technical'",
        "alerts.routes[0].receiver.url: url must be http://host/... or https://host/...",
        f"alerts.routes[0].receiver.secret_file: cannot read secret file {gone!r}",
        "alerts.routes[0].retry_max_s: must be >= retry_min_s (10)",
        "alerts.routes[1].name: a route name is letters, digits, '_', '.' and '-' (at most 64, "
        "starting with a letter or digit), e.g. pager-3west; not 'bad name!'",
        "alerts.routes[1].receiver.from: not an e-mail address: 'nobody'",
        "alerts.routes[1].receiver.to: List should have at least 1 item after validation, not 0",
        "alerts.routes[1].colour: Extra inputs are not permitted",
        "alerts.routes[2].match.states[0]: Input should be 'active', 'acknowledged' or 'resolved'",
        "alerts.routes[2].match.escalated: Input should be a valid boolean, unable to interpret "
        "input",
        "alerts.routes[2].receiver.port: Input should be less than or equal to 65535",
        "alerts.routes[3].receiver.topic: unknown placeholders ['{room}']; allowed: "
        "['{bed}', '{device}', '{priority}', '{vital}', '{ward}']",
        "alerts.routes[4].receiver: Input tag 'fax' found using 'type' does not match any of "
        "the expected tags: 'mqtt', 'hl7-mllp', 'webhook', 'smtp'",
        "alerts.routes[5].receiver.url: credentials do not go in the url (it is logged): the "
        "receiver checks the signature made with secret_file",
        "alerts.routes[6].receiver: a login needs starttls: true (a password never goes in clear)",
        "alerts.routes[7].receiver: ca_file is for an https url",
        "alerts.routes: route names must be unique: 'twice' is used 2 times",
    ]
    assert not any("hunter2" in e for e in errs)


def test_a_route_needs_a_name_and_a_receiver_and_defaults_the_rest() -> None:
    assert errors_of(routes({"match": {"wards": ["icu"]}})) == [
        "alerts.routes[0].name: Field required",
        "alerts.routes[0].receiver: Field required",
    ]
    cfg = parse(routes({"name": "p", "receiver": {"type": "mqtt", "topic": "pager/{ward}"}}))
    r = cfg.alerts.routes[0]
    assert (r.retry_min_s, r.retry_max_s, r.down_alarm_s, r.receiver.timeout_s) == (
        0.5,
        30,
        30,
        5,
    )
    assert r.match.model_dump() == {
        "wards": None,
        "priorities": None,
        "kinds": None,
        "states": None,
        "escalated": None,
    }


def test_check_config_lists_route_errors(tmp_path: Path) -> None:
    f = tmp_path / "v.yaml"
    f.write_text(
        "alerts:\n  routes:\n"
        "    - {name: a, receiver: {type: webhook, url: 'https://h/x', secret_file: /nope}}\n"
        "    - {name: a, receiver: {type: hl7-mllp, host: acm}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "-c", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "alerts.routes[0].receiver.secret_file: cannot read secret file '/nope'" in out.stderr
    assert "alerts.routes[1].receiver.port: Field required" in out.stderr


def test_an_empty_blank_or_short_secret_is_refused_at_load_with_its_key_path(
    tmp_path: Path,
) -> None:
    """A webhook key file that starts with a line break (the key b"": anyone can sign),
    an empty one (was an IndexError when the daemon started), a blank or short one (< 16
    bytes) are refused when the config is loaded, at their key paths; so is an empty
    password (SMTP, MQTT), API token or pseudonym key. The errors never show a secret."""
    files = {
        "newline": "\nthe-real-key-on-line-two\n",
        "empty": "",
        "blank": " " * 20 + "\n",
        "short": "short-k3y\n",
        "good": "a-good-key-of-24-bytes!!\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    def f(name: str) -> str:
        return str(tmp_path / name)

    assert read_secret(f("empty")) == ""  # (no IndexError)
    assert read_secret(f("newline")) == ""
    mail = {"type": "smtp", "host": "mx", "from": "a@b.example", "to": ["c@d.example"]}
    hook = {"type": "webhook", "url": "http://h/"}
    errs = errors_of(
        {
            "mqtt": {"username": "vitalmon", "password_file": f("empty")},
            "store": [
                {
                    "type": "influxdb",
                    "url": "http://db",
                    "bucket": "b",
                    "token_file": f("newline"),
                    "patient_key_file": f("blank"),
                }
            ],
            "privacy": {"pseudonymize_patient": True, "key_file": f("empty")},
            **routes(
                *(
                    {"name": n, "receiver": {**hook, "secret_file": f(n)}}
                    for n in ("newline", "empty", "blank", "short", "good")
                ),
                {"name": "mail",
                 "receiver": {**mail, "username": "u", "password_file": f("newline")}},
            ),
        }
    )  # fmt: skip
    empty = "(the first line of {!r}) is empty"
    assert errs == [
        f"mqtt.password_file: the password {empty.format(f('empty'))}",
        f"store[0].token_file: the API token {empty.format(f('newline'))}",
        f"store[0].patient_key_file: the pseudonym key {empty.format(f('blank'))}",
        f"alerts.routes[0].receiver.secret_file: the HMAC key {empty.format(f('newline'))}",
        f"alerts.routes[1].receiver.secret_file: the HMAC key {empty.format(f('empty'))}",
        f"alerts.routes[2].receiver.secret_file: the HMAC key {empty.format(f('blank'))}",
        f"alerts.routes[3].receiver.secret_file: the HMAC key (the first line of "
        f"{f('short')!r}) is 9 bytes: at least 16 are needed (e.g. openssl rand -hex 32)",
        f"alerts.routes[5].receiver.password_file: the password {empty.format(f('newline'))}",
        f"privacy.key_file: the pseudonym key {empty.format(f('empty'))}",
        # (the checks run again without the refused files, which then count as not given)
        "alerts.routes[5].receiver: username and password_file go together",
        "privacy: pseudonymize_patient needs key_file",
    ]
    assert not any("short-k3y" in e or "real-key" in e for e in errs)
    # check-config says it too (exit 1), and the daemon never starts with such a key
    cfg = tmp_path / "v.yaml"
    cfg.write_text(
        "alerts:\n  routes:\n    - {name: a, receiver: {type: webhook, url: 'http://h/', "
        f"secret_file: {f('empty')}}}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert f"alerts.routes[0].receiver.secret_file: the HMAC key {empty.format(f('empty'))}" in (
        out.stderr
    )
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------- the docs


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def test_the_documented_routes_validate(tmp_path: Path) -> None:
    """docs/delivery.md's YAML, its secret files made in tmp_path."""
    (example,) = [b for b in _blocks("yaml") if "routes:" in b]
    files: dict[str, str] = {}
    for path in set(re.findall(r"/etc/vitalmon/[\w.-]+", example)):
        local = tmp_path / Path(path).name
        local.write_text("x" * 32 + "\n")
        files[path] = str(local)
    for path, local in files.items():
        example = example.replace(path, local)
    cfg = parse(yaml.safe_load(example), env={})
    types = [r.receiver.type for r in cfg.alerts.routes]
    assert types == ["mqtt", "hl7-mllp", "webhook", "smtp"]
    assert cfg.alerts.routes[0].match.escalated is True


def test_the_documented_webhook_receiver_checks_vitalmons_signature(tmp_path: Path) -> None:
    """The receiver snippet of docs/delivery.md, as written (its key file and port
    replaced), takes what vitalmon's webhook sender posts, once per key, and refuses a
    body signed with another key, a signed request replayed with another key (to get
    past the de-duplication) and one whose signed timestamp is older than 5 minutes."""
    (snippet,) = [b for b in _blocks("python") if "X-Vitalmon-Signature" in b]
    key, port = tmp_path / "hook.key", free_port()
    key.write_text("s3cret-key-for-the-hook\n")
    code = snippet.replace("/etc/pager/vitalmon.key", str(key)).replace(
        '("0.0.0.0", 9000)', f'("127.0.0.1", {port})'
    )
    script = tmp_path / "hook.py"
    script.write_text(code)
    log = tmp_path / "hook.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=out, stderr=subprocess.DEVNULL
        )
    try:
        alert = new_alert(
            ward="3west",
            bed="6",
            device="mon1",
            patient=None,
            vital="spo2",
            rule="spo2.low",
            kind="physiological",
            priority=Priority.HIGH,
            value=84,
            limit=85,
            message="SpO2 84 % < 85 % for 15 s",
            started=time.time(),
        )
        url = f"http://127.0.0.1:{port}/"
        good = WebhookReceiver(
            WebhookReceiverConfig(type="webhook", url=url, secret_file=str(key)), "hook"
        )
        forged_key = tmp_path / "other.key"
        forged_key.write_text("not-the-key-of-the-hook\n")
        forged = WebhookReceiver(
            WebhookReceiverConfig(type="webhook", url=url, secret_file=str(forged_key)), "hook"
        )

        async def main() -> None:
            deadline = time.monotonic() + 10
            while True:  # (until the snippet listens)
                try:
                    await good.send(alert, f"{alert.id}:1")
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await good.send(alert, f"{alert.id}:1")  # a repeat: accepted, not acted on
            with pytest.raises(Refused, match="HTTP 401"):
                await forged.send(alert, f"{alert.id}:1")
            await good.close()
            await forged.close()

        asyncio.run(main())

        def post(ts: str, key_header: str, signed_key: str) -> int:
            secret = key.read_text().splitlines()[0].encode()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request(
                    "POST",
                    "/",
                    body_of(alert),
                    {
                        "Content-Type": "application/json",
                        "X-Vitalmon-Event": key_header,
                        "X-Vitalmon-Timestamp": ts,
                        "X-Vitalmon-Signature": signature(secret, ts, signed_key, body_of(alert)),
                    },
                )
                return conn.getresponse().status
            finally:
                conn.close()

        now = str(int(time.time()))
        assert post(now, f"{alert.id}:2", f"{alert.id}:2") == 204  # (signed as vitalmon does)
        assert post(now, f"{alert.id}:7", f"{alert.id}:2") == 401  # replayed with a new key
        stale = str(int(time.time()) - 301)
        assert post(stale, f"{alert.id}:8", f"{alert.id}:8") == 401  # signed 5 min ago
        wait_for(lambda: "SpO2" in log.read_text(), 5, "the snippet's line")
    finally:
        proc.terminate()
        proc.wait(10)
    line = "high 3west/6 SpO2 84 % < 85 % for 15 s (active)"
    assert log.read_text().splitlines() == [line, line]  # (:1, then :2; never :7 or :8)
    assert os.path.exists(script)


def test_sighup_keeps_the_running_routes_and_applies_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that changes alerts.routes keeps the routes the daemon runs (its
    receivers and outboxes were built at start) and says so; the rest of alerts applies."""
    from monitor.config import load
    from monitor.daemon import Daemon
    from monitor.reload import reload

    f = tmp_path / "v.yaml"
    base = f"store: {{type: sqlite, path: {tmp_path / 'vitals.db'}}}\n"
    f.write_text(base + "alerts:\n  routes: [{name: a, receiver: {type: mqtt, topic: p/a}}]\n")
    d = Daemon(load(f), str(f))
    f.write_text(
        base + "alerts:\n  renotify_s: 60\n"
        "  routes: [{name: b, receiver: {type: mqtt, topic: p/b}}]\n"
    )
    assert asyncio.run(reload(d))
    assert [r.name for r in d.cfg.alerts.routes] == ["a"]
    assert list(d.delivery.deliverers) == ["a"]
    assert d.cfg.alerts.renotify_s == 60
    assert "alerts.routes changed; that takes a restart" in caplog.text
