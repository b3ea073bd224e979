"""RETR of a big message (over maildrop.STREAM_OCTETS): sent a chunk at a time.

Why: the read-ahead reads a message whole and builds its reply in one buffer, which
for a 50 MiB attachment is ~150 MiB of copies held at once per session (file, CRLF
form, reply), and 10 such clients would take gigabytes. Here the file is read
CHUNK_OCTETS at a time in a disk thread (maildrop.WireReader: wire form per chunk),
and each chunk is written as one big write (TLS cuts it into full 16 KiB records).

Flow control (RFC 1939 says nothing; this is ours): the next chunk is read while the
current one is being sent, but written only once the transport's write buffer has
drained (the session is the transport's producer: a full buffer pauses it, an empty
one resumes it). A client that stops reading therefore holds at most two chunks
here plus the transport's buffer, until the autologout timer aborts it
(core/flow.py). sendfile(2) is not used: stored files have LF line ends, so no stored
byte sequence is the CRLF wire form (see docs/pop3.md).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks

from mailserver.interfaces import IMaildrop, MessageGone
from mailserver.logs import logger
from mailserver.pop3 import maildrop

log = logger(__name__)

#: How to run a blocking job in a disk thread: DiskExecutor.run.
RunInThread = Callable[..., "Deferred[Any]"]


class StreamTarget(Protocol):
    """What the stream needs of the session (POP3Session)."""

    _closing: bool

    def _write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def drained(self) -> Deferred[None] | None:
        """None when more may be written now, else fires once the write buffer has
        drained (or the connection is gone: check _closing)."""


def _open_first(drop: IMaildrop, number: int,
                chunk: int) -> tuple[maildrop.WireReader, bytes]:
    """In a disk thread: the file and its first chunk (so that an unreadable file is
    still answered with -ERR, before any +OK)."""
    reader = maildrop.WireReader.open(drop, number, chunk)
    try:
        return reader, reader.next_chunk()
    except BaseException:
        reader.close()
        raise


def _close(reader: maildrop.WireReader) -> None:
    reader.close()


@inlineCallbacks
def send(session: StreamTarget, run: RunInThread, drop: IMaildrop, number: int, size: int,
         chunk: int = maildrop.CHUNK_OCTETS) -> Generator[Deferred[Any], Any, bool]:
    """Send the RETR reply of message `number` (`size`: its octets as LIST says).
    True when all of it was written; False when the message is gone or unreadable
    (answered -ERR) or the connection went away meanwhile."""
    try:
        reader, data = yield run(_open_first, drop, number, chunk)
    except MessageGone:
        session._write(b"-ERR Message no longer exists (expunged by another session).\r\n")
        return False
    except OSError as e:
        log.warn("POP3 cannot read message {n}: {error}", n=number, error=e.strerror)
        session._write(maildrop.UNREADABLE)
        return False
    try:
        session._write(b"+OK %d octets\r\n" % size)
        while True:
            session._write(data)
            if reader.done:
                return True
            pending: Deferred[bytes] = run(reader.next_chunk)  # read while it is sent
            drained = session.drained()
            if drained is not None:
                yield drained
            data = yield pending
            if session._closing:
                return False
    except OSError as e:
        # After +OK the reply cannot turn into -ERR: the client would take what follows
        # for message text. Closing without the terminator tells it the RETR failed.
        log.warn("POP3 read of message {n} failed mid-reply: {error}", n=number,
                 error=e.strerror)
        if not session._closing:
            session.close()
        return False
    finally:
        if not reader.done:
            run(_close, reader)
