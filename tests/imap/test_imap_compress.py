"""COMPRESS=DEFLATE (RFC 4978) against the real server: a raw deflate client written
here (imaplib has none), mbsync (which uses it when offered), and the hostile forms:
twice, before login, pipelined behind STARTTLS, garbage, a decompression bomb, a
client that stops reading."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_helpers import PASSWORD, connect, deliver, no_verify, start_imap_server
from server_harness import RunningServer
from test_imap_hostile import rss_kib, still_serving
from test_imap_sync_tools import local_messages, mbsyncrc

LOGIN = b'a LOGIN alice@example.org "' + PASSWORD.encode() + b'"'


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of this module's own: its users' folders are not the shared ones."""
    server = start_imap_server(tmp_path_factory.mktemp("compress"))
    yield server
    server.stop()


def login_line(user: str) -> bytes:
    return b"a LOGIN " + user.encode() + b' "' + PASSWORD.encode() + b'"'


class Deflating:
    """An IMAP client that turns on COMPRESS DEFLATE and then speaks raw deflate (RFC
    1951, no zlib header) both ways, sync-flushing each command as RFC 4978 4 asks."""

    def __init__(self, server: RunningServer, login: bool = True,
                 user: str = "alice@example.org", receive_buffer: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=60)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.raw = b""
        self.plain = b""
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate: zlib._Decompress | None = None
        self.received = 0  # compressed octets read
        self.greeting = self._plain_line()
        if login:
            self.sock.sendall(login_line(user) + b"\r\n")
            assert self._plain_line().startswith(b"a OK")

    def _plain_line(self) -> bytes:
        while b"\n" not in self.raw:
            data = self.sock.recv(65536)
            assert data, "closed"
            self.raw += data
        line, _, self.raw = self.raw.partition(b"\n")
        return line.rstrip(b"\r")

    def start(self, tag: bytes = b"z") -> bytes:
        """Send COMPRESS DEFLATE; from its OK on, both directions are deflated."""
        self.sock.sendall(tag + b" COMPRESS DEFLATE\r\n")
        answer = self._plain_line()
        if answer.startswith(tag + b" OK"):
            self.inflate = zlib.decompressobj(-15)
            self.plain = self.inflate.decompress(self.raw)
            self.raw = b""
        return answer

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def line(self) -> bytes:
        """One inflated line; b"" once the server closed."""
        assert self.inflate is not None
        while b"\n" not in self.plain:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return b""
            self.received += len(data)
            self.plain += self.inflate.decompress(data)
        line, _, self.plain = self.plain.partition(b"\n")
        return line + b"\n"

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            assert line, f"closed; got {lines}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def read_literal(self, size: int) -> bytes:
        assert self.inflate is not None
        while len(self.plain) < size:
            data = self.sock.recv(65536)
            assert data
            self.received += len(data)
            self.plain += self.inflate.decompress(data)
        out, self.plain = self.plain[:size], self.plain[size:]
        return out

    def close(self) -> None:
        self.sock.close()


def test_compressed_session_fetches_what_was_delivered(imap_server: RunningServer) -> None:
    body = "".join(f"Line {i} of a message that compresses well.\n" for i in range(400))
    deliver(imap_server, "alice@example.org", subject="deflated", body=body)
    client = Deflating(imap_server)
    assert b" COMPRESS=DEFLATE " in client.greeting
    assert client.start() == b"z OK DEFLATE active"
    client.send(b"c CAPABILITY\r\n")
    caps = client.until(b"c")
    assert b" COMPRESS=DEFLATE" in caps[0] and caps[-1] == b"c OK Capability completed\r\n"
    client.send(b"s SELECT INBOX\r\n")
    assert client.until(b"s")[-1].startswith(b"s OK [READ-WRITE]")
    client.send(b'f UID SEARCH SUBJECT "deflated"\r\n')
    uid = client.until(b"f")[0].split()[-1]
    client.send(b"g UID FETCH " + uid + b" BODY.PEEK[TEXT]\r\n")
    head = client.line()
    size = int(head.rsplit(b"{", 1)[1].split(b"}")[0])
    text = client.read_literal(size)
    assert text == body.replace("\n", "\r\n").encode()
    assert client.until(b"g")[-1] == b"g OK Fetch completed\r\n"
    # The answer came compressed: far fewer octets than the text itself.
    assert client.received < size // 5
    client.send(b"l LOGOUT\r\n")
    assert client.until(b"l") == [b"* BYE Logging out\r\n", b"l OK Logout completed\r\n"]
    assert client.line() == b""


def test_compress_twice_and_unknown_mechanism(imap_server: RunningServer) -> None:
    client = Deflating(imap_server)
    assert client.start(b"y") == b"y OK DEFLATE active"
    client.send(b"z COMPRESS DEFLATE\r\n")
    assert client.until(b"z") == [b"z NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n"]
    client.send(b"n NOOP\r\n")
    assert client.until(b"n") == [b"n OK Noop completed\r\n"]
    other = Deflating(imap_server)
    other.sock.sendall(b"x COMPRESS LZMA\r\n")
    assert other._plain_line() == b"x BAD [CANNOT] Unknown compression mechanism LZMA"
    client.close()
    other.close()


