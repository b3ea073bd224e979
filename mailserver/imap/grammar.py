"""The IMAP4rev1 command grammar (RFC 3501 9, plus the extensions we serve): bytes in,
typed commands out. Pure: no I/O, no session state.

The session (server.py) frames a command: a line, and for every `{n}` / `{n+}` literal
at a line's end (RFC 3501 4.3, RFC 7888) the n octets and the next line. What it hands
to `parse_command` is the whole command with its CRLFs and literal announcements left
in place, so this module sees exactly what the client sent and can check it.

Everything a client can get wrong raises ParseError, which the session answers with
`tag BAD ...` (RFC 3501 7.1.3). Limits are enforced here too: nesting depth of search
parentheses, number ranges (nz-number is 1..4294967295, RFC 3501 9), lengths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mailserver.imap import grammar_condstore
from mailserver.imap.commands import (  # the typed commands this module produces
    ATOM_SPECIALS,  # noqa: F401 - importable from here, as before reader.py
    Append,
    Authenticate,
    Command,
    Copy,
    Enable,
    Fetch,
    FetchAtt,
    Id,
    ListCommand,
    Login,
    MailboxCommand,
    Rename,
    Search,
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchProgram,
    Section,
    SequenceSet,  # noqa: F401 - search.py imports it from here
    Simple,
    Status,
    Store,
    UidExpunge,
)
from mailserver.imap.objectid import OBJECTID
from mailserver.imap.reader import (  # noqa: F401 - the lexical layer, importable from here
    DELIMITER,
    MAX_MAILBOX_NAME,
    MAX_NUMBER,
    SAVED_RESULT,
    ParseError,
    Reader,
    command_word,
    literal_at_end,
    mailbox_name,
    peek_tag,
    store_name_problem,
)

#: Deepest parenthesis nesting we parse in SEARCH (each level is a recursion).
MAX_DEPTH = 32
#: Most search keys (criteria, not counting NOT, OR and parentheses) in one SEARCH.
#: Each is evaluated for every message, so the work is keys x messages; clients send a
#: handful (Thunderbird's quick filter and Roundcube's all-fields search: 4 to 8 per
#: word), and OR chains are already bounded by MAX_DEPTH, but a balanced tree of ORs
#: is not: 100 is ten times what a client sends and 1/100 of what a 64 KiB line holds.
MAX_SEARCH_KEYS = 100
_DATE_TIME = re.compile(
    r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")




_SIMPLE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
                     "UNSELECT", "EXPUNGE", "IDLE", "NAMESPACE"})
_MAILBOX_COMMANDS = frozenset({"SELECT", "EXAMINE", "CREATE", "DELETE", "SUBSCRIBE",
                               "UNSUBSCRIBE"})
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                          "SIZE"})  # SIZE: RFC 8438
STATUS_ITEMS |= {"HIGHESTMODSEQ"}  # RFC 7162 3.1.9
STATUS_ITEMS |= {"DELETED"}  # RFC 9051 6.3.11 (also in rev1 mode: no clash)
STATUS_ITEMS |= {"MAILBOXID"}  # RFC 8474 4.3
_FETCH_MACROS = {
    # RFC 3501 6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                           "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID"})
_FETCH_SIMPLE |= {"MODSEQ"}  # RFC 7162 3.1.4.1
_FETCH_SIMPLE |= {"EMAILID", "THREADID"}  # RFC 8474 5
_SEARCH_FLAG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW",
                               "OLD", "RECENT", "SEEN", "UNANSWERED", "UNDELETED",
                               "UNDRAFT", "UNFLAGGED", "UNSEEN"})
_SEARCH_STRING_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON",
                               "SENTSINCE"})


# -- commands ------------------------------------------------------------------------------


def parse_command(data: bytes) -> Command:
    """Parse one framed command (ending with CRLF). ParseError on any syntax error."""
    reader = Reader(data)
    tag_bytes = reader.astring_atom()
    if not tag_bytes or reader.peek() not in (0x20, 0x0D) or b"+" in tag_bytes:
        raise ParseError("missing or invalid tag")
    reader.tag = tag = tag_bytes.decode("ascii", "replace")
    if reader.peek() != 0x20:
        raise ParseError("missing command", tag)
    reader.pos += 1
    name = reader.atom().upper()
    uid = False
    if name == "UID":
        reader.sp()
        name = reader.atom().upper()
        uid = True
        if name not in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT",
                        "THREAD"):
            raise reader.fail(f"unknown UID command {name}")
    command = _parse_body(reader, tag, name, uid)
    reader.end()
    return command


def _parse_body(r: Reader, tag: str, name: str, uid: bool) -> Command:
    if name in _SIMPLE and not uid:
        return Simple(tag, name)
    if name in _MAILBOX_COMMANDS:
        r.sp()
        mailbox = r.mailbox()
        use: tuple[str, ...] = ()
        if name == "CREATE" and r.maybe_sp():
            use = _create_params(r)
        elif name in ("SELECT", "EXAMINE") and r.maybe_sp():
            return MailboxCommand(tag, name, mailbox, use,
                                  grammar_condstore.select_params(r))
        return MailboxCommand(tag, name, mailbox, use)
    parser = _PARSERS.get(name)
    if parser is None:
        raise r.fail(f"unknown command {name}")
    return parser(r, tag, name, uid)


def _create_params(r: Reader) -> tuple[str, ...]:
    """RFC 4466 create-params; we take RFC 6154's USE (attr...)."""
    r.expect(b"(")
    r.expect(b"USE", "USE")
    r.sp()
    uses = r.flag_list()
    r.expect(b")")
    return uses


