"""How long the abuse defences hold an answer back, observed on a task.Clock.

tests/integration/test_abuse.py drives the same defences over real sockets and checks
the replies and the order of events; a wall-clock bound there fails on a loaded machine
(and tests never assert a time). Here the real AbuseControl, PasswordChecker and SMTP
session run on one fake reactor, whose clock is also the shared table's: a delay is
checked by advancing to just before it (no answer) and just past it (the answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes import FakeReactor, FakeTarget
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from mailserver.abuse.control import AbuseControl, open_table
from mailserver.auth.checker import PasswordChecker
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.schemes import hash_password
from mailserver.config import Config, config_from_dict
from mailserver.delivery.router import DeliveryRouter
from mailserver.interfaces import IRecipientDirectory, MailboxId, Resolution
from mailserver.smtp.server import SMTPServerFactory

#: Just short of, and just past, a delay.
EPSILON = 0.01


def config(tmp_path: Path, **abuse: object) -> Config:
    return config_from_dict({"hostname": "mx.test", "data_dir": str(tmp_path),
                             "domains": {"local": ["example.org"]}, "abuse": abuse})


def outcome(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


# -- the failure delay of a login, per account ---------------------------------------------


def checker(tmp_path: Path, **abuse: object) -> tuple[PasswordChecker, FakeReactor]:
    cfg = config(tmp_path, **abuse)
    cfg.users_file.write_text(f"alice@example.org:{hash_password('right')}\n")
    reactor = FakeReactor()
    control = AbuseControl(cfg, open_table(cfg, clock=reactor))
    return PasswordChecker(RecipientDirectory(cfg), reactor=reactor, abuse=control), reactor


def answered_after(reactor: FakeReactor, d: Deferred[Any], delay: float) -> list[Any]:
    """Advance to just before `delay` (nothing yet), then past it; the outcome."""
    result = outcome(d)
    reactor.advance(delay - EPSILON)
    assert result == []
    reactor.advance(2 * EPSILON)
    assert len(result) == 1
    return result


def test_failure_delay_grows_per_account_the_same_whether_it_exists(tmp_path: Path) -> None:
    """0.75 s, then doubled per failure (1.5 s), capped at login_delay_max (2 s): for an
    account that exists and for one that does not, so the delay does not tell them apart."""
    check, reactor = checker(tmp_path, login_failures=100, login_delay_max=2)
    for user in ("alice@example.org", "nobody@example.org"):
        for delay in (0.75, 1.5, 2.0, 2.0):
            [failure] = answered_after(
                reactor, check.requestAvatarId(UsernamePassword(user, "wrong")), delay)
            failure.trap(UnauthorizedLogin)


def test_right_password_answered_at_once_after_the_accounts_failures(tmp_path: Path) -> None:
    """Only failures wait: the owner logging in while a spray at the account is being
    delayed gets in without advancing the clock at all."""
    check, reactor = checker(tmp_path, login_failures=100, login_delay_max=1)
    pending = [outcome(check.requestAvatarId(UsernamePassword("alice@example.org", "bad")))
               for _ in range(5)]
    assert pending == [[]] * 5
    assert outcome(check.requestAvatarId(
        UsernamePassword("alice@example.org", "right"))) == ["alice@example.org"]
    reactor.advance(1 + EPSILON)
    for [failure] in pending:
        failure.trap(UnauthorizedLogin)


# -- port 25: the pregreet wait and the directory-harvest tarpit -------------------------


@implementer(IRecipientDirectory)
class OneUser:
    """bob@example.org; everyone else is unknown (550 5.1.1)."""

    def unavailable(self) -> str | None:
        return None

    def resolve(self, address: str) -> Resolution:
        if address.lower() == "bob@example.org":
            return Resolution(mailboxes=(MailboxId("example.org", "bob"),))
        return Resolution()

    def user_exists(self, address: str) -> bool:
        return address.lower() == "bob@example.org"


class Port25:
    """SMTP sessions on port 25 sharing one AbuseControl and one fake reactor."""

    def __init__(self, tmp_path: Path, **abuse: object) -> None:
        cfg = config(tmp_path, **abuse)
        self.reactor = FakeReactor()
        control = AbuseControl(cfg, open_table(cfg, clock=self.reactor))
        self.factory = SMTPServerFactory(
            cfg, DeliveryRouter(cfg, OneUser(), FakeTarget("local")), abuse=control,
            reactor=self.reactor)

    def connect(self, ip: str) -> Client:
        return Client(self, ip)


class Client:
    """One connection from `ip`: what the session wrote, as reply lines."""

    def __init__(self, port: Port25, ip: str) -> None:
        address = IPv4Address("TCP", ip, 40000)
        self.protocol = port.factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        # The session's idle timeout on the same clock, never on the global reactor.
        self.protocol.callLater = port.reactor.callLater  # type: ignore[union-attr]
        self.protocol.makeConnection(self.transport)  # type: ignore[union-attr]

    def replies(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def send(self, line: str) -> list[str]:
        self.protocol.dataReceived(line.encode() + b"\r\n")  # type: ignore[union-attr]
        return self.replies()


BANNER = "220 mx.test ESMTP mailserver"


def test_pregreet_wait_holds_the_banner_except_for_trusted_networks(tmp_path: Path) -> None:
    port = Port25(tmp_path, pregreet_wait=1, trusted_networks=["192.0.2.30/32"])
    patient = port.connect("192.0.2.32")
    port.reactor.advance(1 - EPSILON)
    assert patient.replies() == []
    trusted = port.connect("192.0.2.30")
    assert trusted.replies() == [BANNER]  # at once, while the other still waits
    port.reactor.advance(2 * EPSILON)
    assert patient.replies() == [BANNER]


def test_tarpit_delays_unknown_recipients_past_the_limit(tmp_path: Path) -> None:
    """unknown_recipients=2: the first two 550s at once, the next two each after
    tarpit_delay, the fifth 421 (after the delay too) and the session closed; another
    address, and a known recipient, are answered at once."""
    port = Port25(tmp_path, unknown_recipients=2, tarpit_delay=1)
    harvester = port.connect("192.0.2.40")
    assert harvester.replies() == [BANNER]
    assert harvester.send("EHLO bot.example")[0].startswith("250")
    assert harvester.send("MAIL FROM:<x@spam.example>") == ["250 2.1.0 Ok"]
    unknown = ["550 5.1.1 Error: user unknown"]
    for i in range(2):
        assert harvester.send(f"RCPT TO:<guess{i}@example.org>") == unknown
    for i in range(2, 4):
        assert harvester.send(f"RCPT TO:<guess{i}@example.org>") == []
        port.reactor.advance(1 - EPSILON)
        assert harvester.replies() == []
        port.reactor.advance(2 * EPSILON)
        assert harvester.replies() == unknown
    assert harvester.send("RCPT TO:<guess9@example.org>") == []
    port.reactor.advance(1 + EPSILON)
    assert harvester.replies() == [
        "421 4.7.0 mx.test Error: too many unknown recipients; closing"]
    assert harvester.transport.disconnecting
    other = port.connect("192.0.2.41")
    assert other.replies() == [BANNER]
    other.send("EHLO ok.example")
    other.send("MAIL FROM:<x@ok.example>")
    assert other.send("RCPT TO:<nobody@example.org>") == unknown
    assert other.send("RCPT TO:<bob@example.org>") == ["250 2.1.5 Ok"]
