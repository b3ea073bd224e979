"""One login throttle for every protocol, on the real server over real sockets: failed
logins from an address over IMAP, POP3 or submission add up, and once they reach
abuse.login_failures every protocol refuses that address's logins (even with
the right password, which is then never checked): a guesser gains nothing by switching
protocol (auth/checker.py, core/throttle.py)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable

from server_harness import PASSWORD, RunningServer
from wire import Wire

LISTEN = {"smtp": "tcp:0:interface=127.0.0.1",
          "submissions": "tcp:0:interface=127.0.0.1",
          "pop3s": "tcp:0:interface=127.0.0.1",
          "imaps": "tcp:0:interface=127.0.0.1"}
ALICE = "alice@example.org"
LIMIT = 3  # below IMAP's 5 and at POP3's 3 per connection: the throttle decides

IMAP_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed"
IMAP_REFUSED = "NO [UNAVAILABLE] Too many failed logins from your address; try again later"
POP3_FAILED = "-ERR [AUTH] Authentication failed."
POP3_REFUSED = "-ERR [SYS/TEMP] Too many failed logins from your address; try again later."
SMTP_FAILED = "535 5.7.8 Authentication credentials invalid"
SMTP_REFUSED = ("421 4.7.0 mx.test.example Error: too many failed authentications from "
                "your address; try again later")


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test server's self-signed certificate
    return context


class Lines(Wire):
    """Implicit TLS (RFC 8314) and one line at a time: POP3 and IMAP."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address)
        self.sock = tls_context().wrap_socket(self.sock)


def imap(server: RunningServer) -> Lines:
    client = Lines(server.address("imaps"))
    assert client.line().startswith("* OK [CAPABILITY IMAP4rev1 ")
    return client


def pop3(server: RunningServer) -> Lines:
    client = Lines(server.address("pop3s"))
    assert client.line() == "+OK mailserver POP3 server ready."
    return client


def submission(server: RunningServer) -> Wire:
    client = Wire(server.address("submissions"))
    client.sock = tls_context().wrap_socket(client.sock)
    client.greet()
    return client


def plain(password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()


def start(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory(listen=LISTEN, abuse={"login_failures": LIMIT, "login_delay_max": 0})


def assert_every_protocol_refuses(server: RunningServer) -> None:
    """The right password, over each protocol: refused, the connection closed."""
    client = imap(server)
    assert client.ask(f'r LOGIN {ALICE} "{PASSWORD}"') == f"r {IMAP_REFUSED}"
    assert client.line() == "* BYE Too many failed logins"
    assert client.closed()
    client = pop3(server)
    assert client.ask(f"USER {ALICE}") == "+OK"
    assert client.ask(f"PASS {PASSWORD}") == POP3_REFUSED
    assert client.closed()
    client = pop3(server)
    assert client.ask(f"AUTH PLAIN {plain(PASSWORD)[11:]}") == POP3_REFUSED
    assert client.closed()
    smtp = submission(server)
    assert smtp.command(plain(PASSWORD)) == SMTP_REFUSED
    assert smtp.closed()


def test_imap_failures_refuse_pop3_and_submission(
        server_factory: Callable[..., RunningServer]) -> None:
    server = start(server_factory)
    client = imap(server)
    for n in range(LIMIT):
        assert client.ask(f"f{n} LOGIN {ALICE} wrong{n}") == f"f{n} {IMAP_FAILED}"
    # Still open (IMAP's own limit is 5 a connection), but no more password checks.
    assert client.ask(f'g LOGIN {ALICE} "{PASSWORD}"') == f"g {IMAP_REFUSED}"
    assert client.line() == "* BYE Too many failed logins"
    assert client.closed()
    assert_every_protocol_refuses(server)
    assert "login refused: too many failures from 127.0.0.1" in server.log()


def test_failures_over_each_protocol_add_up(
        server_factory: Callable[..., RunningServer]) -> None:
    server = start(server_factory)
    smtp = submission(server)
    assert smtp.command(plain("wrong")) == SMTP_FAILED
    pop = pop3(server)
    assert pop.ask(f"USER {ALICE}") == "+OK"
    assert pop.ask("PASS wrong") == POP3_FAILED
    client = imap(server)
    # Two failures so far, one per protocol: the right password still works here ...
    assert client.ask(f'a LOGIN {ALICE} "{PASSWORD}"').startswith("a OK [CAPABILITY ")
    other = imap(server)
    assert other.ask(f"b LOGIN {ALICE} wrong") == f"b {IMAP_FAILED}"
    # ... and after the third, over any of them, nothing does: not even on the POP3 and
    # submission connections that are still open.
    assert pop.ask(f"USER {ALICE}") == "+OK"
    assert pop.ask(f"PASS {PASSWORD}") == POP3_REFUSED
    assert smtp.command(plain(PASSWORD)) == SMTP_REFUSED
    assert_every_protocol_refuses(server)
    # A session logged in before is not affected.
    assert client.ask("n NOOP") == "n OK Noop completed"
