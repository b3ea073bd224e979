"""A focused MIME parser over bytes: header blocks, Content-* fields, the part tree.

Why not the `email` package: FETCH ENVELOPE/BODYSTRUCTURE/header fields for every
message of a big folder is the hot path of IMAP, and email.message_from_bytes builds
objects, decodes and re-encodes for every part. Here a message is sliced, never
copied more than once, and only as far as the FETCH needs: the header block alone for
ENVELOPE and header fields, the whole tree only for BODYSTRUCTURE and BODY[n]. The
tree holds offsets into the one message buffer, not copies: a part's body is sliced out
only when it is sent or decoded, so memory for a tree is the message plus its headers
plus a few hundred bytes per part, however deep the nesting (copying the rest of the
message at every level cost 100 times its size for 99 nested multiparts).

Input is the message as served (CRLF line ends); bare LF line ends are tolerated
everywhere (a file copied into the Maildir by another tool).

Hostile input is bounded: nesting stops at MAX_DEPTH (a multipart or message/rfc822
there is an application/octet-stream leaf), a tree has at most MAX_PARTS parts, and no
step recurses on the Python stack more than MAX_DEPTH deep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Deepest multipart / message/rfc822 nesting we descend into; an entity at this depth
#: is an application/octet-stream leaf (its bytes still served as BODY[1.1...]).
#: Dovecot's max_nested_mime_parts is 100 too: with the tree sharing one buffer, depth
#: no longer multiplies memory (only CPU, one boundary scan per level), and the same
#: limit keeps BODYSTRUCTURE identical to Dovecot's for every message it would parse.
#: Real mail nests a handful of levels (a forward of a forward of a signed message).
MAX_DEPTH = 100
#: Most parts of one message's tree, all levels together (Dovecot's
#: max_total_mime_parts is 10,000 as well): bounds a tree's objects at a few MB.
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
    end = body_start(raw, 0, len(raw))
    return raw[:end], raw[end:]


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


def comment_end(s: bytes, i: int) -> int:
    """Index after the comment opening at s[i] ("("), nested comments and quoted-pairs
    included (RFC 5322 3.2.2); len(s) if it never closes."""
    depth = 0
    n = len(s)
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
                return i + 1
        i += 1
    return n


def _skip_cfws(s: bytes, i: int) -> int:
    """Skip whitespace and (nested) comments starting at i."""
    n = len(s)
    while i < n:
        c = s[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:  # "("
            i = comment_end(s, i)
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
    """One MIME entity: its header block, and its body as a span of the message.

    The body is `buf[start:end]`, where `buf` is the whole message: every part of a
    tree shares that one buffer, so the tree costs the headers (which never overlap)
    plus a few hundred bytes per part, whatever the nesting. Slicing copies the span
    out only when a FETCH or SEARCH asks for those bytes.
    """

    header: Header
    buf: bytes
    start: int
    end: int
    content_type: ContentType
    depth: int
    #: The parts of a multipart (empty for other types).
    children: list[Part] = field(default_factory=list)
    #: The encapsulated message of a message/rfc822 (or global) part.
    message: Part | None = None

    @property
    def body(self) -> bytes:
        """The body's bytes (a copy of the span: ask for it only to send or decode it)."""
        return self.buf[self.start:self.end]

    @property
    def size(self) -> int:
        """body-fld-octets: octets of the body as served."""
        return self.end - self.start

    def line_breaks(self) -> int:
        """body-fld-lines, counted in place: line breaks in the body (a last line
        without one does not count, as in Dovecot: the CRLF before a boundary belongs
        to the delimiter, RFC 2046 5.1.1)."""
        return self.buf.count(b"\n", self.start, self.end)

    @property
    def is_multipart(self) -> bool:
        return self.content_type.maintype.lower() == b"multipart" and self.depth < MAX_DEPTH

    @property
    def is_message(self) -> bool:
        ct = self.content_type
        return (ct.maintype.lower() == b"message" and ct.subtype.lower() == b"rfc822"
                and self.depth < MAX_DEPTH)


# Only linear white space up to the end of a delimiter line (RFC 2046 5.1.1).
_BLANK = re.compile(rb"[ \t\r\n]*")


def _boundary_positions(buf: bytes, start: int, end: int, boundary: bytes,
                        limit: int) -> list[tuple[int, int, bool]]:
    """Where each boundary line of buf[start:end] starts and ends (offsets into buf),
    and whether it is the close delimiter; at most `limit` + 1 of them.

    RFC 2046 5.1.1: a delimiter is CRLF "--" boundary at the start of a line, then
    only linear white space up to the line end; the close delimiter adds "--". The CRLF
    before it belongs to the delimiter, not to the preceding part. Requiring the line to
    end there keeps "--b1" from matching a nested "--b10".
    """
    marker = b"--" + boundary
    found: list[tuple[int, int, bool]] = []
    i = start if buf.startswith(marker, start, end) else _next_marker(buf, marker, start, end)
    while i >= 0 and len(found) <= limit:
        after = i + len(marker)
        eol = buf.find(b"\n", after, end)
        line_end = end if eol < 0 else eol + 1
        close = buf.startswith(b"--", after, end)
        if close or _BLANK.match(buf, after, line_end).end() == line_end:  # type: ignore[union-attr]
            found.append((i, line_end, close))
            if close:
                break
        i = _next_marker(buf, marker, line_end - 1, end)
    return found


