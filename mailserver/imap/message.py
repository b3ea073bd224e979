"""One message as IMAP FETCH and SEARCH see it (RFC 3501 6.4.4, 6.4.5, 7.4.2).

`ParsedMessage(raw)` wraps the bytes the store serves (CRLF); nothing is parsed until
asked, and then only as far as needed: ENVELOPE and header searches read the header
block alone (`ParsedMessage.from_header(store.header(uid))` never needs the body),
BODYSTRUCTURE and BODY[part] build the MIME tree once and keep it.

Module functions work without a ParsedMessage where a FETCH only needs bytes:
`header_fields` (BODY[HEADER.FIELDS (...)] from the store's cached header block) and
`partial` (the <origin.length> slice).
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.errors
import email.header
import email.utils
import functools
import quopri
import re
from collections.abc import Iterable, Iterator

from mailserver.imap import bodystructure as _bodystructure
from mailserver.imap import envelope as _envelope
from mailserver.imap.mime import TEXT_PLAIN, Header, Part, body_start, entity, expand, unfold

__all__ = ["ParsedMessage", "header_fields", "partial", "decode_header_value"]

SECTION_SPECS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


# --------------------------------------------------------------------------- header fields


@functools.lru_cache(maxsize=256)
def _fields_pattern(fields: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One regex that finds the wanted fields, folded continuation lines included
    (cached: a FETCH asks the same list for every message). None for no fields."""
    wanted = sorted({f.lower() for f in fields})
    if not wanted:
        return None
    names = b"|".join(re.escape(f.encode("ascii", "replace")) for f in wanted)
    # Run over b"\n" + header: the literal "\n" lets the engine skip to line starts.
    # A match is the field's lines without the final line break.
    return re.compile(rb"\n(?:" + names + rb")[ \t]*:.*(?:\n[ \t].*)*", re.I)


def header_fields(header: bytes, fields: Iterable[str], negate: bool) -> bytes:
    """BODY[HEADER.FIELDS (...)] / [HEADER.FIELDS.NOT (...)] of a header block.

    RFC 3501 6.4.5: the lines of the matching fields (names compared case-insensitively),
    in the message's order, folded lines kept as they are, then the blank line that ends
    a header (sent even when nothing matched). HEADER.FIELDS.NOT is the header with
    those fields taken out: other lines, even ones that are no field, stay, and the
    blank line is there if the header had one (Dovecot's answer in both corners).
    """
    pattern = _fields_pattern(fields if isinstance(fields, tuple) else tuple(fields))
    if not negate:
        if pattern is None:
            return b"\r\n"
        # Each match starts with the "\n" before the field and ends before its own.
        matches = pattern.findall(b"\n" + header)
        if not matches:
            return b"\r\n"
        # Fields before the last one are followed by their "\n" in the next match.
        # The last ends in "\r" when its CRLF follows; else (LF-only header, or no line
        # break at the very end) it gets a CRLF.
        joined = b"".join(matches)
        return joined[1:] + (b"\n\r\n" if joined.endswith(b"\r") else b"\r\n\r\n")
    if pattern is None:
        return header
    text = b"\n" + header
    pieces: list[bytes] = []
    kept = 1
    for m in pattern.finditer(text):
        pieces.append(text[kept:m.start() + 1])
        # Skip the field and the line break that ends it.
        kept = m.end() + 1 if text.startswith(b"\n", m.end()) else m.end()
    pieces.append(text[kept:])
    return b"".join(pieces)


@functools.lru_cache(maxsize=64)
def _field_pattern(name: str) -> re.Pattern[bytes]:
    return re.compile(rb"\n" + re.escape(name.encode("ascii", "replace")) +
                      rb"[ \t]*:(.*(?:\n[ \t].*)*)", re.I)


def _field_values(name: str, header: bytes) -> list[bytes]:
    """The raw (folded) values of every `name` field of a header block."""
    return _field_pattern(name).findall(b"\n" + header)


#: Fields whose value is an address list (RFC 5322 3.6.2, 3.6.3).
ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc",
                            "resent-from", "resent-sender", "resent-to", "resent-cc",
                            "resent-bcc"})


def _normal_addresses(value: bytes) -> bytes:
    """An address list in normal form: comments dropped, `Name <local@domain>`."""
    out: list[bytes] = []
    for name, _adl, mailbox, host in _envelope.parse_addresses(value):
        if host is None:
            out.append(b";" if mailbox is None else mailbox + b":")
        elif name:
            out.append(name + b" <" + (mailbox or b"") + b"@" + host + b">")
        else:
            out.append((mailbox or b"") + b"@" + host)
    return b", ".join(out)


def partial(data: bytes, origin: int, length: int | None) -> bytes:
    """The `<origin.length>` slice of a section (RFC 3501 6.4.5): empty past the end."""
    if origin >= len(data):
        return b""
    if length is None:
        return data[origin:]
    return data[origin:origin + length]


