"""A scripted SMTP server on loopback: the remote end for the client tests.

Not our server on purpose: it does exactly what a test says (a 4xx to one RCPT, a drop
in the middle of DATA, silence) and records every byte it received, so tests can assert
the exact wire form the client sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions

from mailserver.app.tls import server_tls_options
from mailserver.config import config_from_dict


@dataclass
class Script:
    extensions: list[str] = field(default_factory=lambda: ["PIPELINING", "8BITMIME"])
    tls: bool = False
    greeting: bytes = b"220 peer.test ESMTP scripted\r\n"
    ehlo_refused: bool = False
    mail_reply: bytes = b"250 2.1.0 Ok\r\n"
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)
    data_reply: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n"
    #: Replies to successive end-of-data dots (the last one repeats).
    final_replies: list[bytes] = field(default_factory=lambda: [b"250 2.0.0 Ok: queued\r\n"])
    #: Close the connection after this many bytes of message data.
    drop_after_data_bytes: int | None = None
    #: Never answer this command verb (e.g. "MAIL"): a hung server.
    silent_on: str | None = None
    #: Break the TLS handshake (send garbage after 220 to STARTTLS).
    broken_tls: bool = False
    #: Close the connection right after the reply to each end of data (idle timeout).
    close_after_message: bool = False
    #: Plaintext sent in the same write as the 220 to STARTTLS (a man in the middle
    #: injecting a reply that the client must not take as the answer to its EHLO).
    starttls_injection: bytes = b""


@dataclass
class Session:
    lines: list[bytes] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    tls: bool = False
    closed: bool = False


class ScriptedSMTP(Protocol):
    def __init__(self, peer: ScriptedPeer) -> None:
        self.peer = peer
        self.script = peer.script
        self.session = Session()
        peer.sessions.append(self.session)
        self.buffer = b""
        self.in_data = False
        self.data = b""
        self.accepted = 0

    def connectionMade(self) -> None:  # noqa: N802
        self.peer.open.append(self)
        self.peer.active += 1
        self.peer.max_active = max(self.peer.max_active, self.peer.active)
        self.transport.write(self.script.greeting)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.session.closed = True
        self.peer.active -= 1
        if self in self.peer.open:
            self.peer.open.remove(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.session.chunks.append(data)
        self.buffer += data
        while self.buffer:
            if self.in_data:
                if not self._data():
                    return
                continue
            if b"\r\n" not in self.buffer:
                return
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.session.lines.append(line)
            self._command(line)

    def _data(self) -> bool:
        limit = self.script.drop_after_data_bytes
        if limit is not None and len(self.data) + len(self.buffer) >= limit:
            self.transport.abortConnection()  # type: ignore[union-attr]
            self.buffer = b""
            return False
        end = (b"\r\n" + self.buffer).find(b"\r\n.\r\n")
        if end < 0:
            return False
        # `end` is an offset in CRLF+buffer: the body is buffer[:end] plus its CRLF.
        body = self.buffer[:end]
        self.buffer = self.buffer[end + 3:] if end else self.buffer[3:]
        self.data += body
        self.session.messages.append(self.data)
        self.data = b""
        self.in_data = False
        replies = self.script.final_replies
        self._send(replies[min(self.peer.finals, len(replies) - 1)])
        self.peer.finals += 1
        if self.script.close_after_message:
            self.transport.loseConnection()  # type: ignore[union-attr]
            self.buffer = b""
            return False
        return True

    def _send(self, reply: bytes) -> None:
        self.transport.write(reply)  # type: ignore[union-attr]

    def _command(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
        if verb == self.script.silent_on:
            return
        s = self.script
        if verb == "EHLO":
            if s.ehlo_refused:
                self._send(b"502 5.5.2 Error: command not recognized\r\n")
                return
            exts = [e for e in s.extensions if not (e == "STARTTLS" and self.session.tls)]
            if s.tls and not self.session.tls:
                exts.append("STARTTLS")
            lines = [b"peer.test", *[e.encode() for e in exts]]
            self._send(b"".join(b"250-" + x + b"\r\n" for x in lines[:-1])
                       + b"250 " + lines[-1] + b"\r\n")
        elif verb == "HELO":
            self._send(b"250 peer.test\r\n")
        elif verb == "STARTTLS":
            self._send(b"220 2.0.0 Ready to start TLS\r\n" + s.starttls_injection)
            if s.broken_tls:
                self._send(b"this is not a TLS record at all\r\n" * 4)
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.transport.startTLS(self.peer.tls_options)  # type: ignore[union-attr]
            self.session.tls = True
        elif verb == "MAIL":
            self._send(s.mail_reply)
        elif verb == "RCPT":
            address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
            reply = s.rcpt_replies.get(address, b"250 2.1.5 Ok\r\n")
            self.accepted += reply.startswith(b"2")
            self._send(reply)
        elif verb == "DATA":
            if not self.accepted:  # RFC 2920 3.1
                self._send(b"554 5.5.1 Error: no valid recipients\r\n")
                return
            self.accepted = 0
            self._send(s.data_reply)
            if s.data_reply.startswith(b"354"):
                self.in_data = True
        elif verb == "AUTH":
            self._send(b"235 2.7.0 Authentication successful\r\n")
        elif verb == "RSET":
            self.accepted = 0
            self._send(b"250 2.0.0 Ok\r\n")
        elif verb == "QUIT":
            self._send(b"221 2.0.0 Bye\r\n")
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self._send(b"502 5.5.2 Error: command not recognized\r\n")


class ScriptedPeer:
    def __init__(self, script: Script, tmp: Path) -> None:
        self.script = script
        self.sessions: list[Session] = []
        #: End-of-data replies given so far, over all connections.
        self.finals = 0
        #: Connections open now, and the most ever open at once.
        self.active = 0
        self.max_active = 0
        self.open: list[ScriptedSMTP] = []
        self.tls_options: CertificateOptions = server_tls_options(
            config_from_dict({"data_dir": str(tmp), "hostname": "peer.test"}))
        factory = Factory.forProtocol(lambda: ScriptedSMTP(self))  # type: ignore[arg-type]
        factory.noisy = False
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, factory, interface="127.0.0.1")

    @property
    def port_number(self) -> int:
        return self.port.getHost().port  # type: ignore[attr-defined, no-any-return]

    def stop(self) -> object:
        """Stop listening and close every session still open, then give the client side
        a few reactor turns to see the close (on a loaded machine a test's cleanup could
        otherwise find the client's connections, and their timeouts, still pending)."""
        stopped = defer.maybeDeferred(self.port.stopListening)
        for protocol in list(self.open):
            protocol.transport.abortConnection()  # type: ignore[union-attr]

        async def settle() -> None:
            await stopped
            for _ in range(200):
                if not self.open:
                    break
                await task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
            await task.deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]

        return defer.ensureDeferred(settle())


OnSession = Callable[[Session], None]
