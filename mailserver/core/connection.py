"""The connection base of the SMTP, POP3 and IMAP sessions: read lines, handle one
command at a time, count errors, time out, close.

What is the same in all three lives here once:

- the bounded line reader (core/lines.py; each protocol's rules in one table there);
- the loop: handle buffered input until it runs out or a command must wait. A command
  that returns a Deferred (the disk, a login) holds every later pipelined command in
  our buffer until it fires, so answers go out in order (RFC 2920 3.1, RFC 2449 6.6,
  RFC 3501 5.5); past `max_pending_input` reading pauses (core/flow.py);
- the error limit: `errors_per_session` refused commands and the session says goodbye
  and closes, so a flood cannot hold a connection;
- the timeouts: the idle timeout says goodbye, and a client that reads nothing (our
  goodbye included) is aborted after CLOSE_GRACE instead of holding its buffers;
- shut_down: the server stopping says goodbye to every session (SessionFactory, the
  base of the three protocols' factories, keeps the sessions alive and numbers them).

What differs is stated by each session: `rules` (its LineRules), the words it says
(`goodbyes`), and hooks: `take_raw()` for octets that are not lines (SMTP DATA and
BDAT, IMAP literals), `line_received()`, `line_refused()`, `command_failed()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailserver.config import Config
from mailserver.core.flow import CLOSE_GRACE, FlowControl
from mailserver.core.lines import LineReader, LineRefused, LineRules
from mailserver.logs import logger

log = logger(__name__)

S = TypeVar("S", bound="LineConnection")


@dataclass(frozen=True)
class Goodbyes:
    """The last line a session sends when it closes on its own (CRLF is added,
    `{hostname}` filled in). Each protocol's are next to its session class."""

    #: The idle timeout ran out (RFC 5321 4.5.3.2, RFC 1939 3, RFC 3501 5.4).
    timeout: str
    #: `errors_per_session` refused commands.
    errors: str
    #: The server is stopping (RFC 5321 3.8, RFC 2449 8.1.2, RFC 3501 7.1.5).
    shutdown: str


