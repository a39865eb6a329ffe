"""monitor.privacy: keyed pseudonyms, log masks, secret file permissions."""

from __future__ import annotations

import os
import re
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
