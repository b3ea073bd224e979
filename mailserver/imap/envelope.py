"""ENVELOPE (RFC 3501 7.4.2) from a header block, and the address lists inside it.

Header values go out unfolded but otherwise as written: RFC 2047 encoded words stay
encoded (the client decodes them), 8-bit octets make the string a literal. Address
lists are parsed with a tolerant RFC 5322 3.4 reader: whatever a broken header holds,
the result is a well-formed ENVELOPE, never an exception.
"""

from __future__ import annotations

import re

from mailserver.imap.encode import nstring
from mailserver.imap.mime import Header, comment_end, unfold

#: (name, adl, mailbox, host) as in RFC 3501's address; group start is
#: (None, None, groupname, None), group end (None, None, None, None).
Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]

#: Dovecot's placeholders for an address without local part or domain, so that a
#: client never sees an address it cannot tell from a group marker (mailbox NIL or
#: host NIL mean group syntax in RFC 3501).
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

#: At most this many addresses per header (a flood of commas stays bounded).
MAX_ADDRESSES = 10_000
#: Octets of one address header that are parsed.
MAX_ADDRESS_OCTETS = 64 * 1024

# One lexical token of RFC 5322 3.2: whitespace, quoted-string (maybe unterminated),
# domain literal, a special, an atom (anything else up to a delimiter), "(" opening a
# comment (read by hand: comments nest), or any other single octet.
_TOKEN = re.compile(
    rb'(?P<ws>[ \t\r\n]+)'
    rb'|"(?P<q>(?:[^"\\]|\\.)*)(?P<qend>"?)'
    rb'|(?P<lit>\[(?:[^\]\\]|\\.)*\]?)'
    rb'|(?P<sp>[<>@,;:.])'
    rb'|(?P<atom>[^ \t\r\n"()<>@,;:.\[\]]+)'
    rb'|(?P<c>\()'
    rb'|(?P<other>.)', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)

# Token kinds. _BROKEN is a quoted string without its closing quote: the address it
# is in cannot be read (Dovecot then fills in MISSING_MAILBOX and MISSING_DOMAIN).
_ATOM, _QUOTED, _SPECIAL, _COMMENT, _BROKEN = 0, 1, 2, 3, 4


def _tokens(s: bytes) -> list[tuple[int, bytes, bool]]:
    """(kind, text, preceded by whitespace) for each token of `s`."""
    out: list[tuple[int, bytes, bool]] = []
    i = 0
    n = len(s)
    space = False
    while i < n:
        m = _TOKEN.match(s, i)
        assert m is not None  # "other" matches any octet
        kind = m.lastgroup
        if kind == "ws":
            space = True
        elif kind == "qend":  # the last group of the quoted-string alternative
            out.append((_QUOTED if m.group("qend") else _BROKEN,
                        _QUOTED_PAIR.sub(rb"\1", m.group("q")), space))
            space = False
        elif kind == "c":
            end = comment_end(s, i)
            body = s[i + 1:end - 1] if s[end - 1:end] == b")" else s[i + 1:end]
            out.append((_COMMENT, _QUOTED_PAIR.sub(rb"\1", body).strip(), space))
            space = True
            i = end
            continue
        elif kind == "sp":
            out.append((_SPECIAL, m.group(), space))
            space = False
        else:  # atom, domain literal, stray octet
            out.append((_ATOM, m.group(), space))
            space = False
        i = m.end()
    return out


def _phrase(words: list[tuple[int, bytes, bool]]) -> bytes | None:
    """A display name: words joined by single spaces, quotes removed, comments dropped."""
    text = b""
    for kind, value, space in words:
        if kind == _COMMENT:
            continue
        if text and (space or kind == _QUOTED):
            text += b" "
        text += value
    return text if text else None


