"""Inbound mail with real clients: what lands in the Maildir, byte for byte."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import ssl
import subprocess

import pytest
from server_harness import RunningServer
from wire import Wire

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that begins with a dot.\r\n"
    b"..Two dots.\r\n"
    b"Last line.\r\n"
)
STORED_BODY = MESSAGE.replace(b"\r\n", b"\n")


def split_trace(stored: bytes) -> tuple[bytes, bytes, bytes]:
    """(Return-Path line, Received header, the rest) of a stored message."""
    return_path, rest = stored.split(b"\n", 1)
    m = re.match(rb"(Received: [^\n]*\n(?:\t[^\n]*\n)*)", rest)
    assert m, rest[:300]
    return return_path, m.group(1), rest[m.end():]


def test_smtplib_message_lands_byte_exact(server: RunningServer) -> None:
    before = len(server.messages("bob@example.org"))
    with smtplib.SMTP(*server.address()) as client:
        client.ehlo("client.test")
        refused = client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert refused == {}
    stored = server.messages("bob@example.org")
    assert len(stored) == before + 1
    new_files = sorted((server.maildir("bob@example.org") / "new").iterdir())
    assert new_files, "the message is in new/"
    return_path, received, rest = split_trace(stored[-1])
    assert return_path == b"Return-Path: <alice@example.org>"
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\n\tby mx.test.example")
    assert b"with ESMTP id " in received
    assert b"for <bob@example.org>;" in received
    # Dot-unstuffed, LF line ends (the Maildir convention), otherwise untouched.
    assert rest == STORED_BODY


def test_maildir_file_name_carries_sizes(server: RunningServer) -> None:
    with smtplib.SMTP(*server.address()) as client:
        client.sendmail("alice@example.org", ["carol@example.net"], MESSAGE)
    newest = max((server.maildir("carol@example.net") / "new").iterdir(),
                 key=lambda p: p.stat().st_mtime_ns)
    data = newest.read_bytes()
    m = re.search(r",S=(\d+),W=(\d+)$", newest.name)
    assert m, newest.name
    assert int(m.group(1)) == len(data)
    assert int(m.group(2)) == len(data) + data.count(b"\n")


def test_one_message_many_recipients_and_domains(server: RunningServer) -> None:
    counts = {u: len(server.messages(u)) for u in ("bob@example.org", "carol@example.net")}
    with smtplib.SMTP(*server.address()) as client:
        refused = client.sendmail("alice@example.org",
                                  ["bob@example.org", "carol@example.net", "BOB@Example.ORG"],
                                  MESSAGE)
    assert refused == {}
    for user, count in counts.items():
        stored = server.messages(user)
        assert len(stored) == count + 1, f"{user} got exactly one copy"
        assert stored[-1].endswith(STORED_BODY)
        _, received, _ = split_trace(stored[-1])
        assert b"for <" not in received, "no recipient list leaks into a shared copy"


def test_plus_addressing_and_alias(server: RunningServer) -> None:
    server.add_alias("team@example.org", "bob@example.org,carol@example.net")
    bob, carol = len(server.messages("bob@example.org")), len(server.messages("carol@example.net"))
    with smtplib.SMTP(*server.address()) as client:
        client.sendmail("alice@example.org", ["bob+news@example.org"], MESSAGE)
        client.sendmail("alice@example.org", ["team@example.org"], MESSAGE)
    assert len(server.messages("bob@example.org")) == bob + 2
    assert len(server.messages("carol@example.net")) == carol + 1


def test_user_added_while_running_receives_mail(server: RunningServer) -> None:
    with smtplib.SMTP(*server.address()) as client:
        code, _ = client.ehlo()
        client.mail("alice@example.org")
        assert client.rcpt("dave@example.org")[0] == 550
        client.rset()
        server.add_user("dave@example.org", "pw")
        refused = client.sendmail("alice@example.org", ["dave@example.org"], MESSAGE)
    assert refused == {}
    assert server.messages("dave@example.org")[-1].endswith(STORED_BODY)
    # New users get the standard folders.
    for folder in ("Sent", "Drafts", "Trash", "Junk"):
        assert (server.maildir("dave@example.org", folder) / "cur").is_dir()


def test_starttls_with_smtplib(server: RunningServer) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(*server.address()) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    _, received, _ = split_trace(server.messages("bob@example.org")[-1])
    assert b"with ESMTPS id" in received
    assert b"using TLSv1." in received


def test_ehlo_advertises_extensions(server: RunningServer) -> None:
    wire = Wire(server.address())
    lines = wire.greet()
    assert lines[0].startswith("mx.test.example Hello client.test")
    for keyword in ("PIPELINING", "SIZE 36700160", "8BITMIME", "SMTPUTF8",
                    "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"):
        assert keyword in lines[1:]
    assert not any(line.startswith("AUTH") for line in lines), "no AUTH on the MX"
    # RFC 8689 4: REQUIRETLS only once the session is protected by TLS.
    assert "REQUIRETLS" not in lines
    wire.close()


def test_pipelined_transactions_answered_in_order(server: RunningServer) -> None:
    """RFC 2920: a whole batch in one write, replies in order, even across fsyncs."""
    before = len(server.messages("bob@example.org"))
    wire = Wire(server.address())
    wire.greet()
    batch = b""
    for i in range(5):
        batch += (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
                  b"RCPT TO:<bob@example.org>\r\nDATA\r\n")
        batch += b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (i, i)
    batch += b"QUIT\r\n"
    wire.send(batch)
    replies = [wire.text() for _ in range(5 * 5 + 1)]
    for i in range(5):
        mail, nobody, bob, data, stored = replies[i * 5:i * 5 + 5]
        assert mail == "250 2.1.0 Ok"
        assert nobody == "550 5.1.1 Error: user unknown"
        assert bob == "250 2.1.5 Ok"
        assert data.startswith("354 ")
        assert stored.startswith("250 2.0.0 Ok: queued as ")
    assert replies[-1].startswith("221 2.0.0")
    got = server.messages("bob@example.org")[before:]
    assert [m.rsplit(b"\n\n", 1)[1] for m in got] == [b"body %d\n" % i for i in range(5)]


def test_bdat_chunks_land_byte_exact(server: RunningServer) -> None:
    before = len(server.messages("bob@example.org"))
    wire = Wire(server.address())
    wire.greet()
    assert wire.command("MAIL FROM:<alice@example.org> BODY=8BITMIME") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    part1 = b"Subject: chunked\r\n\r\nline one\r"   # CR at a chunk edge, LF in the next
    part2 = b"\n.a line with a dot, not stuffed in BDAT\r\ncaf\xc3\xa9\r\n"
    wire.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert wire.text() == f"250 2.0.0 {len(part1)} octets received"
    wire.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert wire.text().startswith("250 2.0.0 Ok: queued as ")
    stored = server.messages("bob@example.org")
    assert len(stored) == before + 1
    assert stored[-1].endswith(b"\n\nline one\n.a line with a dot, not stuffed in BDAT\n"
                               b"caf\xc3\xa9\n")
    wire.close()


def test_smtputf8_address_and_8bitmime(server: RunningServer) -> None:
    message = "From: Zoë <zoë@exämple.test>\r\nSubject: ünïcode\r\n\r\nGrüße\r\n".encode()
    with smtplib.SMTP(*server.address()) as client:
        client.ehlo()
        refused = client.sendmail("zoë@exämple.test", ["bob@example.org"], message,
                                  mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}
    stored = server.messages("bob@example.org")[-1]
    assert stored.startswith("Return-Path: <zoë@exämple.test>\n".encode())
    assert b"with UTF8SMTP id" in stored
    assert stored.endswith(message.replace(b"\r\n", b"\n"))


@pytest.mark.parametrize("options", [[], ["--pipeline"], ["--tls"], ["--tls", "--pipeline"]])
def test_swaks_delivers(server: RunningServer, options: list[str]) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "make test installs swaks"
    before = len(server.messages("carol@example.net"))
    host, port = server.address()
    result = subprocess.run(
        [swaks, "--server", host, "--port", str(port), "--from", "alice@example.org",
         "--to", "carol@example.net", "--helo", "swaks.test",
         "--header", "Subject: swaks " + " ".join(options), "--body", "Sent by swaks.\n.dot",
         *options],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    stored = server.messages("carol@example.net")
    assert len(stored) == before + 1
    assert b"Subject: swaks" in stored[-1]
    # swaks dot-stuffs ".dot" (we unstuff it) and appends blank lines of its own.
    assert stored[-1].rstrip(b"\n").endswith(b"\n\nSent by swaks.\n.dot")
    assert b"\r" not in stored[-1]


def test_no_partial_files_left_in_tmp(server: RunningServer) -> None:
    with smtplib.SMTP(*server.address()) as client:
        client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    tmp = server.maildir("bob@example.org") / "tmp"
    assert os.listdir(tmp) == []


@pytest.mark.parametrize("tls", [False, True])
def test_curl_sends(server: RunningServer, tmp_path, tls: bool) -> None:
    curl = shutil.which("curl")
    assert curl, "make test installs curl"
    message = tmp_path / "mail.txt"
    message.write_bytes(b"From: alice@example.org\r\nSubject: by curl\r\n\r\n.leading dot\r\n")
    before = len(server.messages("bob@example.org"))
    host, port = server.address()
    tls_args = ["--ssl-reqd", "--insecure"] if tls else []
    result = subprocess.run(
        [curl, "-sS", f"smtp://{host}:{port}", "--mail-from", "alice@example.org",
         "--mail-rcpt", "bob@example.org", "--upload-file", str(message), *tls_args],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    stored = server.messages("bob@example.org")
    assert len(stored) == before + 1
    assert stored[-1].endswith(b"Subject: by curl\n\n.leading dot\n")
    assert (b"with ESMTPS id" in stored[-1]) == tls


def test_postfix_smtp_source_sessions(server: RunningServer) -> None:
    """Postfix's own test client: 5 parallel sessions reusing connections, 40 messages."""
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    assert os.path.exists(smtp_source), "make test installs postfix (smtp-source)"
    before = len(server.messages("bob@example.org"))
    host, port = server.address()
    result = subprocess.run(
        [smtp_source, "-s", "5", "-m", "40", "-l", "2000", "-d", "-c",
         "-f", "alice@example.org", "-t", "bob@example.org", "-r", "1",
         f"{host}:{port}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(server.messages("bob@example.org")) == before + 40
    newest = server.messages("bob@example.org")[-1]
    assert newest.startswith(b"Return-Path: <alice@example.org>\n")


def test_ipv6_listener_and_address_literal(server_factory) -> None:
    srv = server_factory("v6", listen={"smtp": "tcp6:0:interface=\\:\\:1"})
    assert srv.ports["smtp"] > 0
    with smtplib.SMTP("::1", srv.ports["smtp"]) as client:
        code, text = client.ehlo("six.test")
        assert code == 250 and b"Hello six.test [IPv6:::1]" in text
        client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    _, received, _ = split_trace(srv.messages("bob@example.org")[-1])
    assert received.startswith(b"Received: from six.test ([IPv6:::1])\n")
