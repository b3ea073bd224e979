"""A stored message as JSON: its envelope fields, its header, text and html parts, and its
attachments (pure functions over bytes; no I/O).

Mail is hostile input: every function here answers something for any bytes (broken
encoded words, unknown charsets, bad base64, MIME nested a thousand deep), never an
exception. Header values are decoded as RFC 6532 UTF-8 (bytes that are not UTF-8 are
replaced, never guessed) and then RFC 2047 encoded words; bodies by their
Content-Transfer-Encoding (RFC 2045 6) and charset (RFC 2046 4.1.2).

Why not email.policy.default's header objects: they raise on some malformed fields and
cost several times as much per header as the small parser below; the MIME tree itself
comes from the stdlib's compat32 parser, which never raises on structure.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from email.errors import MessageError
from email.message import Message
from typing import Any

#: multipart nesting followed before a part is listed as it is (a MIME bomb stops here).
MAX_DEPTH = 32
#: Leaf parts listed per message; the rest are left out (counted in `parts_omitted`).
MAX_PARTS = 500
#: Addresses listed per field (From/To/Cc); a header bomb of 100k addresses stops here.
MAX_ADDRESSES = 200
#: Characters of one header value given back.
MAX_VALUE = 16 * 1024

#: The fields the message list gives per message (RFC 3501 7.4.2 ENVELOPE's, named).
ENVELOPE_FIELDS = ("date", "subject", "from", "to", "cc", "message_id", "in_reply_to")

_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_LINE = re.compile(rb"\r?\n")


def header_fields(block: bytes) -> list[tuple[str, str]]:
    """(name, value) of every field of a header block, in order, unfolded (RFC 5322
    2.2.3) and decoded (RFC 6532 UTF-8, then RFC 2047). Lines without a colon (a broken
    header) are skipped, as IMAP's header parsing skips them."""
    fields: list[tuple[str, str]] = []
    for line in _LINE.split(_FOLD.sub(b"", block)):
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or not name.isascii():
            continue
        text = value.strip().decode("utf-8", "replace")[:MAX_VALUE]
        fields.append((name.decode("ascii"), decode_words(text)))
    return fields


def _raw_fields(block: bytes) -> dict[str, str]:
    """Lower-case name -> the last such field's value, unfolded, RFC 2047 not decoded
    (addresses must be split before their display names are decoded)."""
    found: dict[str, str] = {}
    for line in _LINE.split(_FOLD.sub(b"", block)):
        name, colon, value = line.partition(b":")
        if colon and name.isascii() and name == name.strip():
            found[name.decode("ascii").lower()] = value.strip().decode(
                "utf-8", "replace")[:MAX_VALUE]
    return found


def decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded; the text as it is where they are broken."""
    if "=?" not in text:
        return text
    try:
        decoded = str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError, AssertionError, MessageError):
        return text
    return decoded if decoded.strip() else text  # a word too broken to say anything


def addresses(value: str | None) -> list[dict[str, str]]:
    """An address-list field as [{"name", "address"}] (groups flattened), tolerantly."""
    if not value:
        return []
    out = []
    for name, address in email.utils.getaddresses([value])[:MAX_ADDRESSES]:
        if not name and not address:
            continue
        out.append({"name": decode_words(name), "address": address})
    return out


def rfc3339(seconds: float) -> str:
    """An instant as RFC 3339 UTC with seconds ("2026-12-07T11:22:04Z")."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def header_date(value: str | None) -> str | None:
    """A Date field (RFC 5322 3.3) as RFC 3339 with its zone, None when unreadable."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the zone is unknown (RFC 5322 3.3); call it UTC
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def _msg_id(value: str | None) -> str | None:
    return value.strip() or None if value else None


def envelope(block: bytes) -> dict[str, Any]:
    """The envelope fields of a message's header block (the last of each field wins,
    as in IMAP's ENVELOPE)."""
    raw = _raw_fields(block)
    return {
        "date": header_date(raw.get("date")),
        "subject": decode_words(raw["subject"]) if "subject" in raw else None,
        "from": addresses(raw.get("from")),
        "to": addresses(raw.get("to")),
        "cc": addresses(raw.get("cc")),
        "message_id": _msg_id(raw.get("message-id")),
        "in_reply_to": _msg_id(raw.get("in-reply-to")),
    }


# --------------------------------------------------------------------------- MIME parts


@dataclass(frozen=True)
class Part:
    """A leaf of the MIME tree: body text, or an attachment (numbered from 1)."""

    message: Message
    #: 0 for a text or html body part, else the attachment's number.
    number: int
    kind: str  # "text", "html" or "attachment"


def parse(data: bytes) -> Message:
    """The MIME tree of a whole message (CRLF or LF). The stdlib parser recurses once
    per multipart level: a message nested past the interpreter's recursion limit is
    taken as one part (its header, and its body unparsed)."""
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    try:
        return parser.parsebytes(data)
    except RecursionError:
        return parser.parsebytes(data, headersonly=True)


