"""Patient identifiers: keyed pseudonyms for what is stored or published, masks for logs,
and a permission check for secret files.

* :class:`Pseudonymizer`: ``p-`` + the first 16 hex digits of HMAC-SHA256(key, id), the
  same for the same key and id across runs and hosts, so a patient's data can be joined
  by whoever holds nothing but the pseudonym; without the key the id cannot be found by
  trying candidate ids. :meth:`Pseudonymizer.digest` is the bare 16 hex digits, which is
  what the InfluxDB sink's ``patient`` tag has always been.
* :func:`mask`: ``pt#`` + 8 hex digits under a key drawn at random when the process
  starts: stable within one run, so lines about one patient can be followed, and
  unrelated to any stored pseudonym or to another run.
* :func:`check_secret_file`: a warning when a key, token or password file can be read
  (or written) by group or others.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import overload

PREFIX = "p-"
MASK_PREFIX = "pt#"


class Pseudonymizer:
    """Patient id -> ``p-`` + 16 hex digits of HMAC-SHA256 with a secret key. ``None``
    and ``""`` (no patient) are returned as they are."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key is empty")
        self._key = key

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pseudonymizer:
        """The key is the file's first line without its newline (as every secret file in
        the configuration), UTF-8 encoded."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"{os.fspath(path)}: the first line (the key) is empty")
        return cls(lines[0].encode())

    def digest(self, patient: str) -> str:
        """The first 16 hex digits of HMAC-SHA256(key, patient), without prefix."""
        return hmac.new(self._key, patient.encode(), hashlib.sha256).hexdigest()[:16]

    @overload
    def __call__(self, patient: str) -> str: ...
    @overload
    def __call__(self, patient: None) -> None: ...
    @overload
    def __call__(self, patient: str | None) -> str | None: ...
    def __call__(self, patient: str | None) -> str | None:
        if not patient:
            return patient
        return PREFIX + self.digest(patient)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"


_MASK_KEY = secrets.token_bytes(32)


def mask(patient: str | None) -> str:
    """A patient id for a log line: ``pt#`` + 8 hex digits under a per-process random key
    (``-`` for no patient). The raw id never appears."""
    if not patient:
        return "-"
    return MASK_PREFIX + hmac.new(_MASK_KEY, patient.encode(), hashlib.sha256).hexdigest()[:8]


def check_secret_file(path: str | os.PathLike[str]) -> str | None:
    """A warning when the file's mode gives group or others any access (``mode & 0o077``),
    else ``None``. Symbolic links are followed: the mode of the file itself counts."""
    name = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(name).st_mode)
    except OSError as exc:
        return f"{name}: cannot check its permissions ({exc.strerror})"
    if not mode & 0o077:
        return None
    who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
    return f"{name}: secret file is accessible by {who} (mode {mode:04o}); run chmod 600 {name}"