def _next_marker(buf: bytes, marker: bytes, start: int, end: int) -> int:
    """Start of the next line beginning with `marker` in buf[start:end], or -1."""
    i = buf.find(b"\n" + marker, start, end)
    return i + 1 if i >= 0 else -1


def _strip_eol(buf: bytes, floor: int, end: int) -> int:
    """The part ends before the line break that precedes its delimiter line."""
    if end > floor and buf[end - 1] == 0x0A:
        end -= 1
        if end > floor and buf[end - 1] == 0x0D:
            end -= 1
    return end


def body_start(buf: bytes, start: int, end: int) -> int:
    """Where the body of the entity buf[start:end] begins: after the blank line that
    ends its header; `start` when it begins with one, `end` when it has none."""
    if buf.startswith(b"\r\n", start, end):
        return start + 2
    if buf.startswith(b"\n", start, end):
        return start + 1
    m = _HEADER_END.search(buf, start, end)
    return end if m is None else m.end()


def build_part(raw: bytes, default: ContentType, depth: int) -> Part:
    """Parse one entity (header + body) and, iteratively, everything nested in it."""
    return expand(_make_part(raw, 0, len(raw), default, depth))


def entity(header: Header, buf: bytes, start: int, end: int, default: ContentType,
           depth: int) -> Part:
    """A Part whose body is buf[start:end], header already split (children not parsed)."""
    ctype = parse_content_type(header.get(b"content-type"), default)
    if depth >= MAX_DEPTH and ctype.maintype.lower() in (b"multipart", b"message"):
        # Too deep to descend: shown as an opaque leaf. BODYSTRUCTURE cannot show a
        # multipart or message/rfc822 without its contents, so it is octet-stream.
        ctype = OPAQUE
    return Part(header, buf, start, end, ctype, depth)


def expand(root: Part) -> Part:
    """Parse everything nested in `root`, without recursion on the Python stack.

    At most MAX_PARTS entities are made for one tree (Dovecot's max_total_mime_parts
    is 10,000 as well), in document order: a multipart's children past the budget are
    not listed, and a multipart or message/rfc822 reached once the budget is spent is
    an opaque leaf, like one nested too deep (its bytes are still served).
    """
    pending = [root]
    budget = MAX_PARTS
    while pending:
        part = pending.pop()
        if (part.is_multipart or part.is_message) and budget <= 0:
            part.content_type = OPAQUE
        elif part.is_multipart:
            part.children = _split_multipart(part, budget)
            budget -= len(part.children)
            pending.extend(reversed(part.children))
        elif part.is_message:
            part.message = _make_part(part.buf, part.start, part.end, TEXT_PLAIN,
                                      part.depth + 1)
            budget -= 1
            pending.append(part.message)
    return root


def _make_part(buf: bytes, start: int, end: int, default: ContentType, depth: int) -> Part:
    body = body_start(buf, start, end)
    return entity(Header(buf[start:body]), buf, body, end, default, depth)


def _ends_with_close(child: Part, start: int, end: int) -> bool:
    """Whether buf[start:end] ends with the child's own close delimiter (trailing
    blanks aside), looked at in place."""
    boundary = child.content_type.param(b"boundary")
    if not boundary:
        return False
    buf = child.buf
    while end > start:  # skip trailing SP / HTAB a window at a time, copying no more
        window = max(start, end - 4096)
        kept = len(buf[window:end].rstrip(b" \t"))
        end = window + kept
        if kept:
            break
    return buf.endswith(b"--" + boundary + b"--", start, end)


def _split_multipart(part: Part, limit: int) -> list[Part]:
    """The children of a multipart, at most `limit` (>= 1) of them."""
    boundary = part.content_type.param(b"boundary")
    child_default = (MESSAGE_RFC822 if part.content_type.subtype.lower() == b"digest"
                     else TEXT_PLAIN)
    buf, first, last = part.buf, part.start, part.end
    depth = part.depth + 1
    children: list[Part] = []
    if boundary:
        positions = _boundary_positions(buf, first, last, boundary, limit)
        followers: list[tuple[int, int, bool] | None] = [*positions[1:], None]
        for (_, start, close), following in zip(positions, followers, strict=False):
            if close or len(children) >= limit:
                break
            if following is None:
                child = _make_part(buf, start, last, child_default, depth)
            else:
                end = _strip_eol(buf, first, following[0])
                child = _make_part(buf, start, max(start, end), child_default, depth)
                if child.is_multipart and _ends_with_close(child, start, end):
                    # The line break of a nested multipart's close delimiter stays
                    # with it when no epilogue follows (Dovecot's BODY[n] and size).
                    child.end = following[0]
            children.append(child)
    if not children:
        # RFC 3501's body-type-mpart needs at least one body: a multipart without
        # boundary or parts shows one empty text/plain part, as Dovecot does.
        children.append(Part(Header(b""), b"", 0, 0, TEXT_PLAIN, depth))
    return children
