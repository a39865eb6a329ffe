"""Sessions, CSRF tokens and login throttling for the web station.

Contract:

* A session is a random 256-bit token in the ``vitalmon_session`` cookie (``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` over HTTPS), mapped in memory to the user's name, its
  CSRF token and its clock. It ends ``session_max_s`` after the login, after
  ``session_idle_s`` without a request, at logout, or when the user is removed from the
  users file. A restart of the station ends every session (users log in again).
* Every state-changing request carries the session's CSRF token (header
  ``X-CSRF-Token``, or form field ``csrf``); the login form carries a pre-session token
  of its own (cookie ``vitalmon_login``), so that no other site can log a browser in.
* :class:`Throttle`: after ``max_failed_logins`` failures for a user name, or four
  times as many from one client address (a ward's stations may share one, behind a
  proxy), further attempts are refused for ``lockout_s`` without checking the password.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "vitalmon_session"
#: an address may fail this many times more often than a user name
ADDR_FACTOR = 4
LOGIN_COOKIE = "vitalmon_login"


@dataclass(slots=True)
class Session:
    user: str
    csrf: str
    created: float
    seen: float


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens (False if either is missing)."""
    if not a or not b:
        return False
    # as bytes: compare_digest refuses non-ASCII str (a forged header must get 403, not 500)
    return hmac.compare_digest(
        str(a).encode("utf-8", "surrogatepass"), str(b).encode("utf-8", "surrogatepass")
    )


@dataclass
class Sessions:
    max_s: float
    idle_s: float
    _by_token: dict[str, Session] = field(default_factory=dict)

    def create(self, user: str, now: float | None = None) -> tuple[str, Session]:
        t = time.time() if now is None else now
        self._sweep(t)
        token = secrets.token_urlsafe(32)
        s = Session(user, secrets.token_urlsafe(32), t, t)
        self._by_token[token] = s
        return token, s

    def get(
        self, token: str | None, now: float | None = None, touch: bool = True
    ) -> Session | None:
        if not token:
            return None
        t = time.time() if now is None else now
        s = self._by_token.get(token)
        if s is None:
            return None
        if t - s.created > self.max_s or t - s.seen > self.idle_s:
            del self._by_token[token]
            return None
        if touch:
            s.seen = t
        return s

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def end_user(self, user: str) -> None:
        for token in [k for k, s in self._by_token.items() if s.user == user]:
            del self._by_token[token]

    def _sweep(self, t: float) -> None:
        for token in [
            k
            for k, s in self._by_token.items()
            if t - s.created > self.max_s or t - s.seen > self.idle_s
        ]:
            del self._by_token[token]

    def __len__(self) -> int:
        return len(self._by_token)


@dataclass
class Throttle:
    max_failed: int
    lockout_s: float
    #: key (``user:<name>`` or ``addr:<ip>``) -> (failures, time of the last failure)
    _failed: dict[str, tuple[int, float]] = field(default_factory=dict)

    def locked(self, keys: list[str], now: float | None = None) -> float:
        """Seconds left of the longest lockout among ``keys`` (0: may try)."""
        t = time.time() if now is None else now
        left = 0.0
        for k in keys:
            n, last = self._failed.get(k, (0, 0.0))
            if n >= self.max_failed * (ADDR_FACTOR if k.startswith("addr:") else 1):
                if t - last >= self.lockout_s:
                    del self._failed[k]  # the lockout is over: a fresh count
                else:
                    left = max(left, self.lockout_s - (t - last))
        return left

    def attempt(self, keys: list[str], now: float | None = None) -> float:
        """Before a password is checked: the seconds of lockout left (0: go on), and if
        none, the attempt counted as failed already -- so that a burst of parallel
        attempts cannot all pass the check before any has failed. A success clears it
        (:meth:`succeeded`)."""
        left = self.locked(keys, now)
        if left <= 0:
            self.failed(keys, now)
        return left

    def failed(self, keys: list[str], now: float | None = None) -> None:
        t = time.time() if now is None else now
        if len(self._failed) > 100_000:  # a flood of names: forget the oldest half
            for k in sorted(self._failed, key=lambda k: self._failed[k][1])[:50_000]:
                del self._failed[k]
        for k in keys:
            n, _ = self._failed.get(k, (0, 0.0))
            self._failed[k] = (n + 1, t)

    def succeeded(self, keys: list[str]) -> None:
        for k in keys:
            self._failed.pop(k, None)
