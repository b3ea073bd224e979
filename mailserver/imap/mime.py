"""A focused MIME parser over bytes: header blocks, Content-* fields, the part tree.

Why not the `email` package: FETCH ENVELOPE/BODYSTRUCTURE/header fields for every
message of a big folder is the hot path of IMAP, and email.message_from_bytes builds
objects, decodes and re-encodes for every part. Here a message is sliced, never
copied more than once, and only as far as the FETCH needs: the header block alone for
ENVELOPE and header fields, the whole tree only for BODYSTRUCTURE and BODY[n].

Input is the message as served (CRLF line ends); bare LF line ends are tolerated
everywhere (a file copied into the Maildir by another tool).

Hostile input is bounded: nesting stops at MAX_DEPTH (deeper parts are leaves), a
multipart keeps at most MAX_PARTS children, and no step recurses on the Python stack
more than MAX_DEPTH deep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Deepest multipart / message/rfc822 nesting we descend into; deeper entities are
#: treated as leaves (their bytes still served). Dovecot's limit is 100 as well.
MAX_DEPTH = 100
#: Most children of one multipart we list (Dovecot: 10,000 parts per message).
MAX_PARTS = 10_000

# A header field: name (no SP, CTL or ":"), optional WSP, ":", then the value up to the
# end of the line and every continuation line (one starting with SP or HTAB), RFC 5322
# 2.2 and 2.2.3. "." does not match LF, so "\r" stays in the value and is unfolded with
# the line break.
# Matched against b"\n" + header: the literal "\n" lets the regex engine skip ahead to
# line starts instead of trying every position (twice as fast as "^" with re.M).
_FIELD = re.compile(rb"\n([^\x00-\x20\x7f:]+)[ \t]*:(.*(?:\n[ \t].*)*)")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_HEADER_END = re.compile(rb"\n\r?\n")


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including the blank line, body). No blank line: all header."""
    if raw.startswith(b"\r\n"):
        return raw[:2], raw[2:]
    if raw.startswith(b"\n"):
        return raw[:1], raw[1:]
    m = _HEADER_END.search(raw)
    if m is None:
        return raw, b""
    return raw[:m.end()], raw[m.end():]


def unfold(value: bytes) -> bytes:
    """Remove the line breaks of folding (RFC 5322 2.2.3) and surrounding whitespace."""
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    return value.strip(b" \t\r\n")


class Header:
    """The fields of one header block, parsed once, looked up by lower-case name."""

    __slots__ = ("raw", "_fields")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._fields: dict[bytes, list[bytes]] | None = None

    def _index(self) -> dict[bytes, list[bytes]]:
        fields: dict[bytes, list[bytes]] = {}
        for name, value in _FIELD.findall(b"\n" + self.raw):
            key = name.lower()
            values = fields.get(key)
            if values is None:
                fields[key] = [value]
            else:
                values.append(value)
        self._fields = fields
        return fields

    def get(self, name: bytes) -> bytes | None:
        """The first field `name` (lower case), unfolded and stripped; None if absent."""
        fields = self._fields if self._fields is not None else self._index()
        values = fields.get(name)
        if not values:
            return None
        return unfold(values[0])

    def get_last(self, name: bytes) -> bytes | None:
        """The last field `name`, unfolded and stripped (ENVELOPE reads the last)."""
        fields = self._fields if self._fields is not None else self._index()
        values = fields.get(name)
        if not values:
            return None
        return unfold(values[-1])

    def get_all(self, name: bytes) -> list[bytes]:
        fields = self._fields if self._fields is not None else self._index()
        return [unfold(v) for v in fields.get(name, ())]

    def names(self) -> list[bytes]:
        fields = self._fields if self._fields is not None else self._index()
        return list(fields)


# --------------------------------------------------------------------------- Content-Type

# RFC 2045 5.1: token is any CHAR except SP, CTLs and tspecials.
_TOKEN = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"?', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)


