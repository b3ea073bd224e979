"""FETCH responses (RFC 3501 6.4.5, 7.4.2), built in batches.

Flags, sizes, dates and UIDs come from the view's MessageInfo (memory only) and are
built on the reactor; anything from the message itself is built in a disk thread, one
batch of messages per thread hop, reading the cached header block when that is all the
items need (ENVELOPE, BODY[HEADER.FIELDS ...]) and the message file only when a body is
wanted. The session writes each batch as one chunk and waits for the client to read it
before building the next, so FETCH 1:* of a large folder streams in bounded memory.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mailserver.imap import binary, objectid
from mailserver.imap.encode import flag_list, internal_date, literal
from mailserver.imap.grammar import FetchAtt
from mailserver.imap.message import ParsedMessage, header_fields, partial
from mailserver.interfaces import IMailboxView, MessageInfo, StoreError

#: Items answered from MessageInfo alone.
_MEMORY_ITEMS = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "THREADID"})
#: Items answered from the header block alone.
_HEADER_ITEMS = frozenset({"ENVELOPE", "RFC822.HEADER"})
#: Batches: messages per chunk by what is read, and octets of bodies per chunk.
MEMORY_BATCH = 5000
HEADER_BATCH = 1000
BODY_BATCH = 200
BODY_BATCH_OCTETS = 4 * 1024 * 1024


#: Items read from the whole message whose answer is small (no body octets in it).
_STRUCTURE_ITEMS = frozenset({"BODY", "BODYSTRUCTURE", objectid.ITEM})  # RFC 8474


@dataclass(frozen=True)
class FetchPlan:
    items: tuple[FetchAtt, ...]
    needs_header: bool
    needs_message: bool
    #: Some item sends message octets (a section, RFC822...): batches bounded in octets.
    sends_body: bool = True

    @property
    def needs_disk(self) -> bool:
        return self.needs_header or self.needs_message


def plan(items: Sequence[FetchAtt]) -> FetchPlan:
    header = message = body = False
    for att in items:
        if att.name in _MEMORY_ITEMS:
            continue
        if att.name in _HEADER_ITEMS:
            header = True
        elif att.name == "BODY[]" and att.section is not None and not att.section.part \
                and att.section.spec in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            header = True
        else:
            message = True
            body = body or att.name not in _STRUCTURE_ITEMS
    return FetchPlan(tuple(items), header, message, body)


def batches(fetch_plan: FetchPlan, infos: Sequence[MessageInfo],
            indexes: Sequence[int]) -> list[list[int]]:
    """Split the message indexes into chunks sized for one write each."""
    if not fetch_plan.needs_disk:
        limit, octet_limit = MEMORY_BATCH, None
    elif not fetch_plan.needs_message or not fetch_plan.sends_body:
        # BODYSTRUCTURE reads whole messages but answers ~150 octets each (and mostly
        # from the item cache): batched like headers, not like bodies, which would
        # cost a thread hop and a flow-control wait per 200 messages.
        limit, octet_limit = HEADER_BATCH, None
    else:
        limit, octet_limit = BODY_BATCH, BODY_BATCH_OCTETS
    out: list[list[int]] = []
    current: list[int] = []
    octets = 0
    for i in indexes:
        current.append(i)
        if octet_limit is not None:
            octets += infos[i].size
        if len(current) >= limit or (octet_limit is not None and octets >= octet_limit):
            out.append(current)
            current, octets = [], 0
    if current:
        out.append(current)
    return out


class ItemCache:
    """ENVELOPE, BODY, BODYSTRUCTURE and HEADER.FIELDS values of messages, shared by
    every session of the process and bounded in octets.

    A message never changes under its UID while the UIDVALIDITY stays (RFC 3501 2.3.1.1),
    so entries keyed by (user, folder, UIDVALIDITY) and UID never go stale. This is what
    makes a second FETCH BODYSTRUCTURE cheap: the MIME parse is done once. The folder's
    index (store/index.py `items`) keeps the same values on disk, so what falls out of
    here is read back in one query per batch, not parsed again.

    Kept as columns: one dict uid -> value per (folder key, item name), and the least
    recently used *column* goes first when over `max_octets`. Sessions read a batch of a
    column at once, so the lock is taken once per batch (per message, ten sessions'
    threads convoyed on it: a holder preempted by the GIL switch parks every other
    thread), lookups are int-keyed dict gets, and a scan over more folders than fit
    evicts whole columns instead of churning message by message.
    """

    def __init__(self, max_octets: int = 48 * 1024 * 1024) -> None:
        self.max_octets = max_octets
        self.octets = 0
        self._columns: OrderedDict[tuple[Any, ...], _Column] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._columns.clear()
            self.octets = 0

    def column(self, key: tuple[Any, ...]) -> dict[int, bytes] | None:
        """The values of one (folder key, item name), uid -> value; None if none.
        Read it without the lock (dict reads are atomic); write through put_many."""
        with self._lock:
            column = self._columns.get(key)
            if column is None:
                return None
            self._columns.move_to_end(key)
            return column.values

    def get(self, key: tuple[Any, ...], uid: int) -> bytes | None:
        column = self.column(key)
        return None if column is None else column.get(uid)

    def put_many(self, key: tuple[Any, ...], pairs: Iterable[tuple[int, bytes]]) -> None:
        with self._lock:
            column = self._columns.get(key)
            if column is None:
                column = self._columns[key] = _Column()
            self._columns.move_to_end(key)
            values = column.values
            added = 0
            for uid, value in pairs:
                old = values.get(uid)
                values[uid] = value
                added += len(value) + _ENTRY_COST - (0 if old is None else len(old) + _ENTRY_COST)
            column.octets += added
            self.octets += added
            while self.octets > self.max_octets and len(self._columns) > 1:
                _, dropped = self._columns.popitem(last=False)
                self.octets -= dropped.octets
            if self.octets > self.max_octets:  # one column alone too big: start it again
                self.octets -= column.octets
                column.values, column.octets = {}, 0


#: What one cached value costs beyond its octets (dict slot, int key, bytes header).
_ENTRY_COST = 100


class _Column:
    __slots__ = ("values", "octets")

    def __init__(self) -> None:
        self.values: dict[int, bytes] = {}
        self.octets = 0


CACHE = ItemCache()
_CACHED_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", objectid.ITEM})
#: Field names that can be part of a kept item's name (RFC 5322 3.6.8 ftext, bounded).
_KEPT_FIELD = re.compile(r"[!-9;-~]{1,76}")


def item_name(att: FetchAtt) -> str | None:
    """The name under which this item's value is cached (in memory and in the folder's
    index), or None if it is not: ENVELOPE, BODY, BODYSTRUCTURE, and
    BODY[HEADER.FIELDS (...)] / [HEADER.FIELDS.NOT (...)] of the message itself."""
    if att.name in _CACHED_ITEMS:
        return att.name
    section = att.section
    if section is None or section.part or not section.spec.startswith("HEADER.FIELDS"):
        return None
    return fields_item_name(section.spec, section.fields)


def fields_item_name(spec: str, fields: Sequence[str]) -> str | None:
    """"HEADER.FIELDS (DATE FROM)": the answer depends on the set of names only, in any
    case and order (message.header_fields), so every spelling shares one entry."""
    names = sorted({f.upper() for f in fields})
    if len(names) > 32 or not all(_KEPT_FIELD.fullmatch(n) for n in names):
        return None
    return f"{spec} ({' '.join(names)})"


class Kept:
    """The cached values of a batch's messages, item by item: read from the process's
    ItemCache, then the folder's index, in one go per item; what is still missing is
    computed by the caller, added here, and written back to both in one go (save)."""

    def __init__(self, view: IMailboxView, cache_key: tuple[Any, ...] | None,
                 uids: Sequence[int]) -> None:
        self.view = view
        self.cache_key = cache_key
        self.uids = uids
        self._known: dict[str, dict[int, bytes]] = {}
        self._new: dict[str, list[tuple[int, bytes]]] = {}

    def values(self, name: str) -> dict[int, bytes]:
        """uid -> value of item `name` for the batch (loaded on first use)."""
        known = self._known.get(name)
        if known is not None:
            return known
        known = self._known[name] = {}
        if self.cache_key is None:
            return known
        column = CACHE.column((self.cache_key, name))
        if column is not None:
            for uid in self.uids:
                value = column.get(uid)
                if value is not None:
                    known[uid] = value
        if len(known) < len(self.uids):
            stored = self.view.cached_items(name, [u for u in self.uids if u not in known])
            known.update(stored)
            if stored:
                CACHE.put_many((self.cache_key, name), stored.items())
        return known

    def add(self, name: str, uid: int, value: bytes) -> None:
        self.values(name)[uid] = value
        self._new.setdefault(name, []).append((uid, value))

    def save(self) -> None:
        if self.cache_key is None:
            return
        for name, pairs in self._new.items():
            CACHE.put_many((self.cache_key, name), pairs)
            self.view.remember_items(name, pairs)
        self._new = {}


class _Loader:
    """One message's bytes, read at most once and only as far as needed."""

    __slots__ = ("view", "uid", "_header", "_full")

    def __init__(self, view: IMailboxView, uid: int) -> None:
        self.view = view
        self.uid = uid
        self._header: ParsedMessage | None = None
        self._full: ParsedMessage | None = None

    def header(self) -> ParsedMessage:
        if self._full is not None:
            return self._full
        if self._header is None:
            self._header = ParsedMessage.from_header(self.view.header(self.uid))
        return self._header

    def full(self) -> ParsedMessage:
        if self._full is None:
            self._full = ParsedMessage(self.view.read(self.uid))
        return self._full