def _login(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    user = r.astring()
    r.sp()
    return Login(tag, name, user, r.astring())


def _authenticate(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    mechanism = r.atom().upper()
    initial = None
    if r.maybe_sp():
        initial = r._run(frozenset(b"+=")).strip()
        if not initial:
            raise r.fail("bad initial response")
    return Authenticate(tag, name, mechanism, initial)


def _rename(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    return Rename(tag, name, old, r.mailbox())


def _list(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    select: tuple[str, ...] = ()
    if name == "LIST" and r.peek() == 0x28:
        select = _option_list(r)
        r.sp()
    reference = mailbox_name(r.astring(), r)
    r.sp()
    pattern = r.list_mailbox()
    returns: tuple[str, ...] = ()
    if name == "LIST" and r.maybe_sp():
        r.expect(b"RETURN", "RETURN")
        r.sp()
        returns = _option_list(r)
    return ListCommand(tag, name, reference, pattern, select, returns)


def _option_list(r: Reader) -> tuple[str, ...]:
    r.expect(b"(")
    options: list[str] = []
    if r.peek() != 0x29:
        options.append(r.atom().upper())
        while r.maybe_sp():
            options.append(r.atom().upper())
    r.expect(b")")
    return tuple(options)


def _status(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    items = _option_list(r)
    if not items:
        raise r.fail("STATUS needs at least one item")
    for item in items:
        if item not in STATUS_ITEMS:
            raise r.fail(f"unknown STATUS item {item}")
    return Status(tag, name, mailbox, items)


def _append(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    date = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.sp()
    if r.peek() == 0x22:
        raw = r.quoted().decode("ascii", "replace")
        if _DATE_TIME.match(raw) is None:
            raise r.fail("invalid date-time")
        date = raw
        r.sp()
    if r.peek() != 0x7B:
        raise r.fail("APPEND needs the message as a literal")
    return Append(tag, name, mailbox, flags, date, r.literal())


def _fetch(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    items: list[FetchAtt] = []
    if r.peek() == 0x28:
        r.pos += 1
        items.append(_fetch_att(r))
        while r.maybe_sp():
            items.append(_fetch_att(r))
        r.expect(b")")
    else:
        start = r.pos
        word = r._run(frozenset()).upper().decode("ascii", "replace")
        if word in _FETCH_MACROS:
            items.extend(FetchAtt(n) for n in _FETCH_MACROS[word])
        else:
            r.pos = start
            items.append(_fetch_att(r))
    if r.peek() == 0x20:
        changed_since, vanished = grammar_condstore.fetch_modifiers(r)
        if vanished and not uid:
            raise r.fail("VANISHED is for UID FETCH only (RFC 7162 3.2.6)")
        return Fetch(tag, name, uid, sequence, tuple(items), changed_since, vanished)
    return Fetch(tag, name, uid, sequence, tuple(items))


def _fetch_att(r: Reader) -> FetchAtt:
    start = r.pos
    word = r._run(stop=frozenset(b"[")).upper()
    if word in grammar_ext.BINARY_WORDS:  # RFC 3516 BINARY[...], .PEEK, .SIZE
        return grammar_ext.binary_att(r, word)
    if r.peek() == 0x5B:  # "[": BODY[ or BODY.PEEK[
        if word not in (b"BODY", b"BODY.PEEK"):
            raise r.fail(f"unknown FETCH item {word.decode('ascii', 'replace')}")
        r.pos += 1
        section = _section(r)
        partial = None
        if r.peek() == 0x3C:  # "<"
            r.pos += 1
            origin = r.number()
            r.expect(b".")
            partial = (origin, r.number(nonzero=True))
            r.expect(b">")
        return FetchAtt("BODY[]", section, word == b"BODY.PEEK", partial)
    text = word.decode("ascii", "replace")
    if text not in _FETCH_SIMPLE:
        r.pos = start
        if not text:  # "()", "( FLAGS": RFC 3501 9 has no empty fetch-att
            raise r.fail("expected a FETCH item")
        raise r.fail(f"unknown FETCH item {text[:40]}")
    return FetchAtt(text)


def _section(r: Reader) -> Section:
    """After "[": section-spec "]" (RFC 3501 9)."""
    part: list[int] = []
    while (c := r.peek()) is not None and 0x30 <= c <= 0x39:
        part.append(r.number(nonzero=True))
        if r.peek() == 0x2E:
            r.pos += 1
        else:
            break
    spec = ""
    fields: tuple[str, ...] = ()
    if r.peek() != 0x5D:
        spec = r._run(frozenset()).upper().decode("ascii", "replace")
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if part:
            allowed.add("MIME")
        if spec not in allowed:
            raise r.fail("invalid section")
        if spec.startswith("HEADER.FIELDS"):
            r.sp()
            fields = _header_list(r)
    elif part and r.data[r.pos - 1] == 0x2E:
        raise r.fail("invalid section")
    r.expect(b"]")
    return Section(tuple(part), spec, fields)


def _header_list(r: Reader) -> tuple[str, ...]:
    r.expect(b"(")
    fields = [r.astring().decode("ascii", "replace")]
    while r.maybe_sp():
        fields.append(r.astring().decode("ascii", "replace"))
    r.expect(b")")
    for f in fields:
        if not f or any(c <= " " or c == ":" or ord(c) > 126 for c in f):
            raise r.fail("invalid header field name")
    return tuple(fields)


def _store(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    unchanged_since = grammar_condstore.store_modifiers(r) if r.peek() == 0x28 else None
    item = r.atom().upper()
    mode = "="
    if item[:1] in ("+", "-"):
        mode, item = item[0], item[1:]
    silent = item.endswith(".SILENT")
    if silent:
        item = item[:-len(".SILENT")]
    if item != "FLAGS":
        raise r.fail("STORE wants FLAGS, +FLAGS or -FLAGS")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        flag_items = [r.flag()]
        while r.maybe_sp():
            flag_items.append(r.flag())
        flags = tuple(flag_items)
    if "\\*" in flags or any(f.upper() == "\\RECENT" for f in flags):
        raise r.fail("\\Recent and \\* cannot be stored")
    return Store(tag, name, uid, sequence, mode, silent, flags, unchanged_since)


def _copy(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    return Copy(tag, name, uid, sequence, r.mailbox())


def _expunge(r: Reader, tag: str, name: str, uid: bool) -> Command:
    # Only reached for UID EXPUNGE (RFC 4315 2.1); plain EXPUNGE is a Simple command.
    r.sp()
    return UidExpunge(tag, name, r.sequence_set())


def _enable(r: Reader, tag: str, name: str, uid: bool) -> Command:
    capabilities = []
    while r.maybe_sp():
        capabilities.append(r.atom().upper())
    if not capabilities:
        raise r.fail("ENABLE needs a capability")
    return Enable(tag, name, tuple(capabilities))


def _id(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """RFC 2971: ID ("name" "value" ...) or ID NIL; at most 30 pairs."""
    r.sp()
    if r.at(b"NIL"):
        r.pos += 3
        return Id(tag, name, None)
    r.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while r.peek() != 0x29:
        if params:
            r.sp()
        key = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        params.append((key[:30], None if value is None else value.decode("utf-8", "replace")))
        if len(params) > 30:
            raise r.fail("too many ID fields")
    r.expect(b")")
    return Id(tag, name, tuple(params))


# -- SEARCH (RFC 3501 6.4.4) -------------------------------------------------------------


def _search(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    charset = None
    if r.at(b"CHARSET "):
        r.pos += 8
        charset = r.astring().decode("ascii", "replace").upper()
        r.sp()
    keys = [_search_key(r, 0)]
    while r.maybe_sp():
        keys.append(_search_key(r, 0))
    program: SearchProgram = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(tag, name, uid, charset, program)


def _search_key(r: Reader, depth: int) -> SearchProgram:
    if depth > MAX_DEPTH:
        raise r.fail("search program nested too deeply", "LIMIT")
    c = r.peek()
    if c == 0x28:
        r.pos += 1
        keys = [_search_key(r, depth + 1)]
        while r.maybe_sp():
            keys.append(_search_key(r, depth + 1))
        r.expect(b")")
        return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    if c is not None and (0x30 <= c <= 0x39 or c == 0x2A or c == 0x24):
        _count_key(r)
        return SearchKey("SEQUENCE", r.sequence_set())
    op = r.atom().upper()
    if op not in ("NOT", "OR"):
        _count_key(r)
    if op in _SEARCH_FLAG_KEYS:
        return SearchKey(op)
    r.sp()
    if op == "NOT":
        return SearchNot(_search_key(r, depth + 1))
    if op == "OR":
        left = _search_key(r, depth + 1)
        r.sp()
        return SearchOr(left, _search_key(r, depth + 1))
    if op in _SEARCH_STRING_KEYS:
        return SearchKey(op, r.astring())
    if op in _SEARCH_DATE_KEYS:
        return SearchKey(op, r.date())
    if op in ("LARGER", "SMALLER"):
        return SearchKey(op, r.number())
    if op in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(op, r.atom())
    if op == "HEADER":
        field_name = r.astring().decode("ascii", "replace")
        r.sp()
        return SearchKey(op, (field_name, r.astring()))
    if op == "UID":
        return SearchKey(op, r.sequence_set())
    if op == "MODSEQ":
        return grammar_condstore.modseq_key(r)
    if op in ("EMAILID", "THREADID"):  # RFC 8474 6: objectid = 1*255(ALPHA/DIGIT/_/-)
        value = r.atom()
        if not OBJECTID.fullmatch(value):
            raise r.fail(f"invalid {op} object id")
        return SearchKey(op, value)
    raise r.fail(f"unknown search key {op}")


def _count_key(r: Reader) -> None:
    r.search_keys += 1
    if r.search_keys > MAX_SEARCH_KEYS:
        raise r.fail(f"too many search keys ({MAX_SEARCH_KEYS} at most)", "LIMIT")


_PARSERS: dict[str, Any] = {
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
    "EXPUNGE": _expunge,
    "ENABLE": _enable,
    "ID": _id,
}


# RFC 3502/4469/3516/5258: APPEND and LIST of the extensions (grammar_ext.py).
from mailserver.imap import grammar_ext  # noqa: E402 - it uses this module's Reader

_PARSERS.update(grammar_ext.PARSERS)


def flatten(items: Sequence[FetchAtt]) -> tuple[FetchAtt, ...]:
    """Fetch items without duplicates, in order."""
    seen: dict[FetchAtt, None] = {}
    for item in items:
        seen.setdefault(item)
    return tuple(seen)


# Extensions whose grammar has a module of its own: grammar_sort registers its parsers
# in _PARSERS when imported; grammar_quota (COMPRESS, RFC 4978, and QUOTA, RFC 9208)
# lists them in PARSERS.
from mailserver.imap import grammar_quota, grammar_sort  # noqa: E402, F401

_PARSERS.update(grammar_quota.PARSERS)
