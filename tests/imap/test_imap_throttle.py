"""IMAP and the login throttle shared with POP3 and submission (core/throttle.py), over
StringTransport: failed LOGIN/AUTHENTICATE count per client address across
connections, and a blocked address gets NO [UNAVAILABLE] (RFC 5530) and BYE without a
password check. The real-socket, cross-protocol form is tests/integration/
test_login_throttle.py."""

from __future__ import annotations

import base64
from pathlib import Path

from session_harness import PASSWORD, Session
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailserver.core.throttle import LoginThrottle

RIGHT = b'LOGIN alice@example.org "' + PASSWORD.encode() + b'"'
WRONG = b"LOGIN alice@example.org wrong"
REFUSED = [b"r NO [UNAVAILABLE] Too many failed logins from your address; try again later",
           b"* BYE Too many failed logins"]


def connect(root: Path, throttle: LoginThrottle, ip: str = "192.0.2.9") -> Session:
    session = Session(root, throttle=throttle,
                      transport=StringTransport(peerAddress=IPv4Address("TCP", ip, 5000)))
    session.take()
    return session


def test_failures_block_the_address_across_connections(tmp_path: Path) -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=600, clock=clock)
    first = connect(tmp_path, throttle)
    for n in range(3):
        assert first.command(b"f%d " % n + WRONG) == [
            b"f%d NO [AUTHENTICATIONFAILED] Authentication failed" % n]
    assert throttle.blocked("192.0.2.9")
    # Below IMAP's own 5 a connection, but the right password is no longer checked.
    assert first.command(b"r " + RIGHT) == REFUSED
    assert first.transport.disconnecting
    second = connect(tmp_path, throttle)
    assert second.command(b"r " + RIGHT) == REFUSED
    third = connect(tmp_path, throttle)
    # AUTHENTICATE is refused before its "+" continuation too.
    assert third.command(b"r AUTHENTICATE PLAIN") == REFUSED
    # Refusals do not count as failures: the block ends when the failures age out.
    clock.advance(600)
    assert not throttle.blocked("192.0.2.9")
    fourth = connect(tmp_path, throttle)
    assert fourth.command(b"r " + RIGHT)[-1].startswith(b"r OK [CAPABILITY ")


def test_another_address_is_not_blocked(tmp_path: Path) -> None:
    throttle = LoginThrottle(limit=1, clock=Clock())
    guesser = connect(tmp_path, throttle, "192.0.2.9")
    assert guesser.command(b"a " + WRONG) == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed"]
    other = connect(tmp_path, throttle, "198.51.100.4")
    assert other.command(b"r " + RIGHT)[-1].startswith(b"r OK [CAPABILITY ")


def test_failures_recorded_here_block_other_protocols(tmp_path: Path) -> None:
    """What POP3 and submission consult: the same LoginThrottle object, fed by IMAP's
    LOGIN and AUTHENTICATE failures (an authorization identity too: a refused login)."""
    throttle = LoginThrottle(limit=3, clock=Clock())
    session = connect(tmp_path, throttle)
    session.command(b"a " + WRONG)
    bad = base64.b64encode(b"\0alice@example.org\0wrong")
    session.command(b"b AUTHENTICATE PLAIN " + bad)
    assert not throttle.blocked("192.0.2.9")
    other = base64.b64encode(b"bob@example.org\0alice@example.org\0" + PASSWORD.encode())
    assert session.command(b"c AUTHENTICATE PLAIN " + other) == [
        b"c NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert throttle.blocked("192.0.2.9")
