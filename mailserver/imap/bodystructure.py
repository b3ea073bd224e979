"""BODY and BODYSTRUCTURE (RFC 3501 7.4.2) from the part tree of mime.py.

Values are sent as the message writes them (type, subtype, parameter names and values,
encoding), as Dovecot does; defaults (text/plain; charset=us-ascii, 7bit) in lower
case like Dovecot's. Sizes are octets of the body as served (CRLF), lines count the
line breaks in it, plus one for a last line without a break.
"""

from __future__ import annotations

from mailserver.imap.encode import nstring, quoted_or_literal
from mailserver.imap.envelope import envelope
from mailserver.imap.mime import ContentType, Part, parse_disposition

_NIL = b"NIL"


def _params(params: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> bytes:
    """body-fld-param: ("name" "value" ...) or NIL."""
    if not params:
        return _NIL
    return b"(" + b" ".join(
        quoted_or_literal(key) + b" " + quoted_or_literal(value) for key, value in params
    ) + b")"


def _text_params(ctype: ContentType) -> tuple[tuple[bytes, bytes], ...]:
    """A text part without charset is us-ascii (RFC 2045 5.2), and says so, as Dovecot."""
    if ctype.maintype.lower() == b"text" and ctype.param(b"charset") is None:
        return ctype.params + ((b"charset", b"us-ascii"),)
    return ctype.params


def _disposition(part: Part) -> bytes:
    parsed = parse_disposition(part.header.get(b"content-disposition"))
    if parsed is None:
        return _NIL
    kind, params = parsed
    return b"(" + quoted_or_literal(kind) + b" " + _params(params) + b")"


def _language(part: Part) -> bytes:
    """body-fld-lang: the tags as a list (also one, as Dovecot), NIL if none."""
    value = part.header.get(b"content-language")
    if value is None:
        return _NIL
    tags = [t.strip() for t in value.replace(b" ", b",").split(b",") if t.strip()]
    if not tags:
        return _NIL
    return b"(" + b" ".join(quoted_or_literal(t) for t in tags) + b")"


def _extension_tail(part: Part) -> bytes:
    """ SP body-fld-dsp SP body-fld-lang SP body-fld-loc (shared by both kinds)."""
    return b" %s %s %s" % (_disposition(part), _language(part),
                          nstring(part.header.get(b"content-location")))


def body_structure(part: Part, extensible: bool) -> bytes:
    """`body` of RFC 3501 9 for `part` (BODYSTRUCTURE when extensible, else BODY)."""
    ctype = part.content_type
    if part.is_multipart:
        inner = b"".join(body_structure(child, extensible) for child in part.children)
        out = inner + b" " + quoted_or_literal(ctype.subtype)
        if extensible:
            out += b" " + _params(ctype.params) + _extension_tail(part)
        return b"(" + out + b")"

    header = part.header
    encoding = header.get(b"content-transfer-encoding") or b"7bit"
    fields = b"%s %s %s %s %s %s %d" % (
        quoted_or_literal(ctype.maintype),
        quoted_or_literal(ctype.subtype),
        _params(_text_params(ctype)),
        nstring(header.get(b"content-id")),
        nstring(header.get(b"content-description")),
        quoted_or_literal(encoding),
        part.size,
    )
    if part.is_message and part.message is not None:
        inner_message = part.message
        fields += b" %s %s %d" % (
            envelope(inner_message.header),
            body_structure(inner_message, extensible),
            part.line_breaks(),
        )
    elif ctype.maintype.lower() == b"text":
        fields += b" %d" % part.line_breaks()
    if extensible:
        fields += b" " + nstring(header.get(b"content-md5")) + _extension_tail(part)
    return b"(" + fields + b")"