def _addr_spec(words: list[tuple[int, bytes, bool]]) -> tuple[bytes | None, bytes | None]:
    """local@domain from tokens (comments dropped); a missing part is None."""
    local = b""
    domain: bytes | None = None
    for kind, value, _space in words:
        if kind == _COMMENT:
            continue
        if kind == _SPECIAL and value == b"@" and domain is None:
            domain = b""
            continue
        if domain is None:
            local += value
        else:
            domain += value
    return (local or None), (domain or None)


def _mailbox(words: list[tuple[int, bytes, bool]]) -> Address | None:
    """One mailbox (name-addr or addr-spec) from its tokens, or None when empty."""
    if not any(kind != _COMMENT for kind, _, _ in words):
        return None
    if any(kind == _BROKEN for kind, _, _ in words):
        return (None, None, MISSING_MAILBOX, MISSING_DOMAIN)
    for index, (kind, value, _space) in enumerate(words):
        if kind == _SPECIAL and value == b"<":
            name = _phrase(words[:index])
            close = next((j for j in range(index + 1, len(words))
                          if words[j][0] == _SPECIAL and words[j][1] == b">"), len(words))
            inner = words[index + 1:close]
            adl = None
            colon = next((j for j, t in enumerate(inner)
                          if t[0] == _SPECIAL and t[1] == b":"), None)
            if colon is not None and inner and inner[0][1] == b"@":
                adl = b"".join(t[1] for t in inner[:colon] if t[0] != _COMMENT)
                inner = inner[colon + 1:]
            local, domain = _addr_spec(inner)
            if local is None and domain is None and name is None:
                return None
            return (name, adl, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)
    local, domain = _addr_spec(words)
    # "user@host (Real Name)": the comment serves as the name (RFC 822 practice).
    comments = [value for kind, value, _ in words if kind == _COMMENT and value]
    name = comments[-1] if comments else None
    return (name, None, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)


# The common shapes, read by one regex per address: `local@domain`,
# `Display Name <local@domain>` (words separated by single spaces) and
# `"Quoted Name" <local@domain>`. Anything else (groups, comments, routes, escapes in
# odd places, runs of spaces) goes to the tokenizer below, which gives the same answer
# for these shapes; the fast path only saves time on big folders.
_ATOM_RUN = rb'[^\s"<>,;:@()\\\[\]]+'
_SIMPLE_ADDRESS = re.compile(
    rb'[ \t]*(?:'
    rb'(?:(?P<name>' + _ATOM_RUN + rb'(?: ' + _ATOM_RUN + rb')*)'
    rb'|"(?P<qname>(?:[^"\\\r\n]|\\.)+)")?'
    rb'[ \t]*<(?P<l1>' + _ATOM_RUN + rb')@(?P<d1>' + _ATOM_RUN + rb')>'
    rb'|(?P<l2>' + _ATOM_RUN + rb')@(?P<d2>' + _ATOM_RUN + rb'))'
    rb'[ \t]*(?:,|\Z)')


def _simple_addresses(value: bytes) -> list[Address] | None:
    """The addresses when every one has a common shape, else None."""
    out: list[Address] = []
    pos = 0
    end = len(value)
    match = _SIMPLE_ADDRESS.match
    while pos < end:
        m = match(value, pos)
        if m is None or m.end() == pos:
            return None
        local = m.group("l1")
        if local is not None:
            name = m.group("name")
            if name is None:
                name = m.group("qname")
                if name is not None and b"\\" in name:
                    name = _QUOTED_PAIR.sub(rb"\1", name)
            out.append((name, None, local, m.group("d1")))
        else:
            out.append((None, None, m.group("l2"), m.group("d2")))
        pos = m.end()
        if len(out) >= MAX_ADDRESSES:
            break
    return out


