"""IMAP test helpers: a server with smtp + imap + imaps on loopback, clients, delivery."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from server_harness import PASSWORD, USERS, RunningServer, make_server  # noqa: E402
from wire import REPLY_TIMEOUT  # noqa: E402

__all__ = ["PASSWORD", "USERS"]

LISTEN = {"smtp": "tcp:0:interface=127.0.0.1", "imap": "tcp:0:interface=127.0.0.1",
          "imaps": "tcp:0:interface=127.0.0.1"}


def start_imap_server(root: Path, users: tuple[str, ...] = USERS,
                      **overrides: object) -> RunningServer:
    overrides.setdefault("auth", {"allow_plaintext_without_tls": True})
    # The shared servers serve many tests, every client 127.0.0.1: with the default
    # login throttle (10 failures per address, all protocols) one test's wrong
    # passwords would refuse the next test's logins. tests/integration/
    # test_login_throttle.py tests the throttle itself.
    overrides.setdefault("abuse", {"login_failures": 1000})
    server = make_server(root, start=False, listen=LISTEN, **overrides)
    for user in users:
        server.add_user(user, PASSWORD)
    return server.start()


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(server: RunningServer, user: str = "alice@example.org",
            password: str = PASSWORD) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=REPLY_TIMEOUT)
    client.login(user, password)
    return client


def deliver(server: RunningServer, to: str, subject: str = "hello",
            body: str = "Hello there.\n", extra: str = "") -> None:
    """One message through the real SMTP listener."""
    message = (f"From: Bob <bob@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
               f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n"
               f"{extra}\r\n{body}")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=REPLY_TIMEOUT) as smtp:
        smtp.sendmail("bob@example.com", [to], message)


class Line:
    """A raw IMAP client for hostile input: send bytes, read lines."""

    def __init__(self, server: RunningServer, service: str = "imap") -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", server.ports[service]), timeout=REPLY_TIMEOUT)
        if service == "imaps":
            self.sock = no_verify().wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def until(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged completion for `tag`."""
        lines = []
        while True:
            line = self.line()
            if not line:
                raise AssertionError(f"connection closed; got {lines}")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


