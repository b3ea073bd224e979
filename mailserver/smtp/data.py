"""Incremental decoders for message content: DATA (dot-stuffed) and BDAT (counted chunks).

Pure: the session feeds raw network bytes as they arrive and appends what comes out to
the delivery transaction. Both decoders:

- turn every CRLF into LF (Maildir stores LF line ends);
- never treat a bare CR or bare LF as a line end. SMTP smuggling (CVE-2023-51766 and
  friends, see Postfix's smtpd_forbid_bare_newline) works by making two servers disagree
  on where a message ends; we accept only `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4) and flag
  every bare CR or LF, so the session can refuse the whole message (550 5.5.2) once the
  real end has been read;
- record flags the session acts on at the end: `bare_newline`, `nul`, `eight_bit`,
  `too_big` (wire_size > max_size, after which output is dropped but decoding goes on so
  the session stays in step with the client and can answer 552 5.3.4), `wire_size` and
  `size`.

What the size limit counts (RFC 1870 3): "the number of octets, including CR-LF pairs,
but not the SMTP DATA command's terminating dot or doubled quoting dots, to be
transmitted by the SMTP client after receipt of reply code 354". So `wire_size` is the
content as sent, after dot-unstuffing and before CRLF -> LF: the CRLF that ends the last
line counts, the ".CRLF" of the end marker does not. For BDAT (RFC 3030 2, no stuffing)
that is the sum of the chunk sizes. A bare CR or LF counts as the one octet it is (such a
message is refused anyway). RFC 1870 6.3: a message over the advertised limit is refused
with 552 (RFC 3463 X.3.4), whether or not MAIL carried SIZE=. Counting after the
conversion instead (as we once did) let through one extra octet per line.

Both are correct for any split of the input into feed() calls and carry at most a few
bytes between calls. They work on whole chunks with bytes.find/replace/count (C loops),
never a Python loop per byte or per line.
"""

from __future__ import annotations

from mailserver.errors import ReplyError

_CRLF = b"\r\n"
#: RFC 5321 4.1.1.4: the end of mail data; the leading CRLF ends the last content line.
_END = b"\r\n.\r\n"
#: RFC 5321 4.5.2: a line that starts with "." was dot-stuffed by the client.
_STUFFED = b"\r\n."


class _Decoder:
    """What DotDecoder and ChunkDecoder share: the flags, the size limit, the CRLF rule."""

    def __init__(self, max_size: int, strict_8bit: bool) -> None:
        #: The limit on wire_size (RFC 1870 SIZE, the configured message_size).
        self.max_size = max_size
        #: True when the transaction did not declare BODY=8BITMIME (RFC 6152) or SMTPUTF8;
        #: 8-bit octets then make rejection() refuse the message. The flag `eight_bit` is
        #: kept either way.
        self.strict_8bit = strict_8bit
        #: A CR not followed by LF or an LF not preceded by CR was seen (smuggling defence).
        self.bare_newline = False
        #: A NUL octet was seen (RFC 5322 2.3 forbids NUL in messages).
        self.nul = False
        #: An octet >= 0x80 was seen.
        self.eight_bit = False
        #: Decoded octets so far (after CRLF -> LF and dot-unstuffing): what is stored.
        self.size = 0
        #: Octets as transmitted so far (RFC 1870 3: CRLF pairs included, after
        #: dot-unstuffing, end marker excluded): what max_size limits.
        self.wire_size = 0
        #: wire_size exceeded max_size: output is discarded from then on.
        self.too_big = False

    def _convert(self, content: bytes) -> bytes:
        """Update the flags from `content` and turn its CRLFs into LFs.

        `content` holds no CR that could still pair with an LF of the next chunk (callers
        hold back a trailing CR), so per-chunk counts add up to the whole message's.
        The common case costs one translate and two counts: deleting every CR is the
        CRLF -> LF conversion exactly when every CR is followed by an LF.
        """
        if not self.nul and b"\0" in content:
            self.nul = True
        if not self.eight_bit and not content.isascii():
            self.eight_bit = True
        if self.bare_newline:
            return content.replace(_CRLF, b"\n")
        out = content.translate(None, b"\r")
        crs = len(content) - len(out)
        pairs = content.count(_CRLF) if crs else 0
        if pairs == crs and out.count(b"\n") == pairs:
            return out
        self.bare_newline = True
        return content.replace(_CRLF, b"\n")

    def _emit(self, content: bytes) -> bytes:
        """Count `content` (unstuffed, CRLF line ends: RFC 1870 3) against the limit,
        convert it, and drop the result once the message is over the limit."""
        self.wire_size += len(content)
        if self.wire_size > self.max_size:
            self.too_big = True
        decoded = self._convert(content)
        self.size += len(decoded)
        return b"" if self.too_big else decoded

    def rejection(self) -> ReplyError | None:
        """The reply to refuse the message with, once its end has been read, or None.

        A convenience for the session (same codes and precedence as its own checks):
        too big (RFC 1870 6.3, RFC 5321 4.5.3.1.10: 552 5.3.4); bare CR/LF (550 5.5.2, as
        Postfix's smtpd_forbid_bare_newline=reject); NUL (RFC 5322 2.3 / RFC 3463 X.6.0:
        550 5.6.0); 8-bit data without BODY=8BITMIME when strict_8bit (RFC 6152 3,
        RFC 3463 X.6.1: 550 5.6.1).
        """
        if self.too_big:
            return ReplyError(552, "5.3.4", "Error: message too big")
        if self.bare_newline:
            return ReplyError(550, "5.5.2", "Error: bare CR or LF in message; use CRLF")
        if self.nul:
            return ReplyError(550, "5.6.0", "Error: NUL byte in message")
        if self.strict_8bit and self.eight_bit:
            return ReplyError(550, "5.6.1", "Error: 8-bit data needs BODY=8BITMIME (RFC 6152)")
        return None