def test_compress_before_login_is_refused(imap_server: RunningServer) -> None:
    """COMPRESS is a command of the authenticated state (RFC 4978 5: command-auth)."""
    client = Deflating(imap_server, login=False)
    assert client.start() == b"z BAD COMPRESS needs authentication first"
    client.sock.sendall(LOGIN + b"\r\n")
    assert client._plain_line().startswith(b"a OK")  # still plain text
    client.close()


def test_compress_pipelined_behind_starttls_is_discarded(imap_server: RunningServer) -> None:
    """Before TLS is finished nothing the client pipelined in plain text runs (RFC
    3501 6.2.1), COMPRESS included: the session after the handshake is uncompressed."""
    sock = socket.create_connection(("127.0.0.1", imap_server.ports["imap"]), timeout=60)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"s STARTTLS\r\nz COMPRESS DEFLATE\r\n")
    assert file.readline() == b"s OK Begin TLS negotiation now\r\n"
    tls = no_verify().wrap_socket(sock)
    tls_file = tls.makefile("rb")
    tls.sendall(LOGIN + b"\r\n")
    assert tls_file.readline().startswith(b"a OK")
    tls.sendall(b"n NOOP\r\n")
    assert tls_file.readline() == b"n OK Noop completed\r\n"  # plain: no COMPRESS ran
    tls.sendall(b"z COMPRESS DEFLATE\r\n")
    assert tls_file.readline() == b"z OK DEFLATE active\r\n"
    out = zlib.compressobj(6, zlib.DEFLATED, -15)
    tls.sendall(out.compress(b"m NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
    inflate = zlib.decompressobj(-15)
    got = b""
    while b"\n" not in got:
        got += inflate.decompress(tls.recv(4096))
    assert got == b"m OK Noop completed\r\n"
    tls.close()


def test_deflate_garbage_ends_the_session(imap_server: RunningServer) -> None:
    client = Deflating(imap_server)
    client.start()
    client.sock.sendall(b"\xff" * 64)  # a reserved block type: not deflate
    assert client.line() == b"* BYE Invalid compressed data\r\n"
    assert client.line() == b""
    assert "deflate error" in imap_server.log()
    still_serving(imap_server)


def test_decompression_bomb_is_cut_off(imap_server: RunningServer) -> None:
    """256 MiB of one line, in about 250 KiB of deflate: the session ends with BYE once
    the line passes the line limit, having inflated little more than that, and the
    server's memory does not grow by anything like the bomb."""
    client = Deflating(imap_server)
    client.start()
    before = rss_kib(imap_server)
    chunk = b"A" * (1024 * 1024)
    bomb = [client.out.compress(b"b NOOP ")]
    for _ in range(256):
        bomb.append(client.out.compress(chunk))
    bomb.append(client.out.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(bomb)
    assert len(data) < 300 * 1024
    try:
        client.sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed before it was all sent
    assert client.line() == b"* BYE Line too long in compressed stream\r\n"
    assert client.line() == b""
    assert rss_kib(imap_server) - before < 20 * 1024
    still_serving(imap_server)


def test_client_that_stops_reading_holds_the_server_back(imap_server: RunningServer,
                                                         tmp_path: Path) -> None:
    """Flow control stays intact through the compressor: 200 FETCHes of a 1 MiB message
    that compresses to about half, pipelined in a few hundred compressed octets by a
    client that reads nothing: the server pauses instead of buffering 100-200 MiB of
    answers. What it holds meanwhile is a constant working set (a few copies of the one
    message being answered, the compressor, the threads' arenas: 17-24 MiB measured
    here with 60, 150 and 400 FETCHes alike), not a queue of answers."""
    client = connect(imap_server, "bob@example.org")
    noise = os.urandom(750 * 1024).hex().encode()  # hex: compresses to about half
    client.append("INBOX", None, None, b"Subject: noise\r\n\r\n" + noise[:1024 * 1024]
                  + b"\r\n")
    client.logout()
    raw = Deflating(imap_server, user="bob@example.org", receive_buffer=64 * 1024)
    raw.start()
    raw.send(b"s SELECT INBOX\r\n")
    raw.until(b"s")
    before = rss_kib(imap_server)
    raw.send(b"".join(b"f%d FETCH * BODY.PEEK[]\r\n" % i for i in range(200)))
    time.sleep(3)
    grown = rss_kib(imap_server) - before
    assert grown < 40 * 1024, f"RSS grew {grown} KiB"
    # Reading again lets the answers through, in order.
    first = raw.until(b"f0")
    assert first[0].startswith(b"* ") and first[-1] == b"f0 OK Fetch completed\r\n"
    raw.close()
    still_serving(imap_server)


def test_mbsync_uses_compress(imap_server: RunningServer, tmp_path: Path) -> None:
    """mbsync (isync 1.4) turns COMPRESS=DEFLATE on when offered; its network trace
    shows it, and the sync is complete."""
    deliver(imap_server, "carol@example.net", subject="via deflate")
    (tmp_path / "mail").mkdir()
    config = mbsyncrc(imap_server, tmp_path / "mail")
    result = subprocess.run(["mbsync", "-Dn", "-c", str(config), "-a"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    trace = result.stdout + result.stderr
    assert "COMPRESS DEFLATE" in trace and "OK DEFLATE active" in trace
    assert any(b"Subject: via deflate" in p.read_bytes()
               for p in local_messages(tmp_path / "mail" / "INBOX"))
