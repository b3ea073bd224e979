"""POP3 and the login throttle shared with IMAP and submission (core/throttle.py), over
StringTransport: failed PASS/AUTH count per client address across connections, and a
blocked address gets -ERR [SYS/TEMP] (RFC 3206 4) and a close, without a password
check. The real-socket, cross-protocol form is tests/integration/test_login_throttle.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pop3_helpers import put_message
from test_pop3_session import ALICE, PASSWORD, Harness

from mailserver.core.throttle import LoginThrottle

REFUSED = "-ERR [SYS/TEMP] Too many failed logins from your address; try again later."
FAILED = "-ERR [AUTH] Authentication failed."


def harness(tmp_path: Path, limit: int) -> Harness:
    pop = Harness(tmp_path)
    pop.factory.login_throttle = pop.throttle = LoginThrottle(limit=limit, window=600,
                                                              clock=pop.clock)
    return pop


def test_failures_block_the_address_across_connections(tmp_path: Path) -> None:
    pop = harness(tmp_path, limit=4)
    put_message(pop.maildir, b"Subject: x\n\nbody\n")
    first = pop.connect()
    for _ in range(2):
        assert first.send(f"USER {ALICE}\r\nPASS wrong\r\n".encode()) == ["+OK", FAILED]
    second = pop.connect()
    plain = base64.b64encode(f"\0{ALICE}\0wrong".encode())
    assert second.send(b"AUTH PLAIN " + plain + b"\r\n") == [FAILED]
    assert not pop.throttle.blocked("192.0.2.7")
    assert second.send(b"AUTH PLAIN\r\n") == ["+ "]
    assert second.send(plain + b"\r\n") == [FAILED]
    assert pop.throttle.blocked("192.0.2.7")
    # The right password, on an open connection or a new one, is no longer checked.
    assert first.send(f"USER {ALICE}\r\nPASS {PASSWORD.decode()}\r\n".encode()) == [
        "+OK", REFUSED]
    assert first.transport.disconnecting
    third = pop.connect()
    right = base64.b64encode(f"\0{ALICE}\0{PASSWORD.decode()}".encode())
    assert third.send(b"AUTH PLAIN " + right + b"\r\n") == [REFUSED]
    assert third.transport.disconnecting
    fourth = pop.connect()
    assert fourth.send(b"AUTH PLAIN\r\n") == [REFUSED]  # before the "+ " continuation
    assert fourth.transport.disconnecting
    # Refusals do not count: the block ends when the failures age out.
    pop.clock.advance(600)
    assert pop.connect().login() == ["+OK", "+OK Logged in, 1 messages."]


def test_the_per_connection_limit_still_closes_first(tmp_path: Path) -> None:
    """Three failures close the connection (MAX_AUTH_FAILURES) well before the address
    is blocked; each one is counted for the address."""
    pop = harness(tmp_path, limit=10)
    c = pop.connect()
    assert c.send(f"USER {ALICE}\r\nPASS a\r\nUSER {ALICE}\r\nPASS b\r\n"
                  f"USER {ALICE}\r\nPASS c\r\n".encode()) == [
        "+OK", FAILED, "+OK", FAILED, "+OK", FAILED,
        "-ERR [AUTH] Too many authentication failures."]
    assert c.transport.disconnecting
    assert len(pop.throttle._failures["192.0.2.7"]) == 3
    assert pop.connect().login() == ["+OK", "+OK Logged in, 0 messages."]


def test_failures_elsewhere_block_pop3(tmp_path: Path) -> None:
    """The throttle is the context's, fed by IMAP and submission too: failures recorded
    there refuse POP3 logins from that address, and only from that address."""
    pop = harness(tmp_path, limit=2)
    pop.throttle.failed("192.0.2.7")  # e.g. a wrong IMAP LOGIN
    pop.throttle.failed("192.0.2.7")  # and a wrong submission AUTH
    pop.throttle.failed("198.51.100.1")
    c = pop.connect()
    assert c.login() == ["+OK", REFUSED]
