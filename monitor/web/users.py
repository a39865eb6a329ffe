"""The web station's users: a YAML file of names, roles and Argon2id password hashes.

Contract:

* :class:`Users` reads ``web.users_file`` (``users: {name: {role, password}}``) and
  reads it again when it changes, so ``vitalmon user add`` needs no restart. A file that
  cannot be read or is malformed keeps the users last read (and is logged); at start it
  is an error.
* :meth:`Users.verify` -> the :class:`User` or None. It always spends one Argon2
  verification, whether the name exists or not, so the time does not tell names apart.
* Roles are ordered: ``viewer`` sees; ``nurse`` also acknowledges and pauses;
  ``charge`` also admits and discharges (:data:`ALLOWED`).
* :func:`add_user`, :func:`remove_user` write the file atomically with mode 0600;
  passwords are never stored or logged in clear.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("vitalmon.web.users")

ROLES = ("viewer", "nurse", "charge")
#: action -> the roles allowed to do it
ALLOWED = {
    "view": {"viewer", "nurse", "charge"},
    "ack": {"nurse", "charge"},
    "pause": {"nurse", "charge"},
    "admit": {"charge"},
    "discharge": {"charge"},
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # Argon2id, the library's (RFC 9106 low-memory) parameters


@functools.cache
def _dummy() -> str:
    """Verified against when the name is unknown, so that the time is the same."""
    return _hasher.hash("vitalmon: no such user")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str

    def may(self, action: str) -> bool:
        return self.role in ALLOWED.get(action, set())


class UsersFileError(ValueError):
    pass


def _parse(text: str, path: str) -> dict[str, tuple[str, str]]:
    doc = yaml.safe_load(text) if text.strip() else {}
    doc = doc or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("users", {}), dict):
        raise UsersFileError(f"{path}: expected 'users: {{name: {{role, password}}}}'")
    out: dict[str, tuple[str, str]] = {}
    for name, entry in (doc.get("users") or {}).items():
        where = f"{path}: users.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            raise UsersFileError(f"{where}: bad user name")
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: expected {{role, password}}")
        role, pw = entry.get("role"), entry.get("password")
        if role not in ROLES:
            raise UsersFileError(f"{where}.role: one of {', '.join(ROLES)}")
        if not isinstance(pw, str) or not pw.startswith("$argon2"):
            raise UsersFileError(f"{where}.password: an Argon2 hash (vitalmon user add)")
        out[name] = (role, pw)
    return out


def read_users(path: str) -> dict[str, tuple[str, str]]:
    """name -> (role, hash); a missing file is no users. UsersFileError if malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersFileError(f"{path}: {exc.strerror or exc}") from exc
    try:
        return _parse(text, path)
    except yaml.YAMLError as exc:
        raise UsersFileError(f"{path}: not YAML ({exc})") from exc


class Users:
    def __init__(self, path: str) -> None:
        self.path = path
        self._users = read_users(path)  # at start: an error is fatal
        self._stamp = self._mtime()

    def _mtime(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def _refresh(self) -> None:
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        try:
            self._users = read_users(self.path)
        except UsersFileError as exc:
            log.error("users file not re-read, the last users stay: %s", exc)
        self._stamp = stamp

    def __len__(self) -> int:
        return len(self._users)

    def get(self, name: str) -> User | None:
        """The user as the file says now (a removed user's session ends)."""
        self._refresh()
        entry = self._users.get(name)
        return None if entry is None else User(name, entry[0])

    def verify(self, name: str, password: str) -> User | None:
        self._refresh()
        entry = self._users.get(name)
        try:
            _hasher.verify(entry[1] if entry else _dummy(), password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, entry[0]) if entry else None


def _write(path: str, users: dict[str, tuple[str, str]]) -> None:
    doc: dict[str, Any] = {
        "users": {n: {"role": r, "password": h} for n, (r, h) in sorted(users.items())}
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".users-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# vitalmon web users: written by `vitalmon user`; hashes are Argon2id\n")
            yaml.safe_dump(doc, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UsersFileError(f"a password has at least {MIN_PASSWORD} characters")


def add_user(path: str, name: str, role: str, password: str) -> bool:
    """Create or replace a user; -> whether it existed."""
    if not NAME.match(name):
        raise UsersFileError(
            f"bad user name {name!r}: letters, digits and ._@- (at most 64, not first)"
        )
    if role not in ROLES:
        raise UsersFileError(f"role is one of {', '.join(ROLES)}")
    check_password(password)
    users = read_users(path)
    existed = name in users
    users[name] = (role, _hasher.hash(password))
    _write(path, users)
    return existed


def remove_user(path: str, name: str) -> bool:
    users = read_users(path)
    if users.pop(name, None) is None:
        return False
    _write(path, users)
    return True
