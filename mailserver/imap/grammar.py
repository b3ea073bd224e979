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

import datetime
import re
from collections.abc import Sequence
from typing import Any

from mailserver.imap import grammar_condstore
from mailserver.imap.commands import (  # the typed commands this module produces
    ATOM_SPECIALS,
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
    SequenceSet,
    Simple,
    Status,
    Store,
    UidExpunge,
)
from mailserver.imap.objectid import OBJECTID

#: Largest nz-number / number (RFC 3501 9: unsigned 32-bit).
MAX_NUMBER = 4294967295
#: Deepest parenthesis nesting we parse in SEARCH (each level is a recursion).
MAX_DEPTH = 32
#: Most search keys (criteria, not counting NOT, OR and parentheses) in one SEARCH.
#: Each is evaluated for every message, so the work is keys x messages; clients send a
#: handful (Thunderbird's quick filter and Roundcube's all-fields search: 4 to 8 per
#: word), and OR chains are already bounded by MAX_DEPTH, but a balanced tree of ORs
#: is not: 100 is ten times what a client sends and 1/100 of what a 64 KiB line holds.
MAX_SEARCH_KEYS = 100
#: A mailbox name longer than this is refused (Dovecot's limit is similar).
MAX_MAILBOX_NAME = 1024
#: The hierarchy delimiter (Maildir++ and Dovecot's default).
DELIMITER = "."
#: RFC 5182 `$`: stands for the saved search result until searchres.resolve replaces it
#: (told apart by identity; the grammar makes no other empty set).
SAVED_RESULT = SequenceSet(())

_ATOM_SPECIALS = ATOM_SPECIALS
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r\n\Z")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
           "DEC")
