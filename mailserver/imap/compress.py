"""COMPRESS=DEFLATE (RFC 4978): the IMAP session compressed both ways.

After `tag OK` to COMPRESS DEFLATE, everything we send is a raw deflate stream (RFC
1951, no zlib header: wbits -15 on the reading side) and so is everything the client
sends (RFC 4978 3). It sits between IMAP and TLS: the session's `send` compresses and
writes to the transport as before, and what the transport delivers is inflated before
the line reader sees it. Nothing else changes, so flow control stays as it is: the
session remains the transport's producer (a full write buffer pauses it, core/flow.py),
and reading pauses while inflated input backs up.

Bounded memory per session:

- The deflater is made with a smaller window and memLevel than zlib's defaults
  (COMPRESS_WBITS, MEM_LEVEL: zlib's deflate needs 2^(wbits+2) + 2^(memLevel+9)
  octets, 96 KiB here against 256 KiB). RFC 4978 4 allows any window for the sender;
  the inflater must take the full 32 KiB window, since the client chooses.
- Each send is one burst: deflated and ended with Z_SYNC_FLUSH (RFC 4978 4: the
  receiver must be able to act on it without waiting for more).
- Input is inflated INFLATE_CHUNK octets at a time (zlib's max_length), and only while
  the session takes it: past `max_pending_input` unhandled octets the rest stays
  compressed and the socket stops being read. A decompression bomb (a few KiB that
  expand to GiBs) therefore never costs more than the line and literal limits: a line
  that outgrows the limit inside a compressed stream ends the session with BYE, since
  discarding it would mean inflating all of it (about 1000 times what the client sent).
- Input that is not a deflate stream (or one the client ended) ends the session with
  BYE; the server stays up.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from mailserver.core.flow import FlowControl
from mailserver.imap.commands import ANSWERED, Refusal, bad
from mailserver.imap.grammar_quota import Compress
from mailserver.logs import logger

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

log = logger(__name__)

#: zlib's level for our output. Measured on 1,000 generated messages in FETCH bursts
#: (docs/decisions/0026): level 1 came within 1-2 % of the size of 6 and 9 at two to
#: three times their speed, and compression runs on the reactor thread (like TLS).
LEVEL = 1
#: Our deflate window: 2^13 = 8 KiB (zlib's default is 32 KiB). Raw deflate: negative.
COMPRESS_WBITS = -13
#: zlib's memLevel (1-9, default 8): the size of its hash table.
MEM_LEVEL = 7
#: The client's window may be the full 32 KiB (RFC 1951): the inflater must accept it.
DECOMPRESS_WBITS = -15
#: Octets inflated at a time; the session handles them before more are inflated.
INFLATE_CHUNK = 64 * 1024


class Deflate:
    """One session's deflate state: the two zlib streams, and the client's compressed
    octets not inflated yet (at most what arrived while the session was held)."""

    def __init__(self) -> None:
        self._out = zlib.compressobj(LEVEL, zlib.DEFLATED, COMPRESS_WBITS, MEM_LEVEL)
        self._in = zlib.decompressobj(DECOMPRESS_WBITS)
        #: Compressed input not yet given to zlib (its unconsumed_tail).
        self.pending = b""
        #: zlib may hold inflated output although `pending` is empty: the last call
        #: filled max_length exactly.
        self._more = False
        self._pumping = False
        #: Octets in and out, for the log line at the end.
        self.raw_out = 0
        self.sent = 0

    def compress(self, data: bytes) -> bytes:
        """`data` deflated and sync-flushed: the client can inflate all of it now."""
        out = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        self.raw_out += len(data)
        self.sent += len(out)
        return out

    @property
    def has_input(self) -> bool:
        return bool(self.pending) or self._more

    def inflate(self) -> bytes:
        """Up to INFLATE_CHUNK octets of the client's stream. zlib.error if it is not
        deflate, or the client ended it (RFC 4978 has no end: the stream runs until the
        connection closes)."""
        data = self._in.decompress(self.pending, INFLATE_CHUNK)
        self.pending = self._in.unconsumed_tail
        self._more = len(data) == INFLATE_CHUNK
        if self._in.eof:
            raise zlib.error("the client ended its deflate stream")
        return data


async def compress(session: IMAPSession, command: Compress) -> str | None:
    """RFC 4978 3: COMPRESS DEFLATE, in the authenticated and selected states (the
    formal syntax puts it in command-auth, so TLS, a command of the not-authenticated
    state, always comes first)."""
    if session.compression is not None:
        raise Refusal("NO", "DEFLATE is active already", "COMPRESSIONACTIVE")
    if command.mechanism != "DEFLATE":
        raise bad(f"Unknown compression mechanism {command.mechanism}", "CANNOT")
    # The tagged OK goes out uncompressed; everything after it is compressed, both ways
    # (RFC 4978 3). Octets the client sent after its COMPRESS line are its stream.
    session.send(f"{command.tag} OK DEFLATE active\r\n".encode())
    deflate = Deflate()
    session.compression = deflate
    if session._buffer:
        deflate.pending = bytes(session._buffer)
        session._buffer.clear()
    return ANSWERED


def received(session: IMAPSession, data: bytes) -> None:
    """dataReceived of a compressed session."""
    deflate = session.compression
    if session._closing or deflate is None:
        return
    deflate.pending += data
    pump(session)


def pump(session: IMAPSession) -> bool:
    """Inflate and handle input while the session takes it. True if nothing compressed
    is left; otherwise reading from the socket is paused until the session has handled
    what it holds (its resume_reading calls this again)."""
    deflate = session.compression
    assert deflate is not None
    if deflate._pumping:
        return False
    deflate._pumping = True
    try:
        while (deflate.has_input and not session._closing
               and len(session._buffer) <= session.max_pending_input):
            try:
                chunk = deflate.inflate()
            except zlib.error as e:
                _end(session, "Invalid compressed data", f"deflate error: {e}")
                return True
            if not chunk:
                break
            FlowControl.dataReceived(session, chunk)
            if session._reader.discarding:
                # An overlong line inside a compressed stream: a bomb, or a client we
                # cannot follow; discarding it would mean inflating all of it.
                _end(session, "Line too long in compressed stream", "overlong line")
                return True
    finally:
        deflate._pumping = False
    if deflate.has_input and not session._closing:
        if not session._reading_paused:
            session._reading_paused = True
            session.transport.pauseProducing()
        return False
    return True


def _end(session: IMAPSession, text: str, reason: str) -> None:
    log.info("{session} {reason} from {peer}; closing", session=session.session_id,
             reason=reason, peer=session.peer_ip)
    deflate = session.compression
    if deflate is not None:
        deflate.pending = b""
        deflate._more = False
    session.send(f"* BYE {text}\r\n".encode())
    session.close()
