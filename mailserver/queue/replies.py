"""The peer's side of an outbound SMTP conversation: its bytes read into SMTPReply
objects, in order, with the limits a hostile peer meets (line length, lines per reply,
replies nobody asked for), and the error a conversation ends with.

Kept out of client.py (the conversation itself), which had grown past 700 lines;
client.py re-exports every name here.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from mailserver.logs import ELLIPSIS, printable

#: Longest reply line we accept (RFC 5321 4.5.3.1.5 says 512 octets; be lenient).
MAX_LINE = 4096
#: Lines in one multi-line reply (EHLO lists a few dozen at most).
MAX_LINES = 200
#: Lines of a reply kept in its text (logs, envelope, DSN); the code and enhanced
#: status come from the first line, and real multi-line 4xx/5xx replies have a few.
MAX_TEXT_LINES = 10
#: Bytes of replies received but not yet read by the conversation. Replies are read as
#: they come (pipelined ones too), so only a peer talking unasked fills this: without a
#: cap, a hostile peer streaming "250 ok" lines would grow our memory without limit.
MAX_UNREAD = 256 * 1024

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class SMTPClientError(Exception):
    """The conversation with this host ended; `text` says how, for the log and DSN."""

    def __init__(self, text: str, code: int = 0, status: str = "4.4.2") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


@dataclass(frozen=True)
class SMTPReply:
    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str:
        m = _ENHANCED.match(self.lines[0]) if self.lines else None
        return ".".join(m.groups()) if m else ""

    @property
    def text(self) -> str:
        """The reply as one line for logs, the envelope and DSNs: "550 5.1.1 No such
        user". The remote server chose it: at most MAX_TEXT_LINES lines and
        logs.MAX_PEER_TEXT octets of it are kept, control characters made "?"
        (a 200-line 550 full of ESC and NUL once made a 4.7 MB bounce)."""
        text = f"{self.code} " + " ".join(line.strip() for line in self.lines[:MAX_TEXT_LINES])
        if len(self.lines) > MAX_TEXT_LINES:
            text += " " + ELLIPSIS
        return printable(text)

    def status(self, default_detail: str = "0.0") -> str:
        """RFC 3463 status: the enhanced code when given, else derived from the code."""
        return self.enhanced or f"{self.code // 100}.{default_detail}"


class ReplyProtocol(Protocol):
    """Bytes -> SMTPReply objects; `next_reply()` hands them out in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[str] = []
        self._replies: deque[SMTPReply] = deque()
        self._waiters: deque[Deferred[SMTPReply]] = deque()
        self._lost: Failure | None = None
        self._unread = 0
        #: Set while STARTTLS is answered: whatever follows its reply in plaintext is
        #: dropped (a man in the middle injecting replies, RFC 3207 5 / CVE-2011-0411
        #: from the client's side): the TLS layer must start from an empty buffer.
        self.switching_to_tls = False
        self.connected_d: Deferred[None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.paused: Deferred[None] | None = None
        # A streaming producer: the transport says when its send buffer is full.
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.connected_d.callback(None)

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        if self.paused is None:
            self.paused = Deferred()

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        paused, self.paused = self.paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.resumeProducing()

    def drained(self, timeout: float, clock: IReactorTime) -> Deferred[None]:
        """Fires once the transport wants more data (at once if it does). A peer that
        stops reading for `timeout` seconds is dropped (RFC 5321 4.5.3.2.5: the data
        block timeout), or a connection slot would hang on it for ever."""
        if self._lost is not None:
            return defer.fail(self._lost)
        if self.paused is None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()

        def wake(_: None) -> None:
            if not d.called:  # it may have timed out already
                d.callback(None)

        self.paused.addCallback(wake)

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.TimeoutError, defer.CancelledError):
                abort_transport(self.transport)
                return Failure(SMTPClientError(
                    f"peer read nothing of the message for {timeout:g}s"))
            return f

        d.addTimeout(timeout, clock)
        d.addErrback(timed_out)
        return d

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self._buffer += data
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            self._line(raw.rstrip(b"\r"))
            if self._lost is not None:
                return
        if len(self._buffer) > MAX_LINE:
            self._garbage("reply line too long")

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if len(raw) > MAX_LINE or len(line) < 3 or not line[:3].isdigit() or (
                len(line) > 3 and line[3] not in " -"):
            self._garbage(f"malformed reply line {line[:80]!r}")
            return
        self._lines.append(line[4:])
        if len(self._lines) > MAX_LINES:
            self._garbage("reply too long")
            return
        if len(line) == 3 or line[3] == " ":
            reply = SMTPReply(int(line[:3]), tuple(self._lines))
            self._lines = []
            if self.switching_to_tls:
                self.switching_to_tls = False
                self._buffer = b""  # plaintext after the reply to STARTTLS: injected
                self._replies.clear()
                self._unread = 0
            if self._waiters:
                self._waiters.popleft().callback(reply)
                return
            self._replies.append(reply)
            self._unread += sum(map(len, reply.lines)) + 4
            if self._unread > MAX_UNREAD:
                self._garbage("too many replies nobody asked for")

    def _garbage(self, why: str) -> None:
        self._fail(Failure(SMTPClientError(f"protocol error: {why}")))
        abort_transport(self.transport)

    @property
    def lost(self) -> Failure | None:
        return self._lost

    def _fail(self, failure: Failure) -> None:
        if self._lost is None:
            self._lost = failure
        while self._waiters:
            self._waiters.popleft().errback(self._lost)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]  # noqa: N802
        self._fail(Failure(SMTPClientError("lost connection")))
        self.resumeProducing()

    def next_reply(self, timeout: float, clock: IReactorTime) -> Deferred[SMTPReply]:
        if self._replies:
            reply = self._replies.popleft()
            self._unread -= sum(map(len, reply.lines)) + 4
            return defer.succeed(reply)
        if self._lost is not None:
            return defer.fail(self._lost)
        d: Deferred[SMTPReply] = Deferred()
        self._waiters.append(d)

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.TimeoutError, defer.CancelledError):
                if d in self._waiters:
                    self._waiters.remove(d)
                abort_transport(self.transport)
                return Failure(SMTPClientError(f"conversation timed out after {timeout:g}s"))
            return f

        d.addTimeout(timeout, clock)
        d.addErrback(timed_out)
        return d


def abort_transport(transport: object) -> None:
    """Drop the connection now, buffered output and all (a timed-out or misbehaving
    peer gets no orderly close)."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
