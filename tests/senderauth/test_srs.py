"""SRS0 addresses: made for forwarded copies, verified when a bounce comes back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mailserver.errors import ReplyError
from mailserver.interfaces import Resolution
from mailserver.senderauth.srs import SRS, SRSDirectory, load_secret

DAY = 86400.0
NOW = 20_000 * DAY


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def srs(clock: Clock | None = None) -> SRS:
    return SRS(b"k" * 32, "example.org", clock or Clock())


def test_round_trip_and_format() -> None:
    s = srs()
    address = s.forward("Joe.Bloggs+x@Sender.Test")
    local, _, domain = address.rpartition("@")
    assert domain == "example.org"
    tag, mac, stamp, orig_domain, orig_local = local.split("=", 4)
    assert (tag, orig_domain, orig_local) == ("SRS0", "Sender.Test", "Joe.Bloggs+x")
    assert len(mac) == 4 and len(stamp) == 2
    assert s.reverse(address) == "Joe.Bloggs+x@Sender.Test"
    # Some MTAs change the case of a local part on the way back.
    assert s.reverse(address.upper().replace("EXAMPLE.ORG", "example.org")) == \
        "JOE.BLOGGS+X@SENDER.TEST"


def test_null_sender_and_srs_addresses_are_not_rewritten() -> None:
    s = srs()
    assert s.forward("") == ""
    once = s.forward("a@b.test")
    assert s.forward(once) == once


@pytest.mark.parametrize("mangle", [
    lambda a: a.replace("SRS0=", "SRS0=x", 1),            # hash changed
    lambda a: a.replace("=b.test=", "=evil.test=", 1),    # original domain changed
    lambda a: a.replace("=a@", "=root@", 1),              # original local part changed
    lambda a: a.split("=")[0] + "=" + a.split("=")[1] + "@example.org",  # truncated
    lambda a: a.replace("@example.org", "@example.net"),  # not our domain
])
def test_forged_or_damaged_addresses_refused(mangle: object) -> None:
    s = srs()
    with pytest.raises(ValueError):
        s.reverse(mangle(s.forward("a@b.test")))  # type: ignore[operator]


def test_expires_after_21_days_and_survives_the_1024_day_wrap() -> None:
    clock = Clock()
    s = srs(clock)
    address = s.forward("a@b.test")
    clock.now += 21 * DAY
    assert s.reverse(address) == "a@b.test"
    clock.now += 1 * DAY
    with pytest.raises(ValueError, match="expired"):
        s.reverse(address)
    clock.now = 1023 * DAY  # day 1023: made on the last day before the counter wraps
    wrapped = s.forward("a@b.test")
    clock.now = 1025 * DAY
    assert s.reverse(wrapped) == "a@b.test"


def test_directory_answers_550_for_a_forged_address() -> None:
    class Inner:
        def resolve(self, address: str) -> Resolution:
            return Resolution()

        def user_exists(self, address: str) -> bool:
            return False

        def may_send_as(self, user: str, address: str) -> bool:
            return False

    s = srs()
    directory = SRSDirectory(Inner(), s)  # type: ignore[arg-type]
    assert directory.resolve(s.forward("a@b.test")).remote == ("a@b.test",)
    with pytest.raises(ReplyError) as refused:
        directory.resolve("SRS0=AAAA=AA=b.test=a@example.org")
    assert refused.value.reply.code == 550 and refused.value.reply.enhanced == "5.7.1"
    assert directory.resolve("srs0@example.net") == Resolution()


def test_secret_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "srs_secret"
    first = load_secret(path)
    assert len(first) == 32 and load_secret(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