class DotDecoder(_Decoder):
    """DATA content (RFC 5321 4.1.1.4): ends at `<CRLF>.<CRLF>`, dot-stuffed (4.5.2).

    Carried state between feed() calls: `_line_start` (the next byte begins a line, i.e.
    follows a real CRLF; true at the start, as the DATA command line ended with CRLF) and
    `_held`, at most two bytes that might begin the end marker or a CRLF: b"", b"\\r",
    b"." or b".\\r" (the last two only at a line start).
    """

    def __init__(self, max_size: int, strict_8bit: bool) -> None:
        super().__init__(max_size, strict_8bit)
        self._line_start = True
        self._held = b""
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Decode `data`: (output to append, None) while the message goes on, then
        (output, the bytes after the end marker) once `<CRLF>.<CRLF>` has been read."""
        if self.done:
            raise RuntimeError("DotDecoder.feed() after the end of data")
        buf = self._held + data if self._held else bytes(data)
        line_start = self._line_start
        if line_start and buf.startswith(b".\r\n"):
            self.done = True
            return b"", buf[3:]
        # Both the end marker and a stuffed line start with "\r\n."; in most chunks there
        # is none, and one find settles both.
        first = buf.find(_STUFFED)
        end = buf.find(_END, first) if first >= 0 else -1
        if end >= 0:
            self.done = True
            # Keep the CRLF that ends the last line; the ".CRLF" is the marker.
            return self._decode(buf[: end + 2], line_start, True), buf[end + 5 :]
        cut = self._safe_cut(buf, line_start)
        self._held = buf[cut:]
        content = buf[:cut]
        if content:
            self._line_start = content.endswith(_CRLF)
        return self._decode(content, line_start, first >= 0), None

    @staticmethod
    def _safe_cut(buf: bytes, line_start: bool) -> int:
        """Where to stop decoding so that nothing held back could still turn out to be
        part of `<CRLF>.<CRLF>` or of a CRLF: the longest such suffix stays held."""
        if line_start and buf in (b".", b".\r"):
            return 0
        if buf.endswith(b"\r\n.\r"):
            return len(buf) - 2
        if buf.endswith(b"\r\n."):
            return len(buf) - 1
        if buf.endswith(b"\r"):
            return len(buf) - 1
        return len(buf)

    def _decode(self, content: bytes, line_start: bool, stuffed: bool) -> bytes:
        if not content:
            return b""
        if stuffed:
            # RFC 5321 4.5.2: drop the first "." of every line. "\r\n." cannot overlap
            # itself, so one replace finds every stuffed line, and removing the dot
            # creates no new CRLF.
            content = content.replace(_STUFFED, _CRLF)
        if line_start and content.startswith(b"."):
            content = content[1:]
        return self._emit(content)


class ChunkDecoder(_Decoder):
    """BDAT content (RFC 3030 2): counted chunks, no dot-stuffing, no end marker.

    The session calls begin_chunk(size) for each BDAT command, feeds bytes until the
    chunk is complete, and calls finish() after the LAST chunk. A CRLF may be split
    across chunks (RFC 3030 2 puts no alignment on chunk boundaries), so a trailing CR
    is carried until the next byte or finish().
    """

    def __init__(self, max_size: int, strict_8bit: bool) -> None:
        super().__init__(max_size, strict_8bit)
        self._remaining = 0
        self._held_cr = False
        self.finished = False

    @property
    def remaining(self) -> int:
        """Octets of the current chunk still to be read (0 when complete)."""
        return self._remaining

    def begin_chunk(self, size: int) -> None:
        """Start a chunk of `size` octets (BDAT size). A size of 0 is complete at once."""
        if self.finished:
            raise RuntimeError("ChunkDecoder.begin_chunk() after finish()")
        if self._remaining:
            raise RuntimeError("ChunkDecoder.begin_chunk() before the previous chunk ended")
        if size < 0:
            raise ValueError("negative chunk size")
        self._remaining = size

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Consume up to the rest of the current chunk from `data`: (output, None) while
        the chunk needs more, then (output, the bytes after the chunk, maybe b"")."""
        if self.finished:
            raise RuntimeError("ChunkDecoder.feed() after finish()")
        take = min(self._remaining, len(data))
        self._remaining -= take
        part = data[:take]
        if self._held_cr:
            part = b"\r" + part
        self._held_cr = part.endswith(b"\r")
        if self._held_cr:
            part = part[:-1]
        out = self._emit(part) if part else b""
        return out, (bytes(data[take:]) if self._remaining == 0 else None)

    def finish(self) -> bytes:
        """After the LAST chunk: settle a CR held at the very end (a bare CR) and return
        any output still held (b"" or b"\\r")."""
        if self._remaining:
            raise RuntimeError("ChunkDecoder.finish() before the last chunk ended")
        self.finished = True
        if not self._held_cr:
            return b""
        self._held_cr = False
        self.bare_newline = True
        return self._emit(b"\r")
