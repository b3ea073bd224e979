"""Grammar of the extensions of issue 15 that change existing commands: APPEND with
MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and literal8 (RFC 3516 4.4); the IMAP URL
of a CATENATE part (RFC 5092, the subset RFC 4469 5 allows); LIST-EXTENDED (RFC 5258)
with LIST-STATUS (RFC 5819); the BINARY FETCH items (RFC 3516 4.2).

Pure, like grammar.py, whose Reader it uses and whose _PARSERS it extends (a few
lines at the end of grammar.py): bytes in, typed commands out, ParseError on anything
a client can get wrong.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mailserver.imap import grammar, mutf7
from mailserver.imap.commands import Append, Command, FetchAtt, ListCommand, Section
from mailserver.imap.grammar import ParseError, Reader

#: Most messages in one MULTIAPPEND, most parts in one CATENATE, and most URLs in one
#: APPEND: each is a store write or a message file read; clients send a handful (RFC
#: 3502 and 4469 set no limit).
MAX_APPEND_MESSAGES = 1000
MAX_CATENATE_PARTS = 100
MAX_APPEND_URLS = 100
#: Most patterns in one LIST (RFC 5258 3: "one or more"); each costs a pass over the
#: folder names in the disk thread.
MAX_LIST_PATTERNS = 100

_LITERAL8 = re.compile(rb"~\{(\d{1,20})(\+?)\}\r\n")


# -- typed commands --------------------------------------------------------------------


@dataclass(frozen=True)
class ImapUrl:
    """A CATENATE URL (RFC 5092 / RFC 4469 5): one message, or a section of it, in one
    of the user's own mailboxes. `text` is the URL as sent (for error texts)."""

    text: str
    mailbox: str
    uid: int
    uid_validity: int | None = None
    section: Section | None = None
    partial: tuple[int, int | None] | None = None


@dataclass(frozen=True)
class AppendMessage:
    """One message of an extended APPEND: flags, date, and either the literal's octets
    (one part) or the CATENATE parts (bytes for TEXT, ImapUrl for URL)."""

    flags: tuple[str, ...]
    date: str | None
    parts: tuple[bytes | ImapUrl, ...]
    catenate: bool = False
    #: Sent as literal8 (~{n}): may hold NUL (RFC 3516 4.4).
    binary: bool = False


