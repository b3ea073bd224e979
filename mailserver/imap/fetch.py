"""FETCH responses (RFC 3501 6.4.5, 7.4.2), built in batches.

Flags, sizes, dates and UIDs come from the view's MessageInfo (memory only) and are
built on the reactor; anything from the message itself is built in a disk thread, one
batch of messages per thread hop, reading the cached header block when that is all the
items need (ENVELOPE, BODY[HEADER.FIELDS ...]) and the message file only when a body is
wanted. The session writes each batch as one chunk and waits for the client to read it
before building the next, so FETCH 1:* of a large folder streams in bounded memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailserver.imap.encode import flag_list, internal_date, literal
from mailserver.imap.grammar import FetchAtt
from mailserver.imap.message import ParsedMessage, header_fields, partial
from mailserver.interfaces import IMailboxView, MessageInfo, StoreError

#: Items answered from MessageInfo alone.
_MEMORY_ITEMS = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"})
#: Items answered from the header block alone.
_HEADER_ITEMS = frozenset({"ENVELOPE", "RFC822.HEADER"})
#: Batches: messages per chunk by what is read, and octets of bodies per chunk.
MEMORY_BATCH = 5000
HEADER_BATCH = 1000
BODY_BATCH = 200
BODY_BATCH_OCTETS = 4 * 1024 * 1024


#: Items read from the whole message whose answer is small (no body octets in it).
_STRUCTURE_ITEMS = frozenset({"BODY", "BODYSTRUCTURE"})


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
    """ENVELOPE, BODY and BODYSTRUCTURE of messages, shared by every session of the
    process and bounded in octets (least recently used out first).

    A message never changes under its UID while the UIDVALIDITY stays (RFC 3501 2.3.1.1),
    so entries keyed by (user, folder, UIDVALIDITY, UID) never go stale. This is what
    makes a second client's FETCH BODYSTRUCTURE cheap: the MIME parse is done once.
    """

    def __init__(self, max_octets: int = 48 * 1024 * 1024) -> None:
        self.max_octets = max_octets
        self.octets = 0
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[Any, ...], value: bytes) -> None:
        cost = len(value) + 100
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.octets -= len(old) + 100
            self._items[key] = value
            self.octets += cost
            while self.octets > self.max_octets and self._items:
                _, dropped = self._items.popitem(last=False)
                self.octets -= len(dropped) + 100


CACHE = ItemCache()
_CACHED_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE"})


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
          cache_key: tuple[Any, ...] | None = None) -> tuple[bytes, list[int]]:
    """`* n FETCH (...)` lines for (sequence number, info) pairs, and the sequence
    numbers of messages that vanished meanwhile. Blocking when the plan needs the disk.

    `flags_changed`: UIDs whose \\Seen this FETCH set; their FLAGS are added to the
    answer if not asked for (RFC 3501 6.4.5 "the \\Seen flag is set"; 7.4.2).
    `cache_key` (user, folder, UIDVALIDITY) enables the shared ItemCache.
    """
    out: list[bytes] = []
    missing: list[int] = []
    items = fetch_plan.items
    labels = [att.label().encode("ascii", "replace") for att in items]
    has_flags = any(att.name == "FLAGS" for att in items)
    flags_of = _FlagCache()
    if not fetch_plan.needs_disk:
        # The common sync-client case (UID FLAGS RFC822.SIZE INTERNALDATE): memory only.
        render = [_MEMORY_RENDER[att.name] for att in items]
        for seq, info in entries:
            parts = [r(info, flags_of) for r in render]
            if not has_flags and info.uid in flags_changed:
                parts.append(b"FLAGS " + flags_of(info))
            out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
        return b"".join(out), missing
    for seq, info in entries:
        loader = _Loader(view, info.uid)
        try:
            parts = [_item(att, label, info, loader, cache_key, flags_of)
                     for att, label in zip(items, labels, strict=True)]
        except StoreError:
            missing.append(seq)
            continue
        if not has_flags and info.uid in flags_changed:
            parts.append(b"FLAGS " + flags_of(info))
        out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
    return b"".join(out), missing


class _FlagCache:
    """Flag lists as bytes, built once per distinct (flags, recent) in a batch: most
    messages of a folder share a handful of flag combinations."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[frozenset[str], bool], bytes] = {}

    def __call__(self, info: MessageInfo) -> bytes:
        key = (info.flags, info.recent)
        value = self._known.get(key)
        if value is None:
            value = self._known[key] = flag_list(sorted(info.flags), info.recent)
        return value


_MEMORY_RENDER: dict[str, Callable[[MessageInfo, _FlagCache], bytes]] = {
    "UID": lambda info, flags_of: b"UID %d" % info.uid,
    "FLAGS": lambda info, flags_of: b"FLAGS " + flags_of(info),
    "INTERNALDATE": lambda info, flags_of: b"INTERNALDATE " + internal_date(info.internal_date),
    "RFC822.SIZE": lambda info, flags_of: b"RFC822.SIZE %d" % info.size,
}


def _item(att: FetchAtt, label: bytes, info: MessageInfo, loader: _Loader,
          cache_key: tuple[Any, ...] | None, flags_of: _FlagCache) -> bytes:
    """One item of a FETCH response: its label and its value."""
    name = att.name
    memory = _MEMORY_RENDER.get(name)
    if memory is not None:
        return memory(info, flags_of)
    if name in _CACHED_ITEMS:
        key = (cache_key, info.uid, name) if cache_key is not None else None
        value = CACHE.get(key) if key is not None else None
        if value is None:
            if name == "ENVELOPE":
                value = loader.header().envelope()
            else:
                value = loader.full().body_structure(name == "BODYSTRUCTURE")
            if key is not None:
                CACHE.put(key, value)
        return label + b" " + value
    if name == "RFC822":
        return b"RFC822 " + literal(loader.full().raw)
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER " + literal(loader.header().header_block)
    if name == "RFC822.TEXT":
        return b"RFC822.TEXT " + literal(loader.full().body)
    section = att.section
    assert section is not None
    if not section.part and section.spec.startswith("HEADER"):
        if section.spec == "HEADER":
            data = loader.header().header_block
        else:
            data = _header_fields(section.spec, section.fields, info.uid, loader, cache_key)
    else:
        data = loader.full().section(section.part, section.spec, section.fields)
    if att.partial is not None:
        data = partial(data, att.partial[0], att.partial[1])
    return label + b" " + literal(data)


def _header_fields(spec: str, fields: tuple[str, ...], uid: int, loader: _Loader,
                   cache_key: tuple[Any, ...] | None) -> bytes:
    """BODY[HEADER.FIELDS (...)] through the shared cache: a client asks for the same
    few fields of every message each time it opens the folder (as Dovecot's cache file
    keeps the fields clients asked for). The value never changes under its UID."""
    key = (cache_key, uid, spec, fields) if cache_key is not None else None
    data = CACHE.get(key) if key is not None else None
    if data is None:
        data = header_fields(loader.header().header_block, fields, spec.endswith(".NOT"))
        if key is not None:
            CACHE.put(key, data)
    return data
