"""A proxy in front of the real server (issue 19): the PROXY protocol on IMAP, IMAPS,
POP3 and SMTP and XCLIENT on submission, from a trusted proxy (127.0.0.2, which Linux
routes to lo like all of 127/8) and from an untrusted client (127.0.0.1).

What a user or operator would check: the Received header in the Maildir names the
client the proxy spoke for, the login throttle locks out that client and not the proxy
(nor the proxy's other clients), logins in the clear work over the proxy's link (nginx
did TLS with the client), an untrusted PROXY header or XCLIENT is refused in the
protocol's own words, and nginx's exact XCLIENT sequence relays mail for the user it
logged in."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator

import pytest
from server_harness import PASSWORD, USERS, RunningServer, make_server
from wire import Wire

PROXY = "127.0.0.2"
LISTEN = {name: "tcp:0:interface=127.0.0.1"
          for name in ("smtp", "submission", "imap", "imaps", "pop3")}
CLUSTER = {"trusted_proxies": [f"{PROXY}/32"],
           "proxy_protocol": ["smtp", "imap", "imaps", "pop3"]}
ALICE = "alice@example.org"
LIMIT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = make_server(tmp_path_factory.mktemp("proxied"), start=False, listen=LISTEN,
                          cluster=CLUSTER,
                          abuse={"login_failures": LIMIT, "login_delay_max": 0})
    for user in USERS:
        running.add_user(user, PASSWORD)
    running.start()
    yield running
    running.stop()


def v1(client: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 143\r\n".encode()


def v2(client: str, port: int = 40000) -> bytes:
    body = struct.pack("!4s4sHH", socket.inet_aton(client), socket.inet_aton("127.0.0.1"),
                       port, 110)
    return (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body)) + body)


#: A line-at-a-time client (tests/wire.py's line() and ask()).
Lines = Wire


def connect(server: RunningServer, service: str, source: str = PROXY,
            header: bytes = b"") -> Lines:
    """A connection from `source`, opened with `header` (a proxy's) if given."""
    client = Lines.__new__(Lines)
    client.sock = socket.create_connection(server.address(service), timeout=60,
                                           source_address=(source, 0))
    client.buffer = b""
    if header:
        client.send(header)
    return client


def tls(client: Lines) -> Lines:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test server's self-signed certificate
    client.sock = context.wrap_socket(client.sock)
    return client


def received(message: bytes) -> str:
    """The first Received header of a stored message, unfolded."""
    head = message.split(b"\n\n", 1)[0].decode().replace("\n\t", " ")
    return next(line for line in head.split("\n") if line.startswith("Received:"))


def test_imap_through_the_proxy_logs_in_in_the_clear(server: RunningServer) -> None:
    client = connect(server, "imap", header=v1("192.0.2.7"))
    greeting = client.line()
    assert greeting.startswith("* OK [CAPABILITY ") and "AUTH=PLAIN" in greeting
    assert "LOGINDISABLED" not in greeting
    assert client.ask(f'a LOGIN {ALICE} "{PASSWORD}"').startswith("a OK ")
    client.close()


def test_imap_without_the_proxy_refuses_logins_in_the_clear(server: RunningServer) -> None:
    client = connect(server, "imap", source="127.0.0.1")
    assert "LOGINDISABLED" in client.line()
    client.close()


def test_the_throttle_locks_out_the_client_not_the_proxy(server: RunningServer) -> None:
    for n in range(LIMIT):
        client = connect(server, "imap", header=v1("192.0.2.66", 41000 + n))
        client.line()
        assert client.ask(f"f LOGIN {ALICE} wrong{n}") == (
            "f NO [AUTHENTICATIONFAILED] Authentication failed")
        client.close()
    client = connect(server, "imap", header=v1("192.0.2.66", 42000))
    client.line()
    assert client.ask(f'g LOGIN {ALICE} "{PASSWORD}"') == (
        "g NO [UNAVAILABLE] Too many failed logins from your address; try again later")
    client.close()
    # The proxy's other clients, and POP3 for them, are not affected.
    other = connect(server, "pop3", header=v2("192.0.2.67"))
    assert other.line() == "+OK mailserver POP3 server ready."
    assert other.ask(f"USER {ALICE}") == "+OK"
    assert other.ask(f"PASS {PASSWORD}").startswith("+OK ")
    other.close()
    assert "login refused: too many failures from 192.0.2.66" in server.log()
    assert f"too many failures from {PROXY}" not in server.log()


def test_imaps_header_comes_before_the_tls_handshake(server: RunningServer) -> None:
    client = tls(connect(server, "imaps", header=v1("192.0.2.8")))
    assert client.line().startswith("* OK [CAPABILITY ")
    assert client.ask(f'a LOGIN {ALICE} "{PASSWORD}"').startswith("a OK ")
    client.close()


def test_imap_starttls_after_the_header(server: RunningServer) -> None:
    client = connect(server, "imap", header=v1("192.0.2.14"))
    client.line()
    assert client.ask("s STARTTLS") == "s OK Begin TLS negotiation now"
    tls(client)
    assert client.ask(f'a LOGIN {ALICE} "{PASSWORD}"').startswith("a OK ")
    client.close()


def test_smtp_received_header_names_the_proxied_client(server: RunningServer) -> None:
    wire = connect(server, "smtp", header=v1("192.0.2.9"))
    lines = wire.greet("laptop.example")
    assert lines[0] == "mx.test.example Hello laptop.example [192.0.2.9]"
    assert not any(line.startswith("XCLIENT") for line in lines), (
        "after PROXY the peer is the client itself: it may not name or log itself in")
    assert wire.command(f"XCLIENT LOGIN={ALICE}") == (
        "550 5.7.0 Error: insufficient authorization")
    assert wire.command("MAIL FROM:<someone@elsewhere.test>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    assert wire.command("DATA").startswith("354")
    assert wire.command(b"From: someone@elsewhere.test\r\nSubject: via proxy\r\n\r\nx\r\n."
                        ).startswith("250 2.0.0 Ok")
    wire.close()
    [message] = [m for m in server.messages("bob@example.org") if b"via proxy" in m]
    assert received(message).startswith("Received: from laptop.example ([192.0.2.9])")
    # The sender checks (senderauth) looked at the client, not at the proxy.
    assert b"\tiprev=fail policy.iprev=192.0.2.9;\n" in message


@pytest.mark.parametrize("service,refusal", [
    ("imap", "* BYE PROXY protocol not accepted from this address"),
    ("pop3", "-ERR PROXY protocol not accepted from this address"),
    ("submission", "421 4.7.0 Error: PROXY protocol not accepted from this address"),
])
def test_untrusted_header_is_refused(server: RunningServer, service: str,
                                     refusal: str) -> None:
    client = connect(server, service, source="127.0.0.1")
    client.line()  # the greeting: an untrusted client is an ordinary one
    client.send(v1("192.0.2.10"))
    assert client.line() == refusal
    assert client.closed()
    assert server.log().count(f"{service}: PROXY header from 127.0.0.1 not accepted") == 1


def test_trusted_proxy_without_a_header_gets_nothing(server: RunningServer) -> None:
    client = connect(server, "imap")
    client.send(b"a LOGIN alice x\r\n")
    assert client.closed()
    assert client.buffer == b"", "no greeting, nothing read as a command"
    assert f"bad PROXY header from trusted proxy {PROXY}: not a PROXY header" in server.log()


def nginx(server: RunningServer, source: str = PROXY) -> Wire:
    return connect(server, "submission", source=source)


def test_nginx_xclient_login_relays_as_the_user(server: RunningServer) -> None:
    """ngx_mail_proxy_module's sequence: EHLO <its server_name>, XCLIENT ADDR= LOGIN=
    NAME=, the client's EHLO again; on the plaintext submission port."""
    wire = nginx(server)
    lines = wire.greet("proxy.test.example")
    assert "XCLIENT ADDR PORT NAME HELO PROTO LOGIN DESTADDR DESTPORT" in lines
    assert wire.command(f"XCLIENT ADDR=192.0.2.11 LOGIN={ALICE} NAME=[UNAVAILABLE]") == (
        "220 mx.test.example ESMTP mailserver")
    wire.send(b"EHLO laptop.example\r\n")
    code, lines = wire.reply()
    assert (code, lines[0]) == (250, "mx.test.example Hello laptop.example [192.0.2.11]")
    assert wire.command(f"MAIL FROM:<{ALICE}>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<friend@remote.test>") == "250 2.1.5 Ok", "relayed"
    assert wire.command("RSET") == "250 2.0.0 Ok"
    assert wire.command(f"MAIL FROM:<{ALICE}>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<carol@example.net>") == "250 2.1.5 Ok"
    assert wire.command("DATA").startswith("354")
    assert wire.command(f"From: {ALICE}\r\nSubject: xclient\r\n\r\nx\r\n.".encode()
                        ).startswith("250 2.0.0 Ok")
    wire.close()
    [message] = [m for m in server.messages("carol@example.net") if b"xclient" in m]
    header = received(message)
    assert header.startswith("Received: from laptop.example ([192.0.2.11])")
    assert " with ESMTPA id " in header


def test_nginx_without_login_must_authenticate(server: RunningServer) -> None:
    wire = nginx(server)
    wire.greet("proxy.test.example")
    assert wire.command("XCLIENT ADDR=192.0.2.12 NAME=[UNAVAILABLE]").startswith("220 ")
    wire.send(b"EHLO laptop.example\r\n")
    code, lines = wire.reply()
    assert "AUTH PLAIN LOGIN" in lines, "AUTH in the clear over the proxy's link"
    assert wire.command(f"MAIL FROM:<{ALICE}>") == "530 5.7.0 Authentication required"
    wire.close()


def test_xclient_from_an_untrusted_client_is_refused(server: RunningServer) -> None:
    wire = nginx(server, source="127.0.0.1")
    lines = wire.greet("client.test")
    assert not any("XCLIENT" in line for line in lines)
    assert wire.command(f"XCLIENT ADDR=192.0.2.13 LOGIN={ALICE}") == (
        "550 5.7.0 Error: insufficient authorization")
    assert wire.command(f"MAIL FROM:<{ALICE}>") == "530 5.7.0 Authentication required"
    wire.close()
    assert "XCLIENT refused from 127.0.0.1: not in cluster.trusted_proxies" in server.log()