@dataclass(frozen=True)
class AppendMany(Command):
    """APPEND with more than one message (MULTIAPPEND) or with CATENATE; a plain
    one-message APPEND stays grammar.Append (its big literal may be collected apart)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True)
class ListExtended(ListCommand):
    """LIST with several patterns or options beyond what ListCommand carries
    (RFC 5258 3; STATUS return option, RFC 5819)."""

    patterns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


# -- APPEND ----------------------------------------------------------------------------


def _literal_any(r: Reader) -> tuple[bytes, bool]:
    """A literal or a literal8 (RFC 3516 4.4: "~{n}"); (octets, was literal8)."""
    if r.peek() == 0x7E:
        m = _LITERAL8.match(r.data, r.pos)
        if m is None:
            raise r.fail("bad literal8")
        size = int(m.group(1))
        if size > grammar.MAX_NUMBER or m.end() + size > len(r.data):
            raise r.fail("literal too large", "TOOBIG")
        r.pos = m.end() + size
        return r.data[m.end():r.pos], True
    if r.peek() != 0x7B:
        raise r.fail("APPEND needs the message as a literal")
    return r.literal(), False


def _append_message(r: Reader) -> AppendMessage:
    """append-opts SP append-data (RFC 4466 2.3, RFC 3502, RFC 4469 5)."""
    flags: tuple[str, ...] = ()
    date = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.sp()
    if r.peek() == 0x22:
        raw = r.quoted().decode("ascii", "replace")
        if grammar._DATE_TIME.match(raw) is None:
            raise r.fail("invalid date-time")
        date = raw
        r.sp()
    if r.at(b"CATENATE "):
        r.pos += len(b"CATENATE ")
        start = r.pos
        parts = _catenate_parts(r)
        binary = _LITERAL8.search(r.data, start, r.pos) is not None
        return AppendMessage(flags, date, parts, catenate=True, binary=binary)
    if r.at(b"UTF8 ("):  # RFC 6855 4: UTF8 (literal8); stored as it is
        r.pos += len(b"UTF8 (")
        data, _ = _literal_any(r)
        r.expect(b")")
        return AppendMessage(flags, date, (data,), binary=True)
    data, binary = _literal_any(r)
    return AppendMessage(flags, date, (data,), binary=binary)


def _catenate_parts(r: Reader) -> tuple[bytes | ImapUrl, ...]:
    """"(" cat-part *(SP cat-part) ")"; cat-part = "TEXT" SP literal / "URL" SP astring."""
    r.expect(b"(")
    parts: list[bytes | ImapUrl] = []
    while True:
        if len(parts) >= MAX_CATENATE_PARTS:
            raise r.fail(f"too many CATENATE parts ({MAX_CATENATE_PARTS} at most)", "LIMIT")
        if r.at(b"TEXT "):
            r.pos += 5
            parts.append(_literal_any(r)[0])
        elif r.at(b"URL "):
            r.pos += 4
            raw = r.astring()
            try:
                parts.append(parse_url(raw, r.tag))
            except ParseError:
                # Valid syntax, but no URL we resolve: NO [BADURL] (RFC 4469 6), not BAD.
                parts.append(ImapUrl(raw.decode("utf-8", "replace"), "", 0))
        else:
            raise r.fail("expected TEXT or URL in CATENATE")
        if not r.maybe_sp():
            break
    r.expect(b")")
    return tuple(parts)


def append(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """APPEND mailbox 1*(SP append-message): grammar.Append for one plain literal."""
    r.sp()
    mailbox = r.mailbox()
    messages: list[AppendMessage] = []
    while r.maybe_sp():
        if messages:
            # IMAPClient 4.1's multiappend() puts two spaces before each further literal
            # (" " after a literal, then " {n+}"); Dovecot takes it, and so do we.
            while r.peek() == 0x20:
                r.pos += 1
        if len(messages) >= MAX_APPEND_MESSAGES:
            raise r.fail(f"too many messages ({MAX_APPEND_MESSAGES} at most)", "LIMIT")
        messages.append(_append_message(r))
    if not messages:
        raise r.fail("APPEND needs a message")
    urls = sum(isinstance(part, ImapUrl) for m in messages for part in m.parts)
    if urls > MAX_APPEND_URLS:
        raise r.fail(f"too many CATENATE URLs ({MAX_APPEND_URLS} at most)", "LIMIT")
    if len(messages) == 1 and not messages[0].catenate and not messages[0].binary:
        only = messages[0]
        data = only.parts[0]
        assert isinstance(data, bytes)
        return Append(tag, name, mailbox, only.flags, only.date, data)
    return AppendMany(tag, name, mailbox, tuple(messages))


# -- IMAP URLs (RFC 5092) ----------------------------------------------------------------

_URL = re.compile(
    r"(?:imap://(?:(?P<user>[^@/;]*)(?:;[^@/]*)?@)?(?P<host>[^/]*))?"
    r"/(?P<mailbox>[^;]*)(?:;UIDVALIDITY=(?P<validity>\d{1,10}))?"
    r"/;UID=(?P<uid>\d{1,10})"
    r"(?:/;SECTION=(?P<section>[^/;]*))?"
    r"(?:/;PARTIAL=(?P<origin>\d{1,10})(?:\.(?P<length>\d{1,10}))?)?\Z",
    re.IGNORECASE)


def parse_url(raw: bytes, tag: str | None = None) -> ImapUrl:
    """An IMAP URL naming one message (RFC 5092 3: imessagepart), relative ("/box/;UID=1")
    or absolute ("imap://user@host/box/;UID=1"; `url_user` gives the user). Whether the
    user may read what the URL names is appendext's check (BADURL).

    ParseError when it is no such URL: URLAUTH, a search, a list or anything else we
    do not resolve (the CATENATE parser keeps it as an ImapUrl with uid 0, which names
    nothing: NO [BADURL], RFC 4469 6).
    """
    text = raw.decode("utf-8", "replace")
    m = _URL.match(text)
    if m is None or not m.group("mailbox"):
        raise ParseError(f"unsupported IMAP URL {text[:200]}", tag, "BADURL")
    try:
        mailbox = urllib.parse.unquote(m.group("mailbox"), errors="strict")
    except UnicodeDecodeError:
        raise ParseError("IMAP URL mailbox is not UTF-8", tag, "BADURL") from None
    # RFC 5092 3: the mailbox is UTF-8, percent-encoded; our names are modified UTF-7.
    mailbox = grammar.mailbox_name(mutf7.encode(mailbox).encode())
    uid = int(m.group("uid"))
    validity = int(m.group("validity")) if m.group("validity") else None
    if uid == 0 or uid > grammar.MAX_NUMBER or (validity is not None and (
            validity == 0 or validity > grammar.MAX_NUMBER)):
        raise ParseError("IMAP URL number out of range", tag, "BADURL")
    section = None
    if m.group("section"):
        spec = urllib.parse.unquote(m.group("section"))
        reader = Reader(spec.encode() + b"]", tag)
        try:
            section = grammar._section(reader)
        except ParseError:
            raise ParseError(f"bad section in IMAP URL {text[:200]}", tag, "BADURL") from None
        if reader.pos != len(reader.data):
            raise ParseError(f"bad section in IMAP URL {text[:200]}", tag, "BADURL")
    part = None
    if m.group("origin"):
        length = int(m.group("length")) if m.group("length") else None
        part = (int(m.group("origin")), length)
    return ImapUrl(text, mailbox, uid, validity, section, part)


def url_user(url: ImapUrl) -> str | None:
    """The user an absolute URL names (percent-decoded), or None for a relative one."""
    m = _URL.match(url.text)
    if m is None or m.group("user") is None:
        return None
    return urllib.parse.unquote(m.group("user"))


# -- LIST-EXTENDED (RFC 5258 6) and LIST-STATUS (RFC 5819) ----------------------------

SELECT_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def list_extended(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts].

    A LIST in RFC 3501's form stays a ListCommand (answered as before); any extended
    form is a ListExtended. Unknown options are BAD (RFC 5258 3: "MUST return BAD").
    """
    r.sp()
    select: tuple[str, ...] = ()
    extended = False
    if r.peek() == 0x28:
        select = _options(r, SELECT_OPTIONS, "selection")
        # RFC 5258 3.1: RECURSIVEMATCH needs another option it can modify (REMOTE is
        # none); we serve it with SUBSCRIBED (the only one with CHILDINFO).
        if "RECURSIVEMATCH" in select and "SUBSCRIBED" not in select:
            raise r.fail("RECURSIVEMATCH needs SUBSCRIBED")
        extended = True
        r.sp()
    reference = grammar.mailbox_name(r.astring(), r)
    r.sp()
    if r.peek() == 0x28:  # patterns: "(" list-mailbox *(SP list-mailbox) ")"
        r.pos += 1
        patterns = [r.list_mailbox()]
        while r.maybe_sp():
            if len(patterns) >= MAX_LIST_PATTERNS:
                raise r.fail(f"too many patterns ({MAX_LIST_PATTERNS} at most)", "LIMIT")
            patterns.append(r.list_mailbox())
        r.expect(b")")
        extended = True
    else:
        patterns = [r.list_mailbox()]
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    if r.maybe_sp():
        r.expect(b"RETURN", "RETURN")
        r.sp()
        returns, status_items = _return_options(r)
        extended = True
    if not extended:
        return ListCommand(tag, name, reference, patterns[0])
    return ListExtended(tag, name, reference, patterns[0], select, returns,
                        tuple(patterns), status_items)