class LineConnection(FlowControl, Protocol, TimeoutMixin):
    """One connection of a line protocol. A subclass sets `rules`, calls
    `init_connection()` in __init__, and defines the hooks below."""

    #: The protocol's framing rules (core/lines.py).
    rules: ClassVar[LineRules]
    goodbyes: ClassVar[Goodbyes]
    #: Ask for TCP_NODELAY: the protocol writes whole answers, Nagle would only delay
    #: their tails until the client's delayed ACK.
    tcp_no_delay: ClassVar[bool] = False
    #: The idle timer stops while a command waits (our disk is not the client's
    #: silence) and restarts after. POP3 and IMAP choose their timers per state.
    suspend_timeout_while_waiting: ClassVar[bool] = False
    #: shut_down interrupts a waiting command (IMAP's untagged BYE may come at any
    #: time, RFC 3501 7.1.5); otherwise the goodbye follows the command's reply.
    shut_down_while_busy: ClassVar[bool] = False
    #: Log lines (not wire behaviour).
    timeout_log: ClassVar[str] = "{session} timeout from {peer}"

    factory: Any
    config: Config
    session_id: str

    def init_connection(self) -> None:
        self.peer_ip = "unknown"
        self.errors = 0
        self._buffer = bytearray()
        self._reader = LineReader(self.rules)
        self._busy = False  # a command waits for a Deferred
        self._processing = False  # inside _process (it is not reentrant)
        self._closing = False
        self._lost = False  # connectionLost has run
        self.init_flow()

    # -- hooks ---------------------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        """Write `data` to the client the protocol's way."""
        raise NotImplementedError

    def greeting(self) -> None:
        raise NotImplementedError

    def initial_timeout(self) -> float | None:
        return self.config.limits.command_timeout

    def take_raw(self) -> bool:
        """Consume buffered octets that are not command lines (DATA, a literal); True
        if it did (the loop goes on), False to read a line."""
        return False

    def max_line(self) -> int | None:
        """The limit for the line now at the front of the buffer (None: the rules')."""
        return None

    def may_handle_input(self) -> bool:
        """Buffered input may be handled now (IMAP: a pending AUTHENTICATE reads its
        answer although busy)."""
        return not self.held()

    def line_received(self, line: bytes) -> None:
        raise NotImplementedError

    def line_refused(self, refused: LineRefused) -> None:
        raise NotImplementedError

    def command_failed(self, failure: Failure) -> None:
        """A waited-for Deferred failed (the commands answer their own errors)."""

    def closed_while_busy(self) -> None:
        """The waited-for Deferred fired after the session closed."""

    def on_close(self) -> None:
        """The session is closing (before the transport is)."""

    # -- lifecycle -----------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "unknown")
        if self.tcp_no_delay:
            set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                except OSError:  # not a TCP socket (tests, UNIX sockets)
                    pass
        self.factory.sessions.add(self)
        self.start_flow()
        self.setTimeout(self.initial_timeout())
        self.greeting()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.setTimeout(None)
        self._closing = True
        self._lost = True
        self._buffer.clear()
        self.factory.sessions.discard(self)

    def close(self) -> None:
        """Stop reading commands and close once the replies are written."""
        self._closing = True
        self._buffer.clear()
        self.on_close()
        self.close_transport()

    _close = close  # the name the SMTP and POP3 command mixins use

    def shut_down(self) -> None:
        """The server is stopping: say so and close (after a waiting command's reply,
        which _wait_for's callback sends first)."""
        if self._busy and not self.shut_down_while_busy:
            return
        self.say_goodbye(self.goodbyes.shutdown)
        self.close()

    def timeoutConnection(self) -> None:  # noqa: N802 - Twisted's name
        if self.abort_if_not_reading():
            return
        log.info(self.timeout_log, session=self.session_id, peer=self.peer_ip)
        self.say_goodbye(self.goodbyes.timeout)
        self.close()
        self.setTimeout(CLOSE_GRACE)  # ... unless the client never reads that goodbye

    def say_goodbye(self, line: str) -> None:
        self.emit(line.format(hostname=self.config.hostname).encode("utf-8") + b"\r\n")

    # -- input ---------------------------------------------------------------------------

    def _process(self) -> None:
        """Handle buffered input until it runs out or a command has to wait."""
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and self.may_handle_input():
                if self.take_raw():
                    continue
                try:
                    line = self._reader.next_line(self._buffer, self.max_line())
                except LineRefused as refused:
                    self.line_refused(refused)
                    continue
                if line is None:
                    break
                self.line_received(line)
        finally:
            self._processing = False
        self.resume_reading()

    def discard_input(self) -> None:
        """Throw away what the client sent and has not been read (RFC 3207 4.2, RFC
        2595 4: nothing pipelined after STARTTLS in plaintext is executed)."""
        self._buffer.clear()
        self._reader.reset()

    def _wait_for(self, d: Deferred[Any]) -> None:
        """Hold all further input until `d` fires: answers go out in order."""
        self._busy = True
        if self.suspend_timeout_while_waiting:
            self.setTimeout(None)

        def done(result: object) -> None:
            self._busy = False
            if isinstance(result, Failure):
                self.command_failed(result)
            if self._closing:
                self.closed_while_busy()
                return
            if self.factory.shutting_down:
                self.shut_down()
                return
            if self.suspend_timeout_while_waiting:
                self.setTimeout(self.config.limits.command_timeout)
            self._process()

        d.addBoth(done)

    # -- errors --------------------------------------------------------------------------

    def _count_error(self) -> None:
        """One more refused command; too many end the session (like Postfix's
        smtpd_hard_error_limit), so a flood cannot hold a connection forever."""
        self.errors += 1
        if self.errors >= self.config.limits.errors_per_session:
            log.info("{session} too many errors from {peer}", session=self.session_id,
                     peer=self.peer_ip)
            self.say_goodbye(self.goodbyes.errors)
            self.close()


class SessionFactory(Factory[S]):
    """What the SMTP, POP3 and IMAP factories share: the sessions alive (for shut_down),
    their numbering, and the prefix of their ids in the log. A subclass says how to
    build one session (`new_session`)."""

    def __init__(self, name: str, instance: int) -> None:
        # Session ids name the process too when there are workers: "smtp-12" / "w2-smtp-12".
        self.id_prefix = f"w{instance}-{name}" if instance else name
        self.sessions_started = 0
        self.sessions: set[S] = set()
        self.shutting_down = False

    def new_session(self, number: int) -> S:
        raise NotImplementedError

    def buildProtocol(self, addr: IAddress | None) -> S:  # noqa: N802 - Twisted's name
        self.sessions_started += 1
        return self.new_session(self.sessions_started)

    def shut_down(self) -> None:
        """Server stopping: every session says its goodbye and closes
        (LineConnection.shut_down: a session waiting on a command answers it first,
        unless the protocol may interrupt it)."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.shut_down()