def _skip_cfws(s: bytes, i: int) -> int:
    """Skip whitespace and (nested) comments starting at i."""
    n = len(s)
    while i < n:
        c = s[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:  # "("
            depth = 0
            while i < n:
                c = s[i]
                if c == 0x5C:  # backslash: quoted-pair
                    i += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _value_at(s: bytes, i: int) -> tuple[bytes | None, int]:
    """A token or quoted-string at i (after CFWS): (value, next index) or (None, i)."""
    i = _skip_cfws(s, i)
    if i < len(s) and s[i] == 0x22:
        m = _QUOTED.match(s, i)
        assert m is not None
        return _QUOTED_PAIR.sub(rb"\1", m.group(1)), m.end()
    m = _TOKEN.match(s, i)
    if m is None:
        return None, i
    return m.group(0), m.end()


def parse_params(s: bytes, i: int) -> list[tuple[bytes, bytes]]:
    """`; name=value` pairs from index i on (RFC 2045 5.1), in order, names as written.

    Malformed parameters are skipped up to the next ";". RFC 2231 continuations
    (name*0, name*1*) are joined into one `name*` / `name` parameter, as Dovecot does,
    so a client sees the whole filename.
    """
    params: list[tuple[bytes, bytes]] = []
    n = len(s)
    while True:
        semi = s.find(b";", i)
        if semi < 0:
            break
        i = semi + 1
        name, j = _value_at(s, i)
        if name is None:
            continue
        j = _skip_cfws(s, j)
        if j >= n or s[j] != 0x3D:  # "="
            i = j
            continue
        value, k = _value_at(s, j + 1)
        if value is None:
            # A value with forbidden characters (a bare "/" or "@"): take it to ";".
            end = s.find(b";", j + 1)
            end = n if end < 0 else end
            value = s[j + 1:end].strip(b" \t\r\n")
            k = end
        params.append((name, value))
        i = k
    return _join_continuations(params) if any(b"*" in k for k, _ in params) else params


_CONTINUATION = re.compile(rb"\A(.+?)\*(\d+)(\*?)\Z")


def _join_continuations(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 2231 3: name*0=..; name*1=.. -> name=...; (name*0*= -> name*=)."""
    out: list[tuple[bytes, bytes]] = []
    pieces: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    order: list[bytes] = []
    for key, value in params:
        m = _CONTINUATION.match(key)
        if m is None:
            out.append((key, value))
            continue
        base = m.group(1)
        if base.lower() not in pieces:
            pieces[base.lower()] = []
            order.append(base)
        pieces[base.lower()].append((int(m.group(2)), bool(m.group(3)), value))
    for base in order:
        parts = sorted(pieces[base.lower()], key=lambda p: p[0])
        encoded = parts[0][1]
        out.append((base + (b"*" if encoded else b""), b"".join(v for _, _, v in parts)))
    return out


@dataclass(frozen=True, slots=True)
class ContentType:
    maintype: bytes  # as written ("text"), or the default
    subtype: bytes
    params: tuple[tuple[bytes, bytes], ...]

    def param(self, name: bytes) -> bytes | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None


TEXT_PLAIN = ContentType(b"text", b"plain", ((b"charset", b"us-ascii"),))
MESSAGE_RFC822 = ContentType(b"message", b"rfc822", ())
OPAQUE = ContentType(b"application", b"octet-stream", ())


# `type/subtype; name=value; name="quoted value"` without comments: one regex.
_TOKEN_CLASS = rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+'
_SIMPLE_CONTENT_TYPE = re.compile(
    rb'(' + _TOKEN_CLASS + rb')/(' + _TOKEN_CLASS + rb')[ \t]*'
    rb'((?:;[ \t]*' + _TOKEN_CLASS + rb'=(?:' + _TOKEN_CLASS + rb'|"[^"\\]*")[ \t]*)*);?[ \t]*')
_SIMPLE_PARAM = re.compile(rb'(' + _TOKEN_CLASS + rb')=(?:(' + _TOKEN_CLASS + rb')|"([^"\\]*)")')


def parse_content_type(value: bytes | None, default: ContentType) -> ContentType:
    """RFC 2045 5.1 Content-Type; `default` when missing or without a type/subtype."""
    if value is None:
        return default
    m = _SIMPLE_CONTENT_TYPE.fullmatch(value)
    if m is not None and b"*" not in m.group(3):
        params = tuple((name, token or quoted)
                       for name, token, quoted in _SIMPLE_PARAM.findall(m.group(3)))
        return ContentType(m.group(1), m.group(2), params)
    maintype, i = _value_at(value, 0)
    i = _skip_cfws(value, i)
    if maintype is None or i >= len(value) or value[i] != 0x2F:  # "/"
        return default
    subtype, i = _value_at(value, i + 1)
    if subtype is None:
        return default
    return ContentType(maintype, subtype, tuple(parse_params(value, i)))


def parse_disposition(value: bytes | None) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """RFC 2183 Content-Disposition: (type as written, params) or None."""
    if value is None:
        return None
    kind, i = _value_at(value, 0)
    if kind is None:
        return None
    return kind, parse_params(value, i)


# --------------------------------------------------------------------------- the part tree


@dataclass(slots=True, eq=False)
class Part:
    """One MIME entity: its header block and its body, as slices of the message."""

    header: Header
    body: bytes
    content_type: ContentType
    depth: int
    #: The parts of a multipart (empty for other types).
    children: list[Part] = field(default_factory=list)
    #: The encapsulated message of a message/rfc822 (or global) part.
    message: Part | None = None

    @property
    def is_multipart(self) -> bool:
        return self.content_type.maintype.lower() == b"multipart" and self.depth < MAX_DEPTH

    @property
    def is_message(self) -> bool:
        ct = self.content_type
        return (ct.maintype.lower() == b"message" and ct.subtype.lower() == b"rfc822"
                and self.depth < MAX_DEPTH)


def _boundary_positions(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    """Where each boundary line starts and ends, and whether it is the close delimiter.

    RFC 2046 5.1.1: a delimiter is CRLF "--" boundary at the start of a line, then
    only linear white space up to the line end; the close delimiter adds "--". The CRLF
    before it belongs to the delimiter, not to the preceding part. Requiring the line to
    end there keeps "--b1" from matching a nested "--b10".
    """
    marker = b"--" + boundary
    found: list[tuple[int, int, bool]] = []
    n = len(body)
    i = 0 if body.startswith(marker) else _next_marker(body, marker, 0)
    while i >= 0 and len(found) <= MAX_PARTS:
        after = i + len(marker)
        eol = body.find(b"\n", after)
        line_end = n if eol < 0 else eol + 1
        close = body.startswith(b"--", after)
        if close or not body[after:line_end].strip(b" \t\r\n"):
            found.append((i, line_end, close))
            if close:
                break
        i = _next_marker(body, marker, line_end - 1)
    return found


def _next_marker(body: bytes, marker: bytes, start: int) -> int:
    """Start of the next line beginning with `marker` at or after `start`, or -1."""
    i = body.find(b"\n" + marker, start)
    return i + 1 if i >= 0 else -1


def _strip_eol(body: bytes, end: int) -> int:
    """The part ends before the line break that precedes its delimiter line."""
    if end > 0 and body[end - 1] == 0x0A:
        end -= 1
        if end > 0 and body[end - 1] == 0x0D:
            end -= 1
    return end


def build_part(raw: bytes, default: ContentType, depth: int) -> Part:
    """Parse one entity (header + body) and, iteratively, everything nested in it."""
    return expand(_make_part(raw, default, depth))


def entity(header: Header, body: bytes, default: ContentType, depth: int) -> Part:
    """A Part from an already split header and body (children not parsed yet)."""
    ctype = parse_content_type(header.get(b"content-type"), default)
    if depth >= MAX_DEPTH and ctype.maintype.lower() in (b"multipart", b"message"):
        # Too deep to descend: shown as an opaque leaf. BODYSTRUCTURE cannot show a
        # multipart or message/rfc822 without its contents, so it is octet-stream.
        ctype = OPAQUE
    return Part(header, body, ctype, depth)


def expand(root: Part) -> Part:
    """Parse everything nested in `root`, without recursion on the Python stack."""
    pending = [root]
    while pending:
        part = pending.pop()
        if part.is_multipart:
            part.children = _split_multipart(part)
            pending.extend(part.children)
        elif part.is_message:
            part.message = _make_part(part.body, TEXT_PLAIN, part.depth + 1)
            pending.append(part.message)
    return root


def _make_part(raw: bytes, default: ContentType, depth: int) -> Part:
    head, body = split_header(raw)
    return entity(Header(head), body, default, depth)


def _ends_with_close(child: Part, data: bytes) -> bool:
    boundary = child.content_type.param(b"boundary")
    if not boundary:
        return False
    return data.rstrip(b" \t").endswith(b"--" + boundary + b"--")


def _split_multipart(part: Part) -> list[Part]:
    boundary = part.content_type.param(b"boundary")
    child_default = (MESSAGE_RFC822 if part.content_type.subtype.lower() == b"digest"
                     else TEXT_PLAIN)
    body = part.body
    children: list[Part] = []
    if boundary:
        positions = _boundary_positions(body, boundary)
        followers: list[tuple[int, int, bool] | None] = [*positions[1:], None]
        for (_, start, close), following in zip(positions, followers, strict=False):
            if close:
                break
            if following is None:
                end = len(body)
                child = _make_part(body[start:], child_default, part.depth + 1)
            else:
                end = _strip_eol(body, following[0])
                child = _make_part(body[start:max(start, end)], child_default,
                                   part.depth + 1)
                if child.is_multipart and _ends_with_close(child, body[start:end]):
                    # The line break of a nested multipart's close delimiter stays
                    # with it when no epilogue follows (Dovecot's BODY[n] and size).
                    child.body = body[start + len(child.header.raw):following[0]]
            children.append(child)
    if not children:
        # RFC 3501's body-type-mpart needs at least one body: a multipart without
        # boundary or parts shows one empty text/plain part, as Dovecot does.
        children.append(Part(Header(b""), b"", TEXT_PLAIN, part.depth + 1))
    return children