def build(view: IMailboxView, fetch_plan: FetchPlan, entries: Sequence[tuple[int, MessageInfo]],
          flags_changed: frozenset[int] = frozenset(),
          cache_key: tuple[Any, ...] | None = None,
          extra: dict[int, bytes] | None = None,
          recent: bool = True) -> tuple[bytes, list[int]]:
    """`* n FETCH (...)` lines for (sequence number, info) pairs, and the sequence
    numbers of messages that vanished meanwhile. Blocking when the plan needs the disk.

    `flags_changed`: UIDs whose \\Seen this FETCH set; their FLAGS are added to the
    answer if not asked for (RFC 3501 6.4.5 "the \\Seen flag is set"; 7.4.2).
    `cache_key` (user, folder, UIDVALIDITY) enables the shared ItemCache and the
    folder's index of items. `extra`: uid -> an item rendered by the caller, added
    last (MODSEQ, RFC 7162 3.1.4.1: it lives in the modseq database, not here).
    `recent`: False leaves \\Recent out of FLAGS (IMAP4rev2, RFC 9051).
    """
    out: list[bytes] = []
    missing: list[int] = []
    items = fetch_plan.items
    labels = [att.label().encode("ascii", "replace") for att in items]
    has_flags = any(att.name == "FLAGS" for att in items)
    flags_of = _FlagCache(recent)
    if not fetch_plan.needs_disk:
        # The common sync-client case (UID FLAGS RFC822.SIZE INTERNALDATE): memory only.
        render = [_MEMORY_RENDER[att.name] for att in items]
        for seq, info in entries:
            parts = [r(info, flags_of) for r in render]
            if not has_flags and info.uid in flags_changed:
                parts.append(b"FLAGS " + flags_of(info))
            if extra is not None:
                parts.append(extra[info.uid])
            out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
        return b"".join(out), missing
    names = [item_name(att) for att in items]
    kept = Kept(view, cache_key, [info.uid for _, info in entries])
    for seq, info in entries:
        loader = _Loader(view, info.uid)
        try:
            parts = [_item(att, label, name, info, loader, kept, flags_of)
                     for att, label, name in zip(items, labels, names, strict=True)]
        except StoreError:
            missing.append(seq)
            continue
        if not has_flags and info.uid in flags_changed:
            parts.append(b"FLAGS " + flags_of(info))
        if extra is not None:
            parts.append(extra[info.uid])
        out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
    kept.save()
    return b"".join(out), missing