def _leaves(part: Message, depth: int) -> Iterator[Message]:
    """Leaf parts in order; multipart/* is followed, message/rfc822 is one leaf (an
    attached message is an attachment, not more body text)."""
    if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
        payload = part.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, Message):
                    yield from _leaves(child, depth + 1)
            return
    yield part


def _clean(text: str) -> str:
    """A string the stdlib parser made from raw 8-bit octets (surrogate escapes) as
    UTF-8, junk replaced; unfolded, without control characters (JSON-safe text)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c for c in _LINE.sub(b"", text.encode()).decode() if c >= " ").strip()


def field(part: Message, name: str) -> str | None:
    """The first field `name` (lower case) of a part as clean text (RFC 6532 UTF-8);
    not part.get(), which gives a Header object for a field with 8-bit octets."""
    for key, value in part.raw_items():  # as parsed: 8-bit octets surrogate-escaped
        if key.lower() == name:
            return _clean(str(value))
    return None


def _disposition(part: Message) -> str:
    return (field(part, "content-disposition") or "").split(";")[0].strip().lower()


def content_type(part: Message) -> str:
    try:
        return _clean(part.get_content_type())
    except (ValueError, LookupError, UnicodeError, AttributeError, MessageError):
        return "application/octet-stream"


def parts(message: Message) -> tuple[list[Part], int]:
    """The body and attachment parts of a message, and how many were left out."""
    found: list[Part] = []
    number = 0
    omitted = 0
    for leaf in _leaves(message, 0):
        if len(found) >= MAX_PARTS:
            omitted += 1
            continue
        ctype = content_type(leaf)
        named = filename(leaf) is not None
        if ctype in ("text/plain", "text/html") and _disposition(leaf) != "attachment" \
                and not named:
            found.append(Part(leaf, 0, "text" if ctype == "text/plain" else "html"))
        else:
            number += 1
            found.append(Part(leaf, number, "attachment"))
    return found, omitted


def content(part: Message) -> bytes:
    """A part's octets with its Content-Transfer-Encoding undone (RFC 2045 6)."""
    if part.get_content_maintype() in ("multipart", "message"):
        # message/rfc822 and an over-deep multipart: the part's own body, as stored.
        try:
            body = part.as_bytes(policy=email.policy.compat32)
        except Exception:  # noqa: BLE001 - the stdlib generator on a broken tree raises
            # RecursionError (nesting), UnicodeError (a header it decoded itself), ...:
            # whatever it is, the part is not served, and the rest of the message is.
            return b""
        head, sep, rest = body.partition(b"\n\n")
        return rest if sep else b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def text_of(part: Message) -> str:
    """A text part decoded to Unicode by its charset (RFC 2046 4.1.2; US-ASCII when
    absent); an unknown charset or bad bytes are read as UTF-8 with replacements."""
    raw = content(part)
    charset = str(part.get_content_charset() or "us-ascii")
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def filename(part: Message) -> str | None:
    """The part's file name (RFC 2183 filename, RFC 2231 or RFC 2047 encoded, else the
    Content-Type name), with path components and control characters removed."""
    try:
        name = part.get_filename() or part.get_param("name")
    except (ValueError, LookupError, UnicodeError, AttributeError, MessageError):
        return None
    if isinstance(name, tuple):  # an RFC 2231 triple get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return None
    text = decode_words(_clean(str(name)))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c >= " " and c != "\x7f")[:255]
    return text or None


def parsed(data: bytes, download: str) -> dict[str, Any]:
    """The JSON of a whole message: header fields, text and html bodies, attachment
    metadata with `download` + "/N" to fetch attachment N decoded."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    message = parse(data)
    found, omitted = parts(message)
    attachments = []
    for part in found:
        if part.kind != "attachment":
            continue
        attachments.append({
            "number": part.number,
            "filename": filename(part.message),
            "content_type": content_type(part.message),
            "size": len(content(part.message)),
            "disposition": _disposition(part.message) or None,
            "content_id": field(part.message, "content-id"),
            "download": f"{download}/{part.number}",
        })
    return {
        "headers": [{"name": n, "value": v} for n, v in header_fields(head + sep)],
        "text": [text_of(p.message) for p in found if p.kind == "text"],
        "html": [text_of(p.message) for p in found if p.kind == "html"],
        "attachments": attachments,
        "parts_omitted": omitted,
    }


def attachment(data: bytes, number: int) -> tuple[bytes, str, str | None] | None:
    """(decoded octets, content type, file name) of attachment `number`, or None."""
    found, _ = parts(parse(data))
    for part in found:
        if part.kind == "attachment" and part.number == number:
            return content(part.message), content_type(part.message), \
                filename(part.message)
    return None