_DATE_TIME = re.compile(
    r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")


class ParseError(Exception):
    """A syntax error: the session answers `tag BAD <text>` (or `* BAD` without a tag).

    `code` is an optional response code (RFC 5530 CLIENTBUG, TOOBIG, ...).
    """

    def __init__(self, text: str, tag: str | None = None, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.code = code


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


# -- the reader ----------------------------------------------------------------------------


class Reader:
    """A cursor over one framed command (literals inline after their `{n}CRLF`)."""

    def __init__(self, data: bytes, tag: str | None = None) -> None:
        self.data = data
        self.pos = 0
        self.tag = tag
        #: Search keys read so far (MAX_SEARCH_KEYS).
        self.search_keys = 0

    def fail(self, text: str, code: str = "") -> ParseError:
        return ParseError(text, self.tag, code)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at(self, text: bytes) -> bool:
        """Does the input continue with `text` (ASCII case-insensitive)?"""
        return self.data[self.pos:self.pos + len(text)].upper() == text

    def expect(self, text: bytes, what: str | None = None) -> None:
        if not self.at(text):
            raise self.fail(f"expected {what or text.decode()}")
        self.pos += len(text)

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.fail("expected a space")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if self.data[self.pos:] != b"\r\n":
            raise self.fail("unexpected characters at the end of the command")

    def _run(self, extra: frozenset[int] = frozenset(),
             stop: frozenset[int] = frozenset()) -> bytes:
        """A run of atom characters (plus `extra`, minus `stop`)."""
        start = self.pos
        data = self.data
        n = len(data)
        while self.pos < n and (data[self.pos] not in _ATOM_SPECIALS
                                or data[self.pos] in extra) and data[self.pos] not in stop:
            self.pos += 1
        return data[start:self.pos]

    def atom(self) -> str:
        value = self._run()
        if not value:
            raise self.fail("expected an atom")
        return value.decode("ascii", "replace")

    def astring_atom(self) -> bytes:
        """ASTRING-CHAR run: atom characters plus "]" (RFC 3501 9)."""
        return self._run(frozenset(b"]"))

    def number(self, nonzero: bool = False) -> int:
        start = self.pos
        while (c := self.peek()) is not None and 0x30 <= c <= 0x39:
            self.pos += 1
        digits = self.data[start:self.pos]
        if not digits:
            raise self.fail("expected a number")
        if len(digits) > 10 or int(digits) > MAX_NUMBER:
            raise self.fail("number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise self.fail("zero is not a valid number here")
        return value

    def quoted(self) -> bytes:
        """RFC 3501 9 quoted: DQUOTE *QUOTED-CHAR DQUOTE; only \\" and \\\\ escape."""
        self.pos += 1  # the opening quote
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.fail("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise self.fail("bad escape in quoted string")
                c = data[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A):
                raise self.fail("unterminated quoted string")
            out.append(c)

    def literal(self) -> bytes:
        m = re.compile(rb"\{(\d{1,20})(\+?)\}\r\n").match(self.data, self.pos)
        if m is None:
            raise self.fail("bad literal")
        size = int(m.group(1))
        if size > MAX_NUMBER:
            raise self.fail("literal too large", "TOOBIG")
        start = m.end()
        if start + size > len(self.data):  # the framing guarantees this; defensive
            raise self.fail("literal shorter than announced")
        self.pos = start + size
        return self.data[start:self.pos]

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise self.fail("expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        value = self.astring_atom()
        if not value:
            raise self.fail("expected a string or atom")
        return value

    def nstring(self) -> bytes | None:
        if self.at(b"NIL") and not self._atom_continues(3):
            self.pos += 3
            return None
        return self.string()

    def _atom_continues(self, length: int) -> bool:
        nxt = self.data[self.pos + length:self.pos + length + 1]
        return bool(nxt) and nxt[0] not in _ATOM_SPECIALS

    def mailbox(self) -> str:
        return mailbox_name(self.astring(), self)

    def list_mailbox(self) -> str:
        """RFC 3501 9 list-mailbox: list-char run (atom chars, % * ]) or a string."""
        c = self.peek()
        if c in (0x22, 0x7B):
            raw = self.string()
        else:
            raw = self._run(frozenset(b"%*]"))
            if not raw:
                raise self.fail("expected a mailbox pattern")
        return _text(raw, self)

    def flag(self) -> str:
        """RFC 3501 9 flag: "\\" atom (system flag or \\*) or a keyword atom."""
        if self.peek() == 0x5C:
            self.pos += 1
            if self.peek() == 0x2A:
                self.pos += 1
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.expect(b")")
        return tuple(flags)

    def sequence_set(self) -> SequenceSet:
        """RFC 3501 9 sequence-set; `0` and numbers above 2^32-1 are errors."""
        if self.peek() == 0x24:  # RFC 5182 2.1: "$", the saved search result
            self.pos += 1
            return SAVED_RESULT
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            first = self._seq_number()
            last = first
            if self.peek() == 0x3A:
                self.pos += 1
                last = self._seq_number()
            ranges.append((first, last))
            if self.peek() != 0x2C:
                break
            self.pos += 1
        return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.peek() == 0x2A:
            self.pos += 1
            return None
        try:
            return self.number(nonzero=True)
        except ParseError:
            raise self.fail("invalid sequence set") from None

    def date(self) -> datetime.date:
        """RFC 3501 9 date: date-text or DQUOTE date-text DQUOTE (d-Mon-yyyy)."""
        quoted = self.peek() == 0x22
        raw = self.quoted() if quoted else self._run(frozenset())
        m = re.fullmatch(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})", raw)
        if m is None or m.group(2).upper().decode() not in _MONTHS:
            raise self.fail("invalid date")
        try:
            return datetime.date(int(m.group(3)),
                                 _MONTHS.index(m.group(2).upper().decode()) + 1,
                                 int(m.group(1)))
        except ValueError:
            raise self.fail("invalid date") from None


def _text(raw: bytes, reader: Reader) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.fail("mailbox names must be modified UTF-7 (RFC 3501 5.1.3)") from None


def mailbox_name(raw: bytes, reader: Reader | None = None) -> str:
    """An astring as a mailbox name: INBOX in any case is INBOX (RFC 3501 5.1).

    Only the syntax is checked here; which names are valid for the store (no `..`,
    no `/`) is store_name_problem's job, so that LIST patterns are not affected.
    """
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("mailbox names must be modified UTF-7 (RFC 3501 5.1.3)",
                         reader.tag if reader else None) from None
    if "\0" in name:
        raise ParseError("NUL in mailbox name", reader.tag if reader else None)
    head, dot, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        name = "INBOX" + dot + rest
    return name


def store_name_problem(name: str) -> str | None:
    """Why `name` cannot name a folder on disk, or None. The store validates again."""
    if not name:
        return "empty mailbox name"
    if len(name.encode()) > MAX_MAILBOX_NAME:
        return "mailbox name too long"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control characters in mailbox name"
    if "/" in name or "\\" in name:
        return "mailbox names cannot contain / or \\"
    if any(ord(c) > 127 for c in name):
        return "mailbox names must be modified UTF-7 (RFC 3501 5.1.3)"
    parts = name.split(DELIMITER)
    if any(p in ("", ".", "..") for p in parts) or name.startswith("~"):
        return "invalid hierarchy in mailbox name"
    return None


def peek_tag(line: bytes) -> str | None:
    """The tag a (possibly broken) command line starts with, for the BAD reply."""
    m = re.match(rb"([^\x00-\x20(){%*\"\\\]+\x7f]{1,64}) ", line)
    if m is None:
        return None
    try:
        return m.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None


def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """(size, non_synchronizing) if a CRLF-terminated line ends with `{n}` / `{n+}`."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return None
    return int(m.group(1)), bool(m.group(2))


def command_word(line: bytes) -> str:
    """The upper-case command word of a first line (UID's subcommand for UID ...), for
    picking the literal size limit before the command is complete."""
    words = line.split(b" ", 3)
    if len(words) < 2:
        return ""
    word = words[1].rstrip(b"\r\n").upper()
    if word == b"UID" and len(words) > 2:
        word = words[2].rstrip(b"\r\n").upper()
    return word.decode("ascii", "replace")


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
