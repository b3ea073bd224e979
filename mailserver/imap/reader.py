"""The lexical layer of the IMAP grammar (RFC 3501 9): Reader, a cursor over one framed
command that reads atoms, astrings, literals, numbers, sequence sets and dates; the
ParseError every refusal is; mailbox names; and the peeks the session makes at a line
before the command is complete (its tag, a literal at its end, its command word).

Kept out of grammar.py (the commands), which had grown past 800 lines; grammar.py
re-exports every name here, and the grammar_*.py modules import them from there.
"""

from __future__ import annotations

import datetime
import re

from mailserver.imap.commands import ATOM_SPECIALS, SequenceSet

#: Largest nz-number / number (RFC 3501 9: unsigned 32-bit).
MAX_NUMBER = 4294967295
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


class ParseError(Exception):
    """A syntax error: the session answers `tag BAD <text>` (or `* BAD` without a tag).

    `code` is an optional response code (RFC 5530 CLIENTBUG, TOOBIG, ...).
    """

    def __init__(self, text: str, tag: str | None = None, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.code = code


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