def parse_addresses(value: bytes) -> list[Address]:
    """An RFC 5322 address-list (groups included) as ENVELOPE addresses, tolerantly.

    Only the first MAX_ADDRESS_OCTETS are read: a hostile 10 MB To: line costs
    bounded time (real address lists are a few KiB even with hundreds of recipients).
    """
    if len(value) > MAX_ADDRESS_OCTETS:
        value = value[:MAX_ADDRESS_OCTETS]
    simple = _simple_addresses(value)
    if simple is not None:
        return simple
    tokens = _tokens(value)
    out: list[Address] = []
    current: list[tuple[int, bytes, bool]] = []
    in_group = False
    in_angle = False
    for token in tokens:
        kind, text, _space = token
        if kind == _SPECIAL:
            if text == b"<":
                in_angle = True
            elif text == b">":
                in_angle = False
            elif text == b"," and not in_angle:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                current = []
                if len(out) >= MAX_ADDRESSES:
                    break
                continue
            elif text == b":" and not in_angle and not in_group:
                out.append((None, None, _phrase(current) or b"", None))
                in_group = True
                current = []
                continue
            elif text == b";" and not in_angle and in_group:
                address = _mailbox(current)
                if address is not None:
                    out.append(address)
                out.append((None, None, None, None))
                in_group = False
                current = []
                continue
        current.append(token)
    address = _mailbox(current)
    if address is not None:
        out.append(address)
    if in_group:
        out.append((None, None, None, None))
    return out


#: Rendered address lists by header value: a folder repeats the same From and To
#: values over and over. Bounded; cleared when full.
_LIST_CACHE: dict[bytes, bytes] = {}
_LIST_CACHE_MAX = 4096


def address_list(value: bytes | None) -> bytes:
    """`((name adl mailbox host) ...)` or NIL (no header, or no address in it)."""
    if value is None:
        return b"NIL"
    cached = _LIST_CACHE.get(value)
    if cached is not None:
        return cached
    addresses = parse_addresses(value)
    if not addresses:
        rendered = b"NIL"
    else:
        rendered = b"(" + b"".join(
            b"(%s %s %s %s)" % (nstring(a[0]), nstring(a[1]), nstring(a[2]), nstring(a[3]))
            for a in addresses) + b")"
    if len(value) < 512:
        if len(_LIST_CACHE) >= _LIST_CACHE_MAX:
            _LIST_CACHE.clear()
        _LIST_CACHE[value] = rendered
    return rendered


def _for_humans(value: bytes | None) -> bytes | None:
    """A TAB left by unfolding reads as a space (Dovecot: imap_append_string_for_humans)."""
    if value is None or b"\t" not in value:
        return value
    return value.replace(b"\t", b" ")


_ENVELOPE_FIELD = re.compile(
    rb"\n(date|subject|from|sender|reply-to|to|cc|bcc|in-reply-to|message-id)[ \t]*:"
    rb"(.*(?:\n[ \t].*)*)", re.I)


def envelope_fields(raw: bytes) -> dict[bytes, bytes]:
    """The ten ENVELOPE fields of a header block (lower-case names), last one wins,
    unfolded; one regex pass that skips every other field (Received, DKIM...)."""
    # b"\n" + raw: a literal first character lets the regex skip to line starts.
    return {name.lower(): unfold(value)
            for name, value in _ENVELOPE_FIELD.findall(b"\n" + raw)}


def envelope(header: Header) -> bytes:
    """The ENVELOPE of a message from its header block (RFC 3501 7.4.2).

    Sender and Reply-To default to From when absent or empty (same section). When a
    header repeats a field, the last one counts, as in Dovecot. Subject and display
    names are unfolded with TAB read as SP and runs of spaces kept (for humans).
    """
    fields = envelope_fields(header.raw)
    get = fields.get
    from_ = address_list(get(b"from"))
    sender = address_list(get(b"sender"))
    reply_to = address_list(get(b"reply-to"))
    if sender == b"NIL":
        sender = from_
    if reply_to == b"NIL":
        reply_to = from_
    return b"(%s %s %s %s %s %s %s %s %s %s)" % (
        nstring(get(b"date")),
        nstring(_for_humans(get(b"subject"))),
        from_, sender, reply_to,
        address_list(get(b"to")),
        address_list(get(b"cc")),
        address_list(get(b"bcc")),
        nstring(get(b"in-reply-to")),
        nstring(get(b"message-id")),
    )
