"""An IMAP session over StringTransport with the real store on a temp Maildir.

Disk calls run inline (or are held for the test to release), logins go through a
twisted.cred portal with an in-memory checker: fast, deterministic session tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes import FakeDisk, MailRealm
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailserver.config import Config, config_from_dict
from mailserver.core.throttle import LoginThrottle
from mailserver.imap.server import IMAPServerFactory, IMAPSession
from mailserver.store.opener import MaildirOpener

PASSWORD = "secret"

#: Every Session made by the running test, disconnected by the autouse fixture in
#: conftest.py at its end (a selected folder holds a store watch until then).
OPEN_SESSIONS: list[Session] = []


def make_config(root: Path, **auth: Any) -> Config:
    return config_from_dict({
        "hostname": "imap.test.example",
        "data_dir": str(root),
        "domains": {"local": ["example.org"]},
        "auth": {"allow_plaintext_without_tls": True, **auth},
        "limits": {"message_size": 100000, "command_timeout": 60},
    })


class Session:
    """One connection: `send(b"a NOOP")` then read `lines()` / `take()`."""

    def __init__(self, root: Path, config: Config | None = None,
                 tls: Any = None, transport: StringTransport | None = None,
                 throttle: LoginThrottle | None = None) -> None:
        self.config = config or make_config(root)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice@example.org", PASSWORD.encode())
        checker.addUser(b"bob@example.org", PASSWORD.encode())
        self.disk = FakeDisk()
        self.clock = Clock()
        self.throttle = throttle or LoginThrottle(clock=self.clock)
        self.factory = IMAPServerFactory(self.config, Portal(MailRealm(), [checker]),
                                         self.disk,  # type: ignore[arg-type]
                                         MaildirOpener(self.config.mail_dir),
                                         tls_options=tls, login_throttle=self.throttle)
        self.protocol: IMAPSession = self.factory.buildProtocol(None)
        self.protocol.callLater = self.clock.callLater  # type: ignore[assignment]
        self.transport = transport or StringTransport()
        self.protocol.makeConnection(self.transport)
        OPEN_SESSIONS.append(self)

    def disconnect(self) -> None:
        """The client goes away: the session drops its view and its store watch."""
        if not self.protocol._lost:
            self.transport.loseConnection()
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def send(self, data: bytes, crlf: bool = True) -> None:
        self.protocol.dataReceived(data + (b"\r\n" if crlf else b""))

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[bytes]:
        return self.take().split(b"\r\n")[:-1]

    def command(self, data: bytes) -> list[bytes]:
        self.send(data)
        return self.lines()

    def login(self, user: bytes = b"alice@example.org") -> None:
        self.take()
        reply = self.command(b"l LOGIN " + user + b" " + PASSWORD.encode())
        assert reply[-1].startswith(b"l OK"), reply


class PausingTransport(StringTransport):
    """A client that reads slowly once `slow` is set: every write fills the (pretend)
    socket buffer, so the producer (the session) is paused until the test resumes it."""

    slow = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.slow and self.producer is not None:
            self.producer.pauseProducing()
