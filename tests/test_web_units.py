"""The web station's parts below the I/O boundary: the users file (Argon2id, roles,
``vitalmon user``), sessions, the login throttle, the validation of command requests."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.config import ConfigError, parse
from monitor.web.app import _command_body
from monitor.web.sessions import Sessions, Throttle, same
from monitor.web.users import ALLOWED, Users, UsersFileError, add_user, read_users, remove_user


def test_users_are_stored_hashed_private_and_verified(tmp_path: Path) -> None:
    path = str(tmp_path / "etc" / "users.yaml")
    assert add_user(path, "kim", "nurse", "correct horse") is False
    assert add_user(path, "kim", "charge", "battery staple") is True  # replaced
    text = Path(path).read_text()
    assert "correct horse" not in text and "battery staple" not in text
    assert "$argon2id$" in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = Users(path)
    assert users.verify("kim", "correct horse") is None
    user = users.verify("kim", "battery staple")
    assert user is not None and user.role == "charge"
    assert users.verify("nobody", "battery staple") is None
    assert remove_user(path, "kim") and not remove_user(path, "kim")
    assert users.get("kim") is None  # re-read on change: a removed user is gone at once


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("users: [1, 2]", "expected"),
        ("users: {kim: {role: admin, password: '$argon2id$x'}}", "role"),
        ("users: {kim: {role: nurse, password: plain}}", "Argon2 hash"),
        ("users: {'bad name': {role: nurse, password: '$argon2id$x'}}", "bad user name"),
        ("users: {kim: [}", "not YAML"),
    ],
)
def test_a_malformed_users_file_is_refused_with_its_reason(
    tmp_path: Path, text: str, why: str
) -> None:
    p = tmp_path / "users.yaml"
    p.write_text(text)
    with pytest.raises(UsersFileError, match=why):
        read_users(str(p))


def test_a_broken_edit_keeps_the_users_last_read(tmp_path: Path) -> None:
    path = str(tmp_path / "users.yaml")
    add_user(path, "kim", "nurse", "correct horse")
    users = Users(path)
    Path(path).write_text("users: {kim: [}\n# a typo\n")
    assert users.get("kim") is not None


def test_passwords_and_names_are_checked(tmp_path: Path) -> None:
    path = str(tmp_path / "users.yaml")
    with pytest.raises(UsersFileError, match="at least 8"):
        add_user(path, "kim", "nurse", "short")
    with pytest.raises(UsersFileError, match="bad user name"):
        add_user(path, "../kim", "nurse", "long enough")
    with pytest.raises(UsersFileError, match="role"):
        add_user(path, "kim", "root", "long enough")


def test_roles_allow_what_the_issue_says() -> None:
    assert ALLOWED["ack"] == ALLOWED["pause"] == {"nurse", "charge"}
    assert ALLOWED["admit"] == ALLOWED["discharge"] == {"charge"}


def test_the_user_command_reads_the_password_from_stdin_and_never_prints_it(
    tmp_path: Path,
) -> None:
    users = tmp_path / "users.yaml"
    cfg = tmp_path / "vitalmon.yaml"
    cfg.write_text(f"web:\n  users_file: {users}\n")
    run = [sys.executable, "-m", "monitor", "user"]
    r = subprocess.run(
        [*run, "add", "ana", "--role", "viewer", "-c", str(cfg), "--password-stdin"],
        input=b"a long secret\n",
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert b"a long secret" not in r.stdout + r.stderr
    r = subprocess.run([*run, "list", "-c", str(cfg)], capture_output=True, check=True)
    assert r.stdout == b"ana\tviewer\n"
    r = subprocess.run([*run, "add", "bo", "-c", str(cfg)], capture_output=True, check=False)
    assert r.returncode == 1 and b"--role is needed" in r.stderr


def test_sessions_end_after_their_span_or_when_idle() -> None:
    s = Sessions(max_s=100, idle_s=10)
    token, sess = s.create("kim", now=0)
    assert s.get(token, now=9) is sess
    assert s.get(token, now=18) is sess  # (seen at 9: idle 9 s)
    assert s.get(token, now=29) is None  # idle 11 s
    token, _ = s.create("kim", now=0)
    for t in range(5, 100, 5):
        assert s.get(token, now=t) is not None
    assert s.get(token, now=101) is None  # the whole span is over
    assert s.get(None) is None and s.get("forged") is None
    token, _ = s.create("kim", now=0)
    s.end_user("kim")
    assert s.get(token, now=1) is None


def test_tokens_compare_in_constant_time_and_never_equal_when_missing() -> None:
    assert same("abc", "abc")
    assert not same("abc", "abd")
    assert not same(None, None) and not same("", "")


def test_the_throttle_locks_a_name_then_forgets_it() -> None:
    t = Throttle(max_failed=3, lockout_s=60)
    keys = ["user:kim", "addr:10.0.0.1"]
    for _ in range(3):
        assert t.locked(keys, now=0) == 0
        t.failed(keys, now=0)
    assert t.locked(["user:kim"], now=10) == 50
    # the address has 4x the name's allowance (stations behind one proxy)
    assert t.locked(["user:ana", "addr:10.0.0.1"], now=10) == 0
    assert t.locked(keys, now=61) == 0
    t.failed(keys, now=61)
    assert t.locked(keys, now=62) == 0  # a fresh count after the lockout


@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() |
                       st.floats() | st.text(max_size=200), max_size=6))  # fmt: skip
def test_a_command_request_is_either_a_clean_command_or_a_value_error(
    doc: dict[str, object],
) -> None:
    for action in ("ack", "pause", "admit", "discharge"):
        try:
            body = _command_body(action, doc, 120.0)
        except ValueError:
            continue
        for k in ("id", "ward", "bed", "patient"):
            if k in body:
                assert isinstance(body[k], str) and 0 < len(body[k]) <= 128
        if action == "pause":
            assert 0 < body["seconds"] <= 120.0


def test_web_config_is_validated() -> None:
    with pytest.raises(ConfigError) as exc:
        parse({"web": {"listen": "nowhere", "tls": {"cert_file": "/etc/hostname"}}})
    text = "\n".join(exc.value.errors)
    assert "web.listen" in text and "web.tls" in text
    cfg = parse({"web": {"listen": "0.0.0.0:8443"}})
    assert cfg.web.cookie_secure is False


def test_a_token_that_is_not_ascii_is_refused_not_an_error() -> None:
    """Defect: hmac.compare_digest raises TypeError on non-ASCII str, so a forged
    ``X-CSRF-Token: é`` (or ``csrf=%C3%A9`` at login) was a 500 instead of a 403."""
    assert not same("é", "abc")
    assert same("é", "é")


def test_a_dead_letter_answers_only_the_command_it_echoes() -> None:
    """Defect: a refusal was matched to a waiting command by substrings, so a dead letter
    about bed 12 (or another user's command) refused a pending command for bed 1."""
    import asyncio
    import json

    from monitor.mqtt import Message
    from monitor.web.live import Live, Refused, _Pending

    async def run() -> None:
        live = Live(parse({}), None)
        loop = asyncio.get_running_loop()
        topic = "vitalmon/cmd/pause"
        mine = _Pending("pause", topic, {"ward": "3", "bed": "1", "by": "kim"}, 0.0,
                        loop.create_future())  # fmt: skip
        live._pending.append(mine)

        def letter(payload: dict[str, object]) -> Message:
            doc = {"reason": "bad_command", "detail": "x", "topic": topic,
                   "payload": json.dumps(payload)}  # fmt: skip
            return Message("vitalmon/deadletter", json.dumps(doc).encode(), 0, False, 0, 0)

        live._dead_letter(letter({"ward": "3", "bed": "12", "by": "kim"}))
        live._dead_letter(letter({"ward": "3", "bed": "1", "by": "lee"}))
        assert not mine.answer.done()
        live._dead_letter(letter({"ward": "3", "bed": "1", "by": "kim", "seconds": 1e9}))
        with pytest.raises(Refused, match="bad_command"):
            mine.answer.result()

    asyncio.run(run())
