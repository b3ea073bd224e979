"""Submission on the real server (587 STARTTLS, 465 implicit TLS) with real clients:
smtplib, swaks and curl; and everything a submission or MX port must refuse."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from server_harness import PASSWORD, USERS, RunningServer, make_server
from wire import Wire

LISTEN = {"smtp": "tcp:0:interface=127.0.0.1",
          "submission": "tcp:0:interface=127.0.0.1",
          "submissions": "tcp:0:interface=127.0.0.1"}
ALIASES = {"sales@example.org": "alice@example.org,bob@example.org"}
MESSAGE = b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nBody.\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = make_server(tmp_path_factory.mktemp("sub"), start=False, listen=LISTEN)
    for user in USERS:
        running.add_user(user, PASSWORD)
    for alias, targets in ALIASES.items():
        running.add_alias(alias, targets)
    running.start()
    yield running
    running.stop()


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
    return context


def plain(user: str = "alice@example.org", password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def stored_fields(message: bytes) -> dict[str, bytes]:
    """The header fields of a stored message by lower-case name (first occurrence)."""
    head = message.split(b"\n\n", 1)[0]
    fields: dict[str, bytes] = {}
    for m in re.finditer(rb"^([!-9;-~]+):[ \t]*((?:.*)(?:\n[ \t].*)*)", head, re.M):
        fields.setdefault(m.group(1).decode().lower(), m.group(2))
    return fields


def newest(server: RunningServer, user: str, count_before: int) -> bytes:
    stored = server.messages(user)
    assert len(stored) == count_before + 1, f"{user}: one new message"
    return stored[-1]


def test_starttls_auth_with_smtplib_delivers_locally(server: RunningServer) -> None:
    before = len(server.messages("bob@example.org"))
    with smtplib.SMTP(*server.address("submission")) as client:
        client.ehlo("desktop.test")
        assert "auth" not in client.esmtp_features  # not before TLS
        assert client.has_extn("starttls")
        client.starttls(context=tls_context())
        client.ehlo("desktop.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.login("alice@example.org", PASSWORD)
        assert client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
    message = newest(server, "bob@example.org", before)
    assert message.startswith(b"Return-Path: <alice@example.org>\nReceived: from desktop.test"
                              b" ([127.0.0.1])\n\tby mx.test.example (mailserver) with ESMTPSA")
    fields = stored_fields(message)
    # RFC 6409 8.2/8.3: added because the message had neither.
    assert re.fullmatch(rb"<[a-z0-9]+@mx\.test\.example>", fields["message-id"])
    assert re.fullmatch(rb"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", fields["date"])
    assert message.endswith(b"Subject: hi\n" + b"Message-ID: " + fields["message-id"] +
                            b"\nDate: " + fields["date"] + b"\n\nBody.\n")
    assert b"(using TLSv1." in message


def test_implicit_tls_with_login_mechanism(server: RunningServer) -> None:
    before = len(server.messages("carol@example.net"))
    message = MESSAGE.replace(b"Subject: hi", b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                              b"Message-ID: <kept@desktop.test>\r\nSubject: 465")
    with smtplib.SMTP_SSL(*server.address("submissions"), context=tls_context()) as client:
        client.ehlo("desktop.test")
        assert not client.has_extn("starttls")
        client.user, client.password = "alice", PASSWORD  # bare name: first local domain
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        assert client.sendmail("sales@example.org", ["carol@example.net"], message) == {}
    stored = newest(server, "carol@example.net", before)
    assert b"with ESMTPSA id" in stored.split(b"\n\n")[0]
    assert stored.startswith(b"Return-Path: <sales@example.org>\n")
    assert stored.endswith(message.replace(b"\r\n", b"\n")), "nothing added or changed"


@pytest.mark.parametrize(("service", "tls", "mechanism"), [
    ("submission", "--tls", "PLAIN"), ("submission", "--tls", "LOGIN"),
    ("submissions", "--tls-on-connect", "PLAIN")])
def test_swaks(server: RunningServer, service: str, tls: str, mechanism: str) -> None:
    before = len(server.messages("bob@example.org"))
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(server.ports[service]), tls,
         "--auth", mechanism, "--auth-user", "alice@example.org", "--auth-password",
         PASSWORD, "--from", "alice+swaks@example.org", "--to", "bob@example.org",
         "--helo", "swaks.test", "--header", f"Subject: swaks {mechanism}",
         "--body", "via swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    stored = newest(server, "bob@example.org", before)
    assert f"Subject: swaks {mechanism}".encode() in stored
    assert b"with ESMTPSA id" in stored


@pytest.mark.parametrize(("scheme", "service", "options"), [
    ("smtp", "submission", ["--ssl-reqd"]),
    ("smtp", "submission", ["--ssl-reqd", "--login-options", "AUTH=LOGIN"]),
    ("smtps", "submissions", [])])
def test_curl(server: RunningServer, tmp_path: Path, scheme: str, service: str,
              options: list[str]) -> None:
    before = len(server.messages("bob@example.org"))
    mail = tmp_path / "mail.txt"
    mail.write_bytes(MESSAGE.replace(b"Subject: hi", b"Subject: curl"))
    result = subprocess.run(
        ["curl", "-sS", "--insecure", *options,
         "--url", f"{scheme}://127.0.0.1:{server.ports[service]}/curl.test",
         "--user", f"alice@example.org:{PASSWORD}", "--mail-from", "alice@example.org",
         "--mail-rcpt", "bob@example.org", "--upload-file", str(mail)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"Subject: curl" in newest(server, "bob@example.org", before)


# -- refused: nothing stored, nothing queued ------------------------------------------------


@pytest.fixture
def counts(server: RunningServer) -> Iterator[None]:
    """Whatever the test does, no mailbox gets a message and nothing is queued."""
    before = {u: len(server.messages(u)) for u in USERS}
    queue_dir = server.data_dir / "queue"
    queued = sorted(p.name for p in queue_dir.rglob("*")) if queue_dir.exists() else []
    yield
    assert {u: len(server.messages(u)) for u in USERS} == before
    after = sorted(p.name for p in queue_dir.rglob("*")) if queue_dir.exists() else []
    assert after == queued


def submission_wire(server: RunningServer, service: str = "submission") -> Wire:
    wire = Wire(server.address(service))
    if service == "submissions":
        wire.sock = tls_context().wrap_socket(wire.sock)
    return wire


def test_mail_without_auth_refused(server: RunningServer, counts: None) -> None:
    wire = submission_wire(server)
    wire.greet()
    wire.starttls()
    wire.send(b"EHLO c.test\r\n")
    assert wire.code() == 250
    assert wire.command("MAIL FROM:<alice@example.org>") == "530 5.7.0 Authentication required"
    assert wire.command("RCPT TO:<bob@example.org>") == "503 5.5.1 Error: need MAIL command"
    wire.close()


def test_auth_before_tls_refused(server: RunningServer, counts: None) -> None:
    wire = submission_wire(server)
    assert not any(k.startswith("AUTH") for k in wire.greet())
    assert wire.command(f"AUTH PLAIN {plain()}") == (
        "538 5.7.11 Encryption required for requested authentication mechanism")
    assert wire.command("MAIL FROM:<alice@example.org>") == "530 5.7.0 Authentication required"
    wire.close()


def test_wrong_passwords_disconnect_and_server_stays_up(server: RunningServer,
                                                        counts: None) -> None:
    wire = submission_wire(server, "submissions")
    wire.greet()
    for guess in ("a", "b"):
        assert wire.command(f"AUTH PLAIN {plain(password=guess)}") == (
            "535 5.7.8 Authentication credentials invalid")
    wire.send(f"AUTH PLAIN {plain(password='c')}\r\n".encode())
    assert wire.text() == "535 5.7.8 Authentication credentials invalid"
    assert wire.text() == "421 4.7.0 mx.test.example Error: too many failed authentications"
    assert wire.closed()
    # Unknown users fail the same way; and the server still serves the right password.
    with smtplib.SMTP_SSL(*server.address("submissions"), context=tls_context()) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("nobody@example.org", PASSWORD)
        assert refused.value.smtp_code == 535
        client.login("alice@example.org", PASSWORD)


@pytest.mark.parametrize("sender", ["bob@example.org", "alice@evil.test", "", "ceo@example.org"])
def test_forged_sender_refused(server: RunningServer, counts: None, sender: str) -> None:
    with smtplib.SMTP_SSL(*server.address("submissions"), context=tls_context()) as client:
        client.login("alice@example.org", PASSWORD)
        code, text = client.mail(sender)
        assert (code, text.decode()) == (
            553, f"5.7.1 <{sender}>: Sender address rejected: not owned by user "
                 "alice@example.org")


def test_auth_on_port_25_refused(server: RunningServer, counts: None) -> None:
    wire = Wire(server.address("smtp"))
    assert not any(k.startswith("AUTH") for k in wire.greet())
    assert wire.command(f"AUTH PLAIN {plain()}") == (
        "503 5.5.1 AUTH not available on this port; use submission")
    wire.close()


@pytest.mark.parametrize(("rcpt", "reply"), [
    ("<friend@remote.test>", "550 5.7.1 Error: relay access denied"),
    ("<bob%remote.test@example.org>", "550 5.1.1 Error: user unknown"),
    ("<@example.org,@example.net:friend@remote.test>", "550 5.7.1 Error: relay access denied"),
    ('<"friend@remote.test"@example.org>', "550 5.1.1 Error: user unknown"),
    ("<friend@[192.0.2.1]>", "550 5.7.1 Error: relay access denied"),
])
def test_port_25_never_relays(server: RunningServer, counts: None, rcpt: str,
                              reply: str) -> None:
    wire = Wire(server.address("smtp"))
    wire.greet()
    assert wire.command("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"
    assert wire.command(f"RCPT TO:{rcpt}") == reply
    assert wire.command("DATA") == "554 5.5.1 Error: no valid recipients"
    wire.close()


def test_starttls_injection_discarded(server: RunningServer, counts: None) -> None:
    """CVE-2011-0411 style: commands pipelined in plaintext after STARTTLS are dropped."""
    wire = submission_wire(server)
    wire.greet()
    wire.send(f"STARTTLS\r\nAUTH PLAIN {plain()}\r\nMAIL FROM:<alice@example.org>\r\n".encode())
    assert wire.text() == "220 2.0.0 Ready to start TLS"
    wire.sock = tls_context().wrap_socket(wire.sock)
    wire.buffer = b""
    assert wire.command("MAIL FROM:<alice@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"
    wire.send(b"EHLO c.test\r\n")
    assert wire.code() == 250
    assert wire.command("MAIL FROM:<alice@example.org>") == "530 5.7.0 Authentication required"
    wire.close()


def test_malformed_sasl_on_the_wire(server: RunningServer, counts: None) -> None:
    wire = submission_wire(server, "submissions")
    wire.greet()
    assert wire.command("AUTH PLAIN " + "A" * (1024 * 1024)) == "500 5.5.2 Line too long"
    assert wire.command("AUTH PLAIN") == "334 "
    assert wire.command(b"\0\0\xff") == "501 5.5.2 Cannot decode response: invalid base64"
    no_nuls = base64.b64encode(b"alice@example.org " + PASSWORD.encode()).decode()
    assert wire.command(f"AUTH PLAIN {no_nuls}") == (
        "501 5.5.2 Cannot decode response: PLAIN wants authzid NUL authcid NUL password")
    assert wire.command("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert wire.command("*") == "501 5.0.0 Authentication cancelled"
    assert wire.command("NOOP") == "250 2.0.0 Ok"
    wire.close()


def test_pipelined_auth_and_transaction(server: RunningServer) -> None:
    before = len(server.messages("bob@example.org"))
    wire = submission_wire(server, "submissions")
    wire.greet()
    wire.send(f"AUTH PLAIN {plain()}\r\nMAIL FROM:<alice@example.org>\r\n"
              "RCPT TO:<bob@example.org>\r\nDATA\r\n".encode())
    assert [wire.text() for _ in range(4)] == [
        "235 2.7.0 Authentication successful", "250 2.1.0 Ok", "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>"]
    wire.send(b"Subject: pipelined\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert wire.text().startswith("250 2.0.0 Ok: queued as ")
    assert wire.text().startswith("221 2.0.0")
    assert b"Subject: pipelined" in newest(server, "bob@example.org", before)


def test_too_many_hops_refused(server: RunningServer, counts: None) -> None:
    wire = Wire(server.address("smtp"))
    wire.greet()
    wire.command("MAIL FROM:<someone@remote.test>")
    wire.command("RCPT TO:<bob@example.org>")
    assert wire.command("DATA").startswith("354")
    hops = b"Received: from a.test by b.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 51
    assert wire.command(hops + b"Subject: loop\r\n\r\nx\r\n.") == (
        "554 5.4.6 Error: too many hops (mail loop?)")
    wire.close()


def test_guesser_reconnecting_is_shut_out(server_factory) -> None:
    """After 10 failed AUTHs from one address (any connection, 587 or 465), the address
    gets 421 before any password is checked, even the right one."""
    # login_delay_max 0: every failure waits the same 0.75 s, so the four connections
    # stay in step (the growing delay has its own tests, tests/integration/test_abuse.py).
    fresh = server_factory("guessed", users=("alice@example.org",), listen=LISTEN,
                           abuse={"login_delay_max": 0})

    def guess(service: str) -> list[str]:
        wire = submission_wire(fresh, service)
        wire.greet()
        if service == "submission":
            wire.starttls()
            wire.send(b"EHLO c.test\r\n")
            wire.reply()
        replies = [wire.command(f"AUTH PLAIN {plain(password=f'guess{i}')}")
                   for i in range(3)]
        wire.close()
        return replies

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(guess, ["submission", "submissions"] * 2))
    assert all(r.startswith("535 5.7.8") for replies in results for r in replies)
    wire = submission_wire(fresh, "submissions")
    wire.greet()
    assert wire.command(f"AUTH PLAIN {plain()}") == (
        "421 4.7.0 mx.test.example Error: too many failed authentications from your "
        "address; try again later")
    assert wire.closed()
    # The MX port knows nothing of it: inbound mail from that address still flows.
    mx = Wire(fresh.address("smtp"))
    mx.greet()
    assert mx.command("MAIL FROM:<x@remote.test>") == "250 2.1.0 Ok"
    mx.close()
