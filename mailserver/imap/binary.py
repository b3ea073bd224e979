"""BINARY (RFC 3516): FETCH BINARY[part]<partial>, BINARY.PEEK[...] and BINARY.SIZE[part],
a part's content with its Content-Transfer-Encoding undone.

base64 and quoted-printable are decoded; 7bit, 8bit and binary (and no CTE) are sent as
they are. Any other CTE, and base64 that is not base64 (a character outside the
alphabet: RFC 2045 6.8 says to ignore them, but then the client gets octets the sender
never meant, silently), fail the FETCH with NO [UNKNOWN-CTE] (RFC 3516 4.3), as
Dovecot does. Content with a NUL goes out as literal8 ("~{n}", RFC 3516 4.2);
anything else as an ordinary literal, which any IMAP parser reads.
"""

from __future__ import annotations

import base64
import binascii
import re

from mailserver.imap.commands import FetchAtt, no
from mailserver.imap.encode import literal
from mailserver.imap.message import ParsedMessage, partial
from mailserver.imap.mime import Part

#: The FETCH item names of BINARY (FetchAtt.name).
ITEMS = frozenset({"BINARY[]", "BINARY.SIZE"})

_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/=\s]")
_WHITESPACE = re.compile(rb"\s+")


def item(att: FetchAtt, label: bytes, message: ParsedMessage) -> bytes:
    """`BINARY[1] ~{n}...` or `BINARY.SIZE[1] n` for one message."""
    data = content(message, att.section.part if att.section is not None else ())
    if att.name == "BINARY.SIZE":
        return label + b" %d" % len(data)
    if att.partial is not None:
        data = partial(data, att.partial[0], att.partial[1])
    if b"\0" in data:
        return label + b" ~{%d}\r\n" % len(data) + data
    return label + b" " + literal(data)


def content(message: ParsedMessage, part: tuple[int, ...]) -> bytes:
    """The decoded content of a part (the whole message, undecoded, for no part; an
    empty string for a part that does not exist, as BODY[] answers)."""
    if not part:
        return message.raw
    found: Part | None = message._find(part)
    if found is None:
        return b""
    body = found.body
    if found.is_multipart or found.is_message:
        return body  # RFC 2045 6.4: only 7bit, 8bit or binary are allowed there
    return decode(body, found.header.get(b"content-transfer-encoding"))


def decode(body: bytes, encoding: bytes | None) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 6), or NO [UNKNOWN-CTE]."""
    kind = (encoding or b"").strip().lower()
    if kind in (b"", b"7bit", b"8bit", b"binary"):
        return body
    if kind == b"base64":
        if _BASE64_JUNK.search(body):
            raise no("Invalid base64 content", "UNKNOWN-CTE")
        cleaned = _WHITESPACE.sub(b"", body)
        # "=" only as padding at the end, in whole quanta.
        stripped = cleaned.rstrip(b"=")
        if b"=" in stripped or len(cleaned) - len(stripped) > 2 or len(stripped) % 4 == 1:
            raise no("Invalid base64 content", "UNKNOWN-CTE")
        try:
            return binascii.a2b_base64(stripped + b"=" * (-len(stripped) % 4))
        except binascii.Error:
            raise no("Invalid base64 content", "UNKNOWN-CTE") from None
    if kind == b"quoted-printable":
        return decode_qp(body)
    raise no(f"Unknown Content-Transfer-Encoding {kind[:40].decode('ascii', 'replace')}",
             "UNKNOWN-CTE")


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE = re.compile(rb"([^\n]*?)(\r?\n|\Z)")


def decode_qp(body: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7): trailing blanks of a line dropped (rule 3),
    "=" at a line's end (blanks after it allowed, they are padding) a soft break, "=XX"
    an octet; an "=" followed by anything else is kept as it is (rule 1's "robust"
    reading, as Dovecot and Python do). Line breaks come out as CRLF."""
    out: list[bytes] = []
    for m in _LINE.finditer(body):
        line, eol = m.group(1), m.group(2)
        if not line and not eol:
            break
        line = line.rstrip(b" \t\r")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out.append(_QP_ESCAPE.sub(lambda e: bytes([int(e.group(1), 16)]), line))
        if eol and not soft:
            out.append(b"\r\n")
    return b"".join(out)


# -- APPEND with literal8 (RFC 3516 4.4) ----------------------------------------------------

_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n")


def _unfaithful(data: bytes) -> bool:
    """Would a Maildir of LF line ends (decision 0001) not give these octets back:
    a NUL is kept, but a bare CR or LF is not."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf or b"\0" in data


def storable(message: bytes) -> bytes:
    """A literal8 message as we can keep it without loss (RFC 3516 4.4: "the server MAY
    modify the CTE ... MUST NOT result in a loss of data"): each leaf part whose
    content has a NUL, bare CR or bare LF is re-encoded as base64; BINARY[part] decodes
    it back to the very octets sent. NO [UNKNOWN-CTE] when that is not enough (such
    octets in a header, or inside a part we do not descend into)."""
    if not _unfaithful(message):
        return message
    root = ParsedMessage(message).tree
    edits: list[tuple[int, int, bytes]] = []
    pending = [root]
    while pending:
        part = pending.pop()
        if part.is_multipart:
            pending.extend(part.children)
            continue
        if part.is_message and part.message is not None:
            pending.append(part.message)
            continue
        body = part.body
        if not _unfaithful(body):
            continue
        header = part.header.raw
        head_start = part.start - len(header)
        kept = _CTE_FIELD.sub(b"", header)
        blank = len(kept) - (2 if kept.endswith(b"\r\n") else 1 if kept.endswith(b"\n") else 0)
        new_header = kept[:blank] + b"Content-Transfer-Encoding: base64\r\n" + kept[blank:]
        if not kept.endswith(b"\n"):
            new_header = kept + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
        edits.append((head_start, part.end, new_header + encoded.rstrip(b"\r\n")))
    # One join of the pieces between the edits (leaf parts never overlap): splicing
    # each edit into the whole message copied it once per part, and 10,000 parts
    # (mime.MAX_PARTS) of a 27 MiB APPEND cost minutes of CPU holding the GIL.
    pieces: list[bytes] = []
    cursor = 0
    for start, end, replacement in sorted(edits):
        pieces += (message[cursor:start], replacement)
        cursor = end
    pieces.append(message[cursor:])
    out = b"".join(pieces)
    if _unfaithful(out):
        raise no("Binary content outside a MIME part cannot be stored", "UNKNOWN-CTE")
    return out