def _options(r: Reader, known: frozenset[str], what: str) -> tuple[str, ...]:
    r.expect(b"(")
    options: list[str] = []
    while r.peek() != 0x29:
        if options:
            r.sp()
        option = r.atom().upper()
        if option not in known:
            raise r.fail(f"unknown LIST {what} option {option[:40]}")
        options.append(option)
    r.expect(b")")
    return tuple(options)


def _return_options(r: Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """"(" [return-option *(SP return-option)] ")"; STATUS takes "(" items ")"."""
    r.expect(b"(")
    options: list[str] = []
    items: tuple[str, ...] = ()
    while r.peek() != 0x29:
        if options:
            r.sp()
        option = r.atom().upper()
        if option not in RETURN_OPTIONS:
            raise r.fail(f"unknown LIST return option {option[:40]}")
        if option == "STATUS":  # RFC 5819 2
            r.sp()
            items = grammar._option_list(r)
            if not items or any(item not in grammar.STATUS_ITEMS for item in items):
                raise r.fail("invalid STATUS items")
        options.append(option)
    r.expect(b")")
    return tuple(options), items


# -- BINARY fetch items (RFC 3516 4.2, 9) -------------------------------------------------

BINARY_WORDS = frozenset({b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


def binary_att(r: Reader, word: bytes) -> FetchAtt:
    """After BINARY, BINARY.PEEK or BINARY.SIZE: "[" [section-part] "]" and, except for
    .SIZE, an optional <partial>."""
    r.expect(b"[")
    part: list[int] = []
    if r.peek() != 0x5D:
        part.append(r.number(nonzero=True))
        while r.peek() == 0x2E:
            r.pos += 1
            part.append(r.number(nonzero=True))
    r.expect(b"]")
    section = Section(tuple(part))
    if word == b"BINARY.SIZE":
        return FetchAtt("BINARY.SIZE", section)
    span = None
    if r.peek() == 0x3C:  # "<" number "." nz-number ">"
        r.pos += 1
        origin = r.number()
        r.expect(b".")
        span = (origin, r.number(nonzero=True))
        r.expect(b">")
    return FetchAtt("BINARY[]", section, word == b"BINARY.PEEK", span)


PARSERS: dict[str, Any] = {"APPEND": append, "LIST": list_extended}