class _FlagCache:
    """Flag lists as bytes, built once per distinct (flags, recent) in a batch: most
    messages of a folder share a handful of flag combinations."""

    __slots__ = ("_known", "_recent")

    def __init__(self, recent: bool = True) -> None:
        self._known: dict[tuple[frozenset[str], bool], bytes] = {}
        self._recent = recent

    def __call__(self, info: MessageInfo) -> bytes:
        key = (info.flags, info.recent and self._recent)
        value = self._known.get(key)
        if value is None:
            value = self._known[key] = flag_list(sorted(info.flags), key[1])
        return value


_MEMORY_RENDER: dict[str, Callable[[MessageInfo, _FlagCache], bytes]] = {
    "UID": lambda info, flags_of: b"UID %d" % info.uid,
    "FLAGS": lambda info, flags_of: b"FLAGS " + flags_of(info),
    "INTERNALDATE": lambda info, flags_of: b"INTERNALDATE " + internal_date(info.internal_date),
    "RFC822.SIZE": lambda info, flags_of: b"RFC822.SIZE %d" % info.size,
    "THREADID": lambda info, flags_of: b"THREADID NIL",  # RFC 8474 5.2: no threads
}


def _item(att: FetchAtt, label: bytes, kept_name: str | None, info: MessageInfo,
          loader: _Loader, kept: Kept, flags_of: _FlagCache) -> bytes:
    """One item of a FETCH response: its label and its value."""
    name = att.name
    memory = _MEMORY_RENDER.get(name)
    if memory is not None:
        return memory(info, flags_of)
    if name in binary.ITEMS:  # RFC 3516
        return binary.item(att, label, loader.full())
    if kept_name is not None:
        value = kept.values(kept_name).get(info.uid)
        if value is None:
            value = _render(att, loader)
            kept.add(kept_name, info.uid, value)
        data = value
    else:
        data = _render(att, loader)
    if name in _CACHED_ITEMS:
        return label + b" " + data
    if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        return name.encode("ascii") + b" " + literal(data)
    if att.partial is not None:
        data = partial(data, att.partial[0], att.partial[1])
    return label + b" " + literal(data)


def _render(att: FetchAtt, loader: _Loader) -> bytes:
    """An item's value computed from the message (before `partial`, unquoted)."""
    name = att.name
    if name == "ENVELOPE":
        return loader.header().envelope()
    if name in ("BODY", "BODYSTRUCTURE"):
        return loader.full().body_structure(name == "BODYSTRUCTURE")
    if name == objectid.ITEM:
        return objectid.item_value(loader.full().raw)
    if name == "RFC822":
        return loader.full().raw
    if name == "RFC822.HEADER":
        return loader.header().header_block
    if name == "RFC822.TEXT":
        return loader.full().body
    section = att.section
    assert section is not None
    if not section.part and section.spec.startswith("HEADER"):
        if section.spec == "HEADER":
            return loader.header().header_block
        return header_fields(loader.header().header_block, section.fields,
                             section.spec.endswith(".NOT"))
    return loader.full().section(section.part, section.spec, section.fields)
