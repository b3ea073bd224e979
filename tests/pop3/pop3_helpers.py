"""Helpers for the POP3 tests: start the real server with pop3 (STLS) and pop3s
listeners, and place messages in a user's Maildir exactly as our delivery names them."""

from __future__ import annotations

import gc
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from server_harness import RunningServer, make_server
from wire import REPLY_TIMEOUT

from mailserver.interfaces import MaildropInUse
from mailserver.store.maildir import crlf_size, unique_name
from mailserver.store.maildroplock import MaildropLock

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
PASSWORD = "correct horse battery staple"

POP3_LISTEN = {
    "smtp": "tcp:0:interface=127.0.0.1",
    "pop3": "tcp:0:interface=127.0.0.1",
    "pop3s": "tcp:0:interface=127.0.0.1",
}


def start_pop3_server(root: Path, plaintext: bool = False, **overrides: Any) -> RunningServer:
    overrides.setdefault("listen", POP3_LISTEN)
    # The shared servers serve many tests, every client 127.0.0.1: with the default
    # login throttle (10 failures per address, all protocols) one test's wrong
    # passwords would refuse the next test's logins. tests/integration/
    # test_login_throttle.py tests the throttle itself.
    overrides.setdefault("abuse", {"login_failures": 1000})
    server = make_server(root, start=False,
                         auth={"allow_plaintext_without_tls": plaintext}, **overrides)
    for user in USERS:
        server.add_user(user, PASSWORD)
    return server.start()


def client_tls() -> ssl.SSLContext:
    """The test server's certificate is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def put_message(maildir: Path, content: bytes, subdir: str = "new", flags: str | None = None,
                name: str | None = None) -> Path:
    """A message file named as our delivery names it (S= and W= sizes), LF line ends."""
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    if name is None:
        name = unique_name(len(content), crlf_size(content))
    if flags is not None:
        name += ":2," + flags
    path = maildir / subdir / name
    path.write_bytes(content)
    return path


def message(n: int, body_lines: int = 3) -> bytes:
    """A small message with a line that begins with a dot (dot-stuffing on the wire)."""
    body = "".join(f"line {i} of message {n}\n" for i in range(body_lines))
    return (f"From: alice@example.org\nTo: alice@example.org\nSubject: test {n}\n"
            f"Message-ID: <m{n}@test>\n\n{body}.dotted line\n..two dots\nend\n").encode()


def wire_form(stored: bytes) -> bytes:
    """What RETR must send for a stored (LF) message, before dot-stuffing."""
    return stored.replace(b"\n", b"\r\n")


def wait_unlocked(maildir: Path, timeout: float = 30) -> None:
    """Wait until no POP3 session holds the maildrop (the [IN-USE] lock is an flock, so
    the test process can test it too)."""
    if not maildir.is_dir():
        return
    gc.collect()  # close the sockets of clients a failed test dropped
    deadline = time.monotonic() + timeout
    while True:
        try:
            MaildropLock.acquire(maildir).release()
            return
        except MaildropInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RawPop3:
    """Exact bytes in, whole lines out: for hostile input, where poplib would refuse."""

    def __init__(self, address: tuple[str, int], timeout: float = REPLY_TIMEOUT) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(address, timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; partial line {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.line()

    def starttls(self) -> None:
        assert self.buffer == b"", "plaintext left over before TLS"
        assert isinstance(self.sock, socket.socket)
        self.sock = client_tls().wrap_socket(self.sock, server_hostname="localhost")

    def closed(self) -> bool:
        """True once the server has closed the connection (reads until EOF)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
