"""Flow control of the line-protocol sessions: the mixin of core/connection.py's
LineConnection, the base of the SMTP, POP3 and IMAP sessions.

Each handles one command at a time. Their reading from the socket pauses while a
command waits for the disk or a login (so pipelined input cannot pile up), and while
the client reads none of our replies (the session is the transport's producer: a
full write buffer pauses it), so a client that pipelines without reading cannot make
us buffer replies without bound. A timeout on such a client, or a goodbye it never
reads, aborts the connection instead of waiting for the buffer to drain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import interfaces
from zope.interface import implementer

from mailserver.logs import logger

log = logger(__name__)

#: Unhandled input held while a command waits, before reading from the socket pauses.
MAX_PENDING_INPUT = 256 * 1024
#: Seconds a closing connection may take to drain its last reply before it is aborted.
CLOSE_GRACE = 30


@implementer(interfaces.IPushProducer)
class FlowControl:
    """Mixin for a Protocol + TimeoutMixin session that defines `_process()` (handle
    buffered input until `held()`), `_buffer`, `_busy`, `_closing`, `session_id` and
    `peer_ip`. Call `init_flow()` in __init__ and `start_flow()` in connectionMade.
    Listed before TimeoutMixin among the bases, it provides dataReceived."""

    #: Unhandled input held before reading pauses (a class may choose its own).
    max_pending_input = MAX_PENDING_INPUT

    transport: Any
    _buffer: bytearray
    _busy: bool
    _closing: bool
    session_id: str
    peer_ip: str
    #: TimeoutMixin's, later among the session's bases (declared, never defined here:
    #: a definition would shadow it).
    resetTimeout: Callable[[], None]

    def _process(self) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Buffer, handle what can be handled, and stop reading if the rest backs up."""
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()
        self.limit_reading()

    def init_flow(self) -> None:
        self._reading_paused = False  # we paused the transport's reading
        self._writing_paused = False  # the transport's write buffer is full
        self._producing = False  # registered with the transport as its producer

    def start_flow(self) -> None:
        self.transport.registerProducer(self, True)
        self._producing = True

    def held(self) -> bool:
        """No command may be handled now."""
        return self._busy or self._closing or self._writing_paused

    def limit_reading(self) -> None:
        """After buffering input: stop reading while it cannot be handled."""
        if (self._busy or self._writing_paused) \
                and len(self._buffer) > self.max_pending_input \
                and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._reading_paused and not self.held():
            self._reading_paused = False
            self.transport.resumeProducing()

    # -- IPushProducer: the transport says when its write buffer is full ---------------

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._writing_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        if not self._writing_paused:
            return
        self._writing_paused = False
        self._process()
        self.resume_reading()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._writing_paused = True

    # -- closing -------------------------------------------------------------------------

    def close_transport(self) -> None:
        if self.transport is None:
            return
        # TLS (TLSMemoryBIOProtocol) postpones its close_notify and the close itself while
        # a producer is registered: unregister first, or the connection stays.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort_if_not_reading(self) -> bool:
        """On a timeout: a client that reads nothing (a stalled download, or our last
        words after QUIT, an error limit or an earlier timeout) is aborted, since
        loseConnection would wait for the write buffer to drain forever. True if so."""
        if not (self._closing or self._writing_paused):
            return False
        log.info("{session} {peer} stopped reading, aborting", session=self.session_id,
                 peer=self.peer_ip)
        self.transport.abortConnection()
        return True
