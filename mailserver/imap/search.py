"""SEARCH (RFC 3501 6.4.4): evaluate a parsed search program over a view's messages.

Runs in a disk thread as a whole: keys on flags, sizes, dates and numbers use the
MessageInfo in memory; header keys read the cached header block (view.header), and
only BODY/TEXT open the message. Each message is read at most once, and only if an
earlier, cheaper key did not already decide it.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable
from typing import Any, cast

from mailserver.imap import objectid
from mailserver.imap.fetch import Kept, fields_item_name
from mailserver.imap.grammar import (
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchProgram,
    SequenceSet,
)
from mailserver.imap.message import ADDRESS_FIELDS, ParsedMessage, header_fields
from mailserver.interfaces import IMailboxView, IModseqView, MessageInfo, StoreError

#: Charsets we can search in (RFC 3501 6.4.4: US-ASCII must be supported).
CHARSETS = ("US-ASCII", "UTF-8")

_FLAG_KEYS: dict[str, Callable[[MessageInfo], bool]] = {
    "ALL": lambda m: True,
    "ANSWERED": lambda m: "\\Answered" in m.flags,
    "DELETED": lambda m: "\\Deleted" in m.flags,
    "DRAFT": lambda m: "\\Draft" in m.flags,
    "FLAGGED": lambda m: "\\Flagged" in m.flags,
    "SEEN": lambda m: "\\Seen" in m.flags,
    "UNANSWERED": lambda m: "\\Answered" not in m.flags,
    "UNDELETED": lambda m: "\\Deleted" not in m.flags,
    "UNDRAFT": lambda m: "\\Draft" not in m.flags,
    "UNFLAGGED": lambda m: "\\Flagged" not in m.flags,
    "UNSEEN": lambda m: "\\Seen" not in m.flags,
    "RECENT": lambda m: m.recent,
    "OLD": lambda m: not m.recent,
    "NEW": lambda m: m.recent and "\\Seen" not in m.flags,
}
#: A field name (RFC 5322 3.6.8 ftext) that header_fields can pick out.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
#: Messages whose cached header fields are read (and written back) in one go.
_BATCH = 1000
_ADDRESS_HEADERS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject",
                    "TO": "to"}


@functools.lru_cache(maxsize=64)
def _plain_needle(needle: bytes) -> bytes | None:
    """The needle in lower case if cannot_contain may judge it (non-empty ASCII without
    white space), else None; per needle, not per message."""
    if not needle or not needle.isascii() or any(c in needle for c in b" \t\r\n"):
        return None
    return needle.lower()


@functools.lru_cache(maxsize=64)
def _field_item(name: str) -> str | None:
    """The cached item holding the lines of field `name` (None: a name header_fields
    cannot pick out); per field name, not per message."""
    if _FIELD_NAME.fullmatch(name) is None:
        return None
    return fields_item_name("HEADER.FIELDS", (name,))


class _Message:
    """One message during evaluation: reads its header or body once, when needed."""

    __slots__ = ("view", "info", "seq", "kept", "_raw_header", "_header", "_full")

    def __init__(self, view: IMailboxView, info: MessageInfo, seq: int,
                 kept: Kept | None = None) -> None:
        self.view = view
        self.info = info
        self.seq = seq
        self.kept = kept
        self._raw_header: bytes | None = None
        self._header: ParsedMessage | None = None
        self._full: ParsedMessage | None = None

    def raw_header(self) -> bytes:
        if self._raw_header is None:
            self._raw_header = self.view.header(self.info.uid)
        return self._raw_header

    def header(self) -> ParsedMessage:
        if self._full is not None:
            return self._full
        if self._header is None:
            self._header = ParsedMessage.from_header(self.raw_header())
        return self._header

    def cannot_contain(self, needle: bytes, raw: bytes | None = None,
                       address: bool = False) -> bool:
        """A cheap test before parsing: an ASCII header without encoded words that does
        not hold the needle anywhere (case-insensitively) cannot match it in any field.
        Only for needles without white space, which folding could split. An address
        field with a comment or quoting may still match in its normal form (header_matches
        finds user@example.org in `<user (comment)@ example.org>`), so it is parsed."""
        lowered = _plain_needle(needle)
        if lowered is None:
            return False
        if raw is None:
            raw = self.raw_header()
        if address and (b"(" in raw or b"\\" in raw or b'"' in raw):
            return False
        return raw.isascii() and b"=?" not in raw and lowered not in raw.lower()

    def field_matches(self, name: str, needle: bytes) -> bool:
        """SEARCH HEADER/SUBJECT/FROM/...: matched against the lines of that one field,
        kept in the shared item cache and the folder's index (the same value as FETCH
        BODY[HEADER.FIELDS (name)]): a client repeating a search, or searching after
        fetching those fields, does not go through every header block again. The field
        lines are all the matching reads (RFC 3501 6.4.4 searches the field's value)."""
        block = self._field_block(name)
        address = name.lower() in ADDRESS_FIELDS
        if block is None:
            if self.cannot_contain(needle, address=address):
                return False
            return self.header().header_matches(name, _text(needle))
        if self.cannot_contain(needle, block, address):
            return False
        return ParsedMessage.from_header(block).header_matches(name, _text(needle))

    def _field_block(self, name: str) -> bytes | None:
        if self.kept is None:
            return None
        item = _field_item(name)
        if item is None:
            return None
        uid = self.info.uid
        block = self.kept.values(item).get(uid)
        if block is None:
            block = header_fields(self.raw_header(), (name,), False)
            self.kept.add(item, uid, block)
        return block

    def full(self) -> ParsedMessage:
        if self._full is None:
            self._full = ParsedMessage(self.view.read(self.info.uid))
        return self._full

    def email_id(self) -> bytes:
        """RFC 8474 EMAILID, as FETCH keeps it (`(Mxxxx)`), computed once per message."""
        uid = self.info.uid
        value = self.kept.values(objectid.ITEM).get(uid) if self.kept is not None else None
        if value is None:
            value = objectid.item_value(self.full().raw)
            if self.kept is not None:
                self.kept.add(objectid.ITEM, uid, value)
        return value


class Evaluator:
    def __init__(self, view: IMailboxView) -> None:
        messages = view.messages
        self.view = view
        self.count = len(messages)
        self.max_uid = messages[-1].uid if messages else 0
        self._ranges: dict[int, list[tuple[int, int]]] = {}
        self._changed: dict[int, dict[int, int]] = {}

    def _modseq_at_least(self, key: SearchKey, uid: int) -> bool:
        """SEARCH MODSEQ n (RFC 7162 3.1.5): modseq >= n, from the modseq index."""
        changed = self._changed.get(id(key))
        if changed is None:
            view = cast(IModseqView, self.view)
            changed = self._changed[id(key)] = view.changed_since(key.value - 1)
        return uid in changed

    def _in_set(self, key: SearchKey, value: int, largest: int) -> bool:
        ranges = self._ranges.get(id(key))
        if ranges is None:
            sequence: SequenceSet = key.value
            ranges = self._ranges[id(key)] = sequence.resolve(largest)
        return any(lo <= value <= hi for lo, hi in ranges)

    def matches(self, program: SearchProgram, m: _Message) -> bool:
        if isinstance(program, SearchAnd):
            return all(self.matches(k, m) for k in program.keys)
        if isinstance(program, SearchOr):
            return self.matches(program.left, m) or self.matches(program.right, m)
        if isinstance(program, SearchNot):
            return not self.matches(program.key, m)
        return self._key(program, m)

    def _key(self, key: SearchKey, m: _Message) -> bool:
        op, info = key.op, m.info
        test = _FLAG_KEYS.get(op)
        if test is not None:
            return test(info)
        if op == "SEQUENCE":
            return self._in_set(key, m.seq, self.count)
        if op == "UID":
            return self._in_set(key, info.uid, self.max_uid)
        if op == "EMAILID":  # RFC 8474 6
            return m.email_id() == b"(%s)" % key.value.encode("ascii")
        if op == "THREADID":
            return False  # every THREADID is NIL (objectid.py)
        if op == "MODSEQ":
            return self._modseq_at_least(key, info.uid)
        if op == "LARGER":
            return bool(info.size > key.value)
        if op == "SMALLER":
            return bool(info.size < key.value)
        if op in ("KEYWORD", "UNKEYWORD"):
            wanted = key.value.lower()
            present = any(f.lower() == wanted for f in info.flags)
            return present if op == "KEYWORD" else not present
        if op in ("BEFORE", "ON", "SINCE"):
            # RFC 3501 6.4.4: the internal date, time and zone disregarded (we use UTC,
            # as INTERNALDATE is sent in UTC).
            day = datetime.datetime.fromtimestamp(info.internal_date, datetime.UTC).date()
            return _compare_date(op, day, key.value)
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            sent = m.header().sent_date()
            return sent is not None and _compare_date(op[4:], sent, key.value)
        if op in _ADDRESS_HEADERS:
            return m.field_matches(_ADDRESS_HEADERS[op], key.value)
        if op == "HEADER":
            name, needle = key.value
            return m.field_matches(name, needle)
        if op == "BODY":
            return m.full().body_contains(_text(key.value))
        if op == "TEXT":
            return m.full().text_contains(_text(key.value))
        raise ValueError(f"unknown search key {op}")  # pragma: no cover - grammar checks


def _compare_date(op: str, day: datetime.date, wanted: datetime.date) -> bool:
    if op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted  # SINCE


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def run_search(view: IMailboxView, program: SearchProgram, uid: bool,
               cache_key: tuple[Any, ...] | None = None) -> list[int]:
    """Sequence numbers (or UIDs) of the matching messages, ascending. Blocking.

    `cache_key` (user, folder, UIDVALIDITY) lets header searches use the shared
    item cache (fetch.CACHE) and the folder's index, a batch of messages at a time."""
    evaluator = Evaluator(view)
    found = []
    messages = list(view.messages)
    for start in range(0, len(messages), _BATCH):
        batch = messages[start:start + _BATCH]
        kept = (Kept(view, cache_key, [info.uid for info in batch])
                if cache_key is not None else None)
        for i, info in enumerate(batch, start):
            m = _Message(view, info, i + 1, kept)
            try:
                hit = evaluator.matches(program, m)
            except StoreError:
                continue  # expunged by another session meanwhile: it matches nothing
            if hit:
                found.append(info.uid if uid else i + 1)
        if kept is not None:
            kept.save()
    return found