# --------------------------------------------------------------------------- decoding


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Text in `charset` (UTF-8 when unknown or absent), never failing."""
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


#: Longest header text whose RFC 2047 words are decoded for SEARCH; the email
#: package needs seconds for a megabyte of encoded words. Longer text is matched raw.
MAX_DECODED_HEADER = 64 * 1024


def decode_header_value(raw: bytes) -> str:
    """A header value with RFC 2047 encoded words decoded; raw 8-bit read as UTF-8."""
    text = _decode_bytes(raw, None)
    if "=?" not in text or len(text) > MAX_DECODED_HEADER:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        return text


def decode_transfer(body: bytes, encoding: bytes | None) -> bytes:
    """Undo Content-Transfer-Encoding base64 / quoted-printable (RFC 2045 6); tolerant."""
    kind = (encoding or b"").strip().lower()
    if kind == b"base64":
        # Padding and line breaks dropped, then padded again: a missing "=" or a
        # stray character costs nothing but itself (one leftover sextet is no octet).
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
        if len(cleaned) % 4 == 1:
            cleaned = cleaned[:-1]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return b""
    if kind == b"quoted-printable":
        return quopri.decodestring(body)
    return body


# --------------------------------------------------------------------------- the message


class ParsedMessage:
    """A message for FETCH and SEARCH; parses lazily and caches what it parsed."""

    __slots__ = ("raw", "_header_raw", "_body", "_header", "_tree", "_cache", "_folded_body",
                 "_folded_header")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._header_raw: bytes | None = None
        self._body: bytes | None = None
        self._header: Header | None = None
        self._tree: Part | None = None
        self._cache: dict[str, bytes] = {}
        #: SEARCH BODY/TEXT: the decoded, casefolded texts, made on the first such key
        #: and kept for the others (a SEARCH with ten TEXT keys decodes once, not ten
        #: times).
        self._folded_body: tuple[str, ...] | None = None
        self._folded_header: str | None = None

    @classmethod
    def from_header(cls, header: bytes) -> ParsedMessage:
        """A message known by its header block only (the store's cache): for ENVELOPE,
        HEADER.FIELDS, header SEARCH. Its body reads as empty."""
        message = cls(header)
        message._header_raw = header
        message._body = b""
        return message

    # -- slices

    def _split(self) -> None:
        # The header alone: the body is sliced out only when asked for (BODY[TEXT]).
        self._header_raw = self.raw[:body_start(self.raw, 0, len(self.raw))]

    @property
    def header_block(self) -> bytes:
        """The header including the blank line that ends it (BODY[HEADER])."""
        if self._header_raw is None:
            self._split()
        assert self._header_raw is not None
        return self._header_raw

    @property
    def body(self) -> bytes:
        """Everything after the header block (BODY[TEXT])."""
        if self._body is None:
            self._body = self.raw[len(self.header_block):]
        return self._body

    @property
    def header(self) -> Header:
        if self._header is None:
            self._header = Header(self.header_block)
        return self._header

    @property
    def tree(self) -> Part:
        """The MIME part tree (built on first use)."""
        if self._tree is None:
            # Offsets into self.raw: the tree never copies the body (mime.Part).
            raw = self.raw
            self._tree = expand(entity(self.header, raw, len(self.header_block), len(raw),
                                       TEXT_PLAIN, 0))
        return self._tree

    # -- FETCH items

    def envelope(self) -> bytes:
        """ENVELOPE (RFC 3501 7.4.2)."""
        cached = self._cache.get("envelope")
        if cached is None:
            cached = self._cache["envelope"] = _envelope.envelope(self.header)
        return cached

    def body_structure(self, extensible: bool) -> bytes:
        """BODYSTRUCTURE (extensible) or BODY (RFC 3501 7.4.2)."""
        key = "bodystructure" if extensible else "body"
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = _bodystructure.body_structure(self.tree, extensible)
        return cached

    def section(self, part: tuple[int, ...], spec: str,
                fields: tuple[str, ...] = ()) -> bytes:
        """The content of BODY[part.spec] (RFC 3501 6.4.5).

        `spec` is one of SECTION_SPECS (upper case). HEADER, HEADER.FIELDS[.NOT] and TEXT
        after a part number address the message inside a message/rfc822 part; on any
        other part, and for a part that does not exist, the answer is b"" (an empty
        string, as Dovecot sends: RFC 3501 leaves it open and clients cope with empty
        better than with NIL).
        """
        if not part:
            if spec == "":
                return self.raw
            return _message_spec(self.header_block, self.body, spec, fields)
        found = self._find(part)
        if found is None:
            return b""
        if spec == "":
            return found.body
        if spec == "MIME":
            return found.header.raw
        if found.is_message and found.message is not None:
            inner = found.message
            return _message_spec(inner.header.raw, inner.body, spec, fields)
        return b""

    def _find(self, path: tuple[int, ...]) -> Part | None:
        """The entity a part number names (RFC 3501 6.4.5 numbering), or None.

        A multipart numbers its children from 1. Any other entity is its own part 1
        (a non-multipart message's body is part 1 of it); a part number may go on
        past it only through a message/rfc822, whose encapsulated message continues
        the numbering. This is Dovecot's reading (imap-msgpart.c), so "2.1" of a leaf
        "2" is "2" itself, and "2.1.1" does not exist.
        """
        current: Part | None = self.tree
        last = len(path) - 1
        for index, number in enumerate(path):
            assert current is not None
            more = index < last
            if current.is_multipart:
                children = current.children
                current = children[number - 1] if 1 <= number <= len(children) else None
            elif number != 1 or (more and not current.is_message):
                return None
            if current is None:
                return None
            if more and current.is_message and current.message is not None:
                current = current.message
        return current

    # -- SEARCH (RFC 3501 6.4.4): case-insensitive substring matches on decoded text

    def header_matches(self, name: str, needle: str) -> bool:
        """SEARCH HEADER name needle, and FROM/TO/CC/BCC/SUBJECT (RFC 3501 6.4.4): a
        case-insensitive substring of the value with RFC 2047 words decoded; an empty
        needle matches any message that has the field.

        For address fields the needle may also match the addresses as written in
        normal form (`Name <local@domain>`, groups as `group: ...;`), as in Dovecot: so
        "user@example.org" finds `<user (comment)@ (comment) example.org>` too.
        """
        values = _field_values(name, self.header_block)
        if not values:
            return False
        if not needle:
            return True
        if needle.isascii():
            # ASCII needle, ASCII value without encoded words: bytes compare suffices.
            ascii_needle = needle.lower().encode("ascii")
            if any(ascii_needle in unfold(v).lower() for v in values
                   if v.isascii() and b"=?" not in v):
                return True
        folded = needle.casefold()
        if any(folded in decode_header_value(unfold(v)).casefold() for v in values
               if not (v.isascii() and b"=?" not in v)):
            return True
        if name.lower() in ADDRESS_FIELDS:
            return any(folded in decode_header_value(_normal_addresses(unfold(v))).casefold()
                       for v in values)
        return False

    def address_matches(self, name: str, needle: str) -> bool:
        """SEARCH FROM/TO/CC/BCC: header_matches, which knows address fields."""
        return self.header_matches(name, needle)

    def body_contains(self, needle: str) -> bool:
        """SEARCH BODY: the decoded text of the body's text parts contains `needle`."""
        folded = needle.casefold()
        if not folded:
            return True
        if self._folded_body is None:
            self._folded_body = tuple(text.casefold() for text in self._body_texts())
        return any(folded in text for text in self._folded_body)

    def text_contains(self, needle: str) -> bool:
        """SEARCH TEXT: header or body."""
        folded = needle.casefold()
        if not folded:
            return True
        if self._folded_header is None:
            self._folded_header = decode_header_value(self.header_block).casefold()
        if folded in self._folded_header:
            return True
        return self.body_contains(needle)

    def sent_date(self) -> datetime.date | None:
        """The date of the Date header, its time and zone disregarded (RFC 3501 6.4.4)."""
        value = self.header.get(b"date")
        if value is None:
            return None
        try:
            parsed = email.utils.parsedate_tz(value.decode("latin-1"))
        except (ValueError, IndexError, TypeError):
            return None
        if parsed is None:
            return None
        try:
            return datetime.date(parsed[0], parsed[1], parsed[2])
        except ValueError:
            return None

    def _body_texts(self) -> Iterator[str]:
        """Decoded text of every text/* leaf (and headers of attached messages)."""
        if self._body == b"" and self._header_raw is self.raw:
            return
        pending = [self.tree]
        while pending:
            part = pending.pop()
            if part.is_multipart:
                pending.extend(reversed(part.children))
                continue
            if part.is_message and part.message is not None:
                yield decode_header_value(part.message.header.raw)
                pending.append(part.message)
                continue
            if part.content_type.maintype.lower() != b"text":
                continue
            data = decode_transfer(part.body, part.header.get(b"content-transfer-encoding"))
            charset = part.content_type.param(b"charset")
            yield _decode_bytes(data, charset.decode("ascii", "replace") if charset else None)


def _message_spec(header: bytes, body: bytes, spec: str, fields: tuple[str, ...]) -> bytes:
    if spec == "HEADER":
        return header
    if spec == "TEXT":
        return body
    if spec == "HEADER.FIELDS":
        return header_fields(header, fields, negate=False)
    if spec == "HEADER.FIELDS.NOT":
        return header_fields(header, fields, negate=True)
    return b""
