"""The real server: the exact octets a client receives for RETR and TOP, over plain
TCP, STLS and POP3S, for the messages that test the wire form (dot-stuffing, no final
newline, a bare LF in a CRLF file, an empty file, a 10 MiB message that is streamed),
and a client that stops reading in the middle of big messages, which must not make
the server hold them in memory."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3_helpers import PASSWORD, RawPop3, client_tls, put_message, wait_unlocked
from server_harness import RunningServer
from test_pop3_maildrop import reference_wire

from mailserver.pop3 import maildrop

ALICE = "alice@example.org"


def ten_mib() -> bytes:
    lines = [b"Subject: ten MiB\n\n"]
    size = 0
    i = 0
    while size < 10 * 1024 * 1024:
        line = (b"." if i % 7 == 0 else b"") + b"line %d " % i + b"z" * (i % 90) + b"\n"
        lines.append(line)
        size += len(line)
        i += 1
    return b"".join(lines)


MESSAGES = [
    b"Subject: dots\n\n.\n..\n.x\nmiddle.dot\n",
    b"Subject: no newline\n\nlast line",
    b"Subject: crlf\r\n\r\nbare\nlf\r\n.dot\r\n",  # a foreign file (no W= in its name)
    b"",
    ten_mib(),
]


def crlf_size(stored: bytes) -> int:
    return len(stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


@pytest.fixture
def filled(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, Path]]:
    server: RunningServer = request.getfixturevalue(request.param)
    maildir = server.maildir(ALICE)
    wait_unlocked(maildir)
    for sub in ("new", "cur"):
        for p in (maildir / sub).glob("*") if (maildir / sub).exists() else []:
            p.unlink()
    for i, content in enumerate(MESSAGES):
        # Foreign names (no S=/W=): the snapshot measures them, as for any Maildir.
        put_message(maildir, content, name=f"{1700000000 + i}.wire{i}.host")
    yield server, maildir
    wait_unlocked(maildir)


def login(server: RunningServer, how: str) -> RawPop3:
    if how == "pop3s":
        c = RawPop3(server.address("pop3s"))
        c.sock = client_tls().wrap_socket(c.sock, server_hostname="localhost")
    else:
        c = RawPop3(server.address("pop3"))
    assert c.line().startswith(b"+OK")
    if how == "stls":
        assert c.command(b"STLS") == b"+OK Begin TLS negotiation now."
        c.starttls()
    assert c.command(f"USER {ALICE}".encode()) == b"+OK"
    assert c.command(f"PASS {PASSWORD}".encode()).startswith(b"+OK Logged in, 5 messages")
    return c


def multiline(c: RawPop3, status: bytes) -> bytes:
    """The rest of a multi-line reply after its status line, terminator included
    (RFC 1939 3: it ends at the first CRLF.CRLF, the status line's CRLF counting)."""
    data = bytearray(b"\r\n" + c.buffer)
    start = 0
    while (end := data.find(b"\r\n.\r\n", start)) < 0:
        start = max(0, len(data) - 4)
        chunk = c.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed in a multi-line reply")
        data += chunk
    c.buffer = bytes(data[end + 5:])
    return bytes(data[2:end + 5])


@pytest.mark.parametrize("filled, how", [("plain_server", "plain"), ("pop_server", "stls"),
                                         ("pop_server", "pop3s")],
                         indirect=["filled"])
def test_retr_and_top_send_exactly_the_wire_form(filled: tuple[RunningServer, Path],
                                                 how: str) -> None:
    server, _maildir = filled
    c = login(server, how)
    try:
        # Pipelined, as a client that downloads everything does (RFC 2449 PIPELINING).
        c.send(b"".join(b"RETR %d\r\n" % n for n in range(1, 6)))
        for n, stored in enumerate(MESSAGES, 1):
            status = c.line()
            assert status == b"+OK %d octets" % crlf_size(stored)
            assert multiline(c, status) == reference_wire(stored), n
        for n, lines, part in ((1, 1, b"Subject: dots\n\n.\n"),
                               (3, 0, b"Subject: crlf\r\n\r\n"),
                               (4, 3, b""),
                               (5, 2, MESSAGES[4][:MESSAGES[4].index(b"line 2 ")])):
            status = c.command(b"TOP %d %d" % (n, lines))
            assert status == b"+OK"
            assert multiline(c, status) == reference_wire(part), n
        assert c.command(b"QUIT") == b"+OK Logging out."
    finally:
        c.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("filled", ["plain_server"], indirect=True)
def test_a_client_that_stops_reading_big_messages_costs_no_memory(
        filled: tuple[RunningServer, Path]) -> None:
    """Three 24 MiB messages asked for at once by a client that then reads nothing:
    the server's memory grows by a few chunks, not by the messages (before, each RETR
    built the whole reply: ~75 MiB of copies for the first one alone). Once the client
    reads, it gets every octet."""
    server, maildir = filled
    assert server.proc is not None
    big = [ten_mib() * 2 + b"tail %d\n" % i for i in range(3)]
    for i, content in enumerate(big):
        put_message(maildir, content, name=f"{1800000000 + i}.big{i}.host")
    c = RawPop3(server.address("pop3"))
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        assert c.line().startswith(b"+OK")
        assert c.command(f"USER {ALICE}".encode()) == b"+OK"
        assert c.command(f"PASS {PASSWORD}".encode()) == b"+OK Logged in, 8 messages."
        before = rss_kib(server.proc.pid)
        c.send(b"RETR 6\r\nRETR 7\r\nRETR 8\r\n")
        time.sleep(2)  # the server sends until the socket buffers are full
        grown = rss_kib(server.proc.pid) - before
        assert grown < 12 * 1024, f"server grew {grown} KiB"
        for content in big:
            status = c.line()
            assert status == b"+OK %d octets" % crlf_size(content)
            assert multiline(c, status) == reference_wire(content)
        assert c.command(b"QUIT") == b"+OK Logging out."
    finally:
        c.close()
    assert maildrop.STREAM_OCTETS < len(big[0])

