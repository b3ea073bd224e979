"""Hostile input on the MX: each case gets its RFC reply, nothing is stored, the server
stays up and its memory bounded."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import RunningServer
from wire import Wire

HEADERS = b"From: alice@example.org\r\nSubject: x\r\n\r\n"


@pytest.fixture
def wire(server: RunningServer) -> Iterator[Wire]:
    w = Wire(server.address())
    w.greet()
    yield w
    w.close()


def start_data(wire: Wire, rcpt: str = "bob@example.org") -> None:
    assert wire.command("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
    assert wire.command("DATA").startswith("354 ")


def rss_kib(server: RunningServer) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- SMTP smuggling: only <CRLF>.<CRLF> ends DATA ---------------------------------------

SMUGGLE_ENDINGS = [
    b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r",
    b"\r\n.\r\r\n", b"\r\r\n.\r\r\n", b"\r\n\x00.\r\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDINGS, ids=repr)
def test_smuggling_never_ends_data_early(server: RunningServer, wire: Wire,
                                         fake_end: bytes) -> None:
    before = {u: len(server.messages(u)) for u in ("bob@example.org", "carol@example.net")}
    start_data(wire)
    smuggled = (b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<carol@example.net>\r\n"
                b"DATA\r\nSubject: smuggled\r\n\r\nspoofed\r\n")
    wire.send(HEADERS + b"innocent" + fake_end + smuggled + b".\r\n")
    # One reply for the one message the client really sent, which is refused whole.
    assert wire.text() in ("550 5.5.2 Error: bare CR or LF in message; use CRLF",
                           "550 5.6.0 Error: NUL byte in message")
    assert wire.command("NOOP") == "250 2.0.0 Ok", "no smuggled commands were answered"
    assert {u: len(server.messages(u)) for u in before} == before


def test_bare_lf_in_command_refused(wire: Wire) -> None:
    wire.send(b"NOOP\n")
    assert wire.text() == "500 5.5.2 Syntax error: bare CR or LF in command"
    assert wire.command("NOOP") == "250 2.0.0 Ok"


# -- STARTTLS injection (CVE-2011-0411 class) ---------------------------------------------

def test_plaintext_pipelined_after_starttls_is_discarded(server: RunningServer) -> None:
    wire = Wire(server.address())
    wire.greet()
    wire.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
    assert wire.text() == "220 2.0.0 Ready to start TLS"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    wire.sock = context.wrap_socket(wire.sock)
    # Had the injected MAIL run inside TLS, this RCPT would be accepted; and EHLO must
    # be needed again (RFC 3207 4.2).
    assert wire.command("RCPT TO:<bob@example.org>") == "503 5.5.1 Error: need MAIL command"
    assert wire.command("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"
    wire.send(b"EHLO again.test\r\n")
    code, lines = wire.reply()
    assert code == 250 and "STARTTLS" not in lines
    wire.close()


def test_starttls_twice_refused(server: RunningServer) -> None:
    wire = Wire(server.address())
    wire.greet()
    wire.starttls()
    wire.send(b"EHLO x.test\r\n")
    wire.reply()
    assert wire.command("STARTTLS") == "503 5.5.1 TLS already active"
    wire.close()


# -- oversize input -----------------------------------------------------------------------

def test_overlong_command_line(wire: Wire) -> None:
    assert wire.command(b"NOOP " + b"x" * 3000) == "500 5.5.2 Line too long"
    assert wire.command("NOOP") == "250 2.0.0 Ok"


def test_megabyte_line_without_crlf_keeps_memory_bounded(server: RunningServer,
                                                         wire: Wire) -> None:
    rss_before = rss_kib(server)
    chunk = b"A" * (1024 * 1024)
    for _ in range(64):  # 64 MiB, never a line end
        wire.send(chunk)
    wire.send(b"\r\n")
    assert wire.text() == "500 5.5.2 Line too long"
    assert wire.command("NOOP") == "250 2.0.0 Ok"
    assert rss_kib(server) - rss_before < 32 * 1024, "the server did not buffer the line"


def test_message_over_size_not_stored_even_without_size_param(server: RunningServer,
                                                              server_factory) -> None:
    small = server_factory("small", limits={"message_size": 10000})
    wire = Wire(small.address())
    lines = wire.greet()
    assert "SIZE 10000" in lines
    assert wire.command("MAIL FROM:<alice@example.org> SIZE=20000") == \
        "552 5.3.4 Message size exceeds fixed maximum message size"
    start_data(wire)
    wire.send(HEADERS + (b"x" * 998 + b"\r\n") * 20 + b".\r\n")
    assert wire.text() == "552 5.3.4 Error: message too big"
    assert small.messages("bob@example.org") == []
    # The session stays usable, and a message within the limit still goes through.
    start_data(wire)
    wire.send(HEADERS + b"small\r\n.\r\n")
    assert wire.text().startswith("250 2.0.0")
    assert len(small.messages("bob@example.org")) == 1
    wire.close()


def test_bdat_over_size_consumed_and_refused(server_factory) -> None:
    small = server_factory("small", limits={"message_size": 1000})
    wire = Wire(small.address())
    wire.greet()
    wire.command("MAIL FROM:<alice@example.org>")
    wire.command("RCPT TO:<bob@example.org>")
    wire.send(b"BDAT 5000 LAST\r\n" + b"y" * 5000)
    assert wire.text() == "552 5.3.4 Error: message too big"
    assert wire.command("NOOP") == "250 2.0.0 Ok", "the chunk was consumed, in sync"
    assert small.messages("bob@example.org") == []


def test_size_counts_crlf_as_sent(server_factory) -> None:
    """RFC 1870 3: the limit counts the octets as sent, CRLF included. The reported case:
    1,401 octets of short lines against a limit of 1,000 were stored (846 octets once
    their CRLFs became LFs). Postfix answers 552; so do we, over DATA and BDAT, and a
    message of exactly 1,000 octets as sent is still stored."""
    server = server_factory("crlf", limits={"message_size": 1000})
    over = b"Subject: x\r\n\r\n" + b"a\r\n" * 281 + b"\r\n" * 272
    assert len(over) == 1401 and len(over.replace(b"\r\n", b"\n")) == 846
    wire = Wire(server.address())
    wire.greet()
    start_data(wire)
    wire.send(over + b".\r\n")
    assert wire.text() == "552 5.3.4 Error: message too big"
    assert wire.command("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    wire.send(f"BDAT {len(over)} LAST\r\n".encode() + over)
    assert wire.text() == "552 5.3.4 Error: message too big"
    assert server.messages("bob@example.org") == []
    exact = b"Subject: x\r\n\r\n" + b"\r\n" * 493
    assert len(exact) == 1000
    start_data(wire)
    wire.send(exact + b".\r\n")
    assert wire.text().startswith("250 2.0.0 Ok: queued as ")
    [stored] = server.messages("bob@example.org")
    assert stored.endswith(b"\nSubject: x\n\n" + b"\n" * 493)
    wire.close()


def test_bdat_without_transaction_consumes_chunk(wire: Wire) -> None:
    wire.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\n")
    assert wire.text() == "503 5.5.1 Error: need MAIL command"
    assert wire.command("NOOP") == "250 2.0.0 Ok"


@pytest.mark.parametrize("line", [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 12 FIRST",
                                  b"BDAT 9999999999999999999"])
def test_bdat_malformed(wire: Wire, line: bytes) -> None:
    assert wire.command(line).startswith("501 5.5.4")


# -- NUL, 8-bit, bad syntax ---------------------------------------------------------------

def test_nul_in_command(wire: Wire) -> None:
    assert wire.command(b"NO\x00OP").startswith("500 5.5.2")


def test_nul_in_data_refused(server: RunningServer, wire: Wire) -> None:
    before = len(server.messages("bob@example.org"))
    start_data(wire)
    wire.send(HEADERS + b"a\x00b\r\n.\r\n")
    assert wire.text() == "550 5.6.0 Error: NUL byte in message"
    assert len(server.messages("bob@example.org")) == before


def test_8bit_without_8bitmime_refused(server: RunningServer, wire: Wire) -> None:
    before = len(server.messages("bob@example.org"))
    start_data(wire)
    wire.send(HEADERS + "Grüße\r\n".encode() + b".\r\n")
    assert wire.text() == "550 5.6.1 Error: 8-bit data needs BODY=8BITMIME (RFC 6152)"
    assert len(server.messages("bob@example.org")) == before


@pytest.mark.parametrize("command,reply", [
    ("MAIL FROM:alice@example.org", "501 5.1.7"),
    ("MAIL FROM:<alice@example.org", "501 5.1.7"),
    ("MAIL FROM:<a@b@c>", "501 5.1.7"),
    ("MAIL FROM:<alice@example.org> FOO=BAR", "555 5.5.4"),
    ("MAIL FROM:<alice@example.org> SIZE=abc", "501 5.5.4"),
    ("MAIL FROM:<alice@example.org> BODY=9BIT", "501 5.5.4"),
    ("MAIL TO:<alice@example.org>", "501 5.5.4"),
    ("MAIL FROM:<zoë@example.org>", "550 5.6.7"),
    ("XYZZY", "500 5.5.1"),
    ("EXPN staff", "502 5.5.1"),
    ("EHLO", "501 5.5.4"),
])
def test_malformed_commands(wire: Wire, command: str, reply: str) -> None:
    assert wire.command(command).startswith(reply)
    assert wire.command("RSET") == "250 2.0.0 Ok"


@pytest.mark.parametrize("rcpt,reply", [
    ("<nobody@example.org>", "550 5.1.1 Error: user unknown"),
    ("<bob%evil.test@example.org>", "550 5.1.1 Error: user unknown"),
    ("<bob@evil.test>", "550 5.7.1 Error: relay access denied"),
    ("<@example.org:bob@evil.test>", "550 5.7.1 Error: relay access denied"),
    ("<\"bob@evil.test\"@example.org>", "550 5.1.1 Error: user unknown"),
    ("<bob@[127.0.0.1]>", "550 5.7.1 Error: relay access denied"),
    ("<bob@example.org> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
    ("<bob@example.org> FOO=BAR", "555 5.5.4"),
    ("<bob@example.org", "501 5.1.3"),
])
def test_recipients_refused_never_relayed(wire: Wire, rcpt: str, reply: str) -> None:
    assert wire.command("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command(f"RCPT TO:{rcpt}").startswith(reply)


def test_non_ascii_recipient_needs_smtputf8(wire: Wire) -> None:
    assert wire.command("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<zoë@example.org>") == \
        "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8"


def test_source_route_to_local_user_is_accepted(wire: Wire) -> None:
    """RFC 5321 4.1.2 / C: accept source routes, ignore them."""
    assert wire.command("MAIL FROM:<@relay.test:alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<@a.test,@b.test:bob@example.org>") == "250 2.1.5 Ok"


def test_postmaster_without_domain(server: RunningServer, wire: Wire) -> None:
    server.add_alias("postmaster@example.org", "alice@example.org")
    assert wire.command("MAIL FROM:<>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<Postmaster>") == "250 2.1.5 Ok"


# -- commands out of order ------------------------------------------------------------------

def test_commands_out_of_order(server: RunningServer) -> None:
    wire = Wire(server.address())
    assert wire.code() == 220
    assert wire.command("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"
    assert wire.command("HELO client.test").startswith("250 ")
    assert wire.command("RCPT TO:<bob@example.org>") == "503 5.5.1 Error: need MAIL command"
    assert wire.command("DATA") == "503 5.5.1 Error: need MAIL command"
    assert wire.command("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
    assert wire.command("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: nested MAIL command"
    assert wire.command("DATA") == "554 5.5.1 Error: no valid recipients"
    assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    assert wire.command("RSET") == "250 2.0.0 Ok"
    assert wire.command("DATA") == "503 5.5.1 Error: need MAIL command"
    assert wire.command("VRFY bob").startswith("252 2.5.0")
    assert wire.command("AUTH PLAIN AGFsaWNlAHg=").startswith("503 5.5.1")
    assert wire.command("QUIT").startswith("221 2.0.0")
    assert wire.closed()


def test_too_many_recipients(server_factory) -> None:
    srv = server_factory("few", limits={"recipients_per_message": 3})
    wire = Wire(srv.address())
    wire.greet()
    wire.command("MAIL FROM:<alice@example.org>")
    for _ in range(3):
        assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    assert wire.command("RCPT TO:<bob@example.org>") == "452 4.5.3 Error: too many recipients"


def test_error_flood_closes_session(server: RunningServer, wire: Wire) -> None:
    wire.send(b"BOGUS\r\n" * 25)
    replies = [wire.text() for _ in range(20)]
    assert replies == ["500 5.5.1 Command unrecognized"] * 20
    assert wire.text() == "421 4.7.0 mx.test.example Error: too many errors"
    assert wire.closed()
    again = Wire(server.address())
    again.greet()  # the server is still up


def test_connections_per_ip_limit(server_factory) -> None:
    srv = server_factory("limited", limits={"connections_per_ip": 2})
    first, second = Wire(srv.address()), Wire(srv.address())
    assert first.code() == 220 and second.code() == 220
    third = Wire(srv.address())
    assert third.text() == "421 4.7.0 mx.test.example Error: too many connections"
    assert third.closed()
    first.command("QUIT")
    assert first.closed()
    # The freed place comes back once the server has seen the close (not at once).
    deadline = time.monotonic() + 30
    while True:
        fourth = Wire(srv.address())
        if fourth.code() == 220:
            break
        fourth.close()
        assert time.monotonic() < deadline, "still refused after one connection closed"
        time.sleep(0.05)
    assert fourth.command("NOOP") == "250 2.0.0 Ok"


def test_total_connections_limit(server_factory) -> None:
    srv = server_factory("full", limits={"connections": 3})
    open_ones = [Wire(srv.address()) for _ in range(3)]
    assert [w.code() for w in open_ones] == [220, 220, 220]
    extra = Wire(srv.address())
    assert extra.text() == "421 4.7.0 mx.test.example Error: too many connections"
    assert extra.closed()
    for w in open_ones:
        w.close()


def test_idle_timeout(server_factory) -> None:
    srv = server_factory("impatient", limits={"command_timeout": 1})
    wire = Wire(srv.address())
    assert wire.code() == 220
    assert wire.text() == "421 4.4.2 mx.test.example Error: timeout exceeded"
    assert wire.closed()


def test_server_survives_everything_above(server: RunningServer) -> None:
    assert server.is_running()
    wire = Wire(server.address())
    wire.greet()
    assert wire.command("QUIT").startswith("221")


def test_many_open_sessions_cost_little_memory(server_factory) -> None:
    """A connection flood within the limits: 300 sessions mid-transaction."""
    srv = server_factory("crowd", limits={"connections_per_ip": 1000})
    before = rss_kib(srv)
    crowd = [Wire(srv.address()) for _ in range(300)]
    for w in crowd:
        assert w.code() == 220
    for w in crowd:
        w.send(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.org>\r\n")
    for w in crowd:
        assert w.code() == 250  # EHLO
        assert w.text() == "250 2.1.0 Ok"
        assert w.text() == "250 2.1.5 Ok"
    grown = rss_kib(srv) - before
    assert grown < 20 * 1024, f"{grown} KiB for 300 sessions"
    for w in crowd:
        w.close()
