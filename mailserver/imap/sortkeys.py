"""The keys SORT and THREAD order by (RFC 5256, RFC 5957), per message, from the index.

A message's keys are computed once from its header block and kept in the folder's
index as the item SORT_ITEM (store/index.py `items`, decision 0018): a later SORT or
THREAD, in any session or process and after a restart, reads them in one query per
1,000 messages and opens no file. In front of the index sits KEYS, the parsed keys of
recently sorted folders in memory, so a warm SORT of 10,000 messages is a dict lookup
per message and one Python sort.

The stored value is the fields below joined by NUL (no field holds one: subjects and
names are decoded text with control characters turned into spaces, addresses and
message ids are atoms). Change the rendering and bump the item name's version.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailserver.imap.envelope import MISSING_DOMAIN, envelope_fields, parse_addresses
from mailserver.imap.message import decode_header_value
from mailserver.interfaces import IMailboxView, MessageInfo, StoreError

#: The index item holding a message's keys; the suffix is the rendering's version.
SORT_ITEM = "SORTKEYS.2"
#: Messages whose keys are read from (and written to) the index in one go.
BATCH = 1000
#: References kept per message: the last ones (nearest the message) decide its parent;
#: a hostile header of 10,000 ids costs no more than a long real one (RFC 5256 3 step
#: 1.B links each pair, so the work grows with the ids kept).
MAX_REFERENCES = 256
#: Longest subject kept (octets of UTF-8): longer ones sort by their first part.
MAX_SUBJECT = 1024
#: Octets of a Subject value that base_subject reads.
MAX_SUBJECT_INPUT = 8 * 1024
#: Parsed keys kept in memory, over all folders (about 300 octets each).
MAX_KEPT = 150_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"[ \t]+")
_MSG_ID = re.compile(rb"<([^<>\s]+)>")
#: The first References field, folded lines included (one pass, no full header parse).
_REFERENCES = re.compile(rb"\nreferences[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I)
# RFC 5256 2.1 grammar, on a subject already decoded, unfolded, with single spaces.
_TRAILER = re.compile(r"(?:\s*\((?:fwd)\)|\s+)\Z", re.I)
_BLOB = r"\[[^\[\]]*\]\s*"
_REFWD = re.compile(r"(?:" + _BLOB + r")*(?:re|fwd?)\s*(?:" + _BLOB + r")?:\s*", re.I)
_LEADING_BLOB = re.compile(_BLOB)
_FWD_HEADER = "[fwd:"


@dataclass(frozen=True, slots=True)
class Keys:
    """What SORT and THREAD need of one message.

    `subject` is the base subject (RFC 5256 2.1) in UTF-8, upper-cased in ASCII only
    (the i;ascii-casemap collation, RFC 4790 9.2); `reply` says the extraction removed
    a "Re:", "Fwd:" or "(fwd)" (RFC 5256 3 step 5.C). Addresses are the first
    address's local part (RFC 5256 3: "addr-mailbox"), upper-cased likewise; the
    display keys are RFC 5957's, case-folded. `date` is the sent date in seconds UTC,
    None when the Date header is missing or unreadable (the arrival date stands in,
    RFC 5256 2.2)."""

    date: float | None
    subject: bytes
    reply: bool
    from_: bytes
    to: bytes
    cc: bytes
    display_from: str
    display_to: str
    message_id: bytes
    references: tuple[bytes, ...]


def base_subject(raw: bytes | None) -> tuple[str, bool]:
    """RFC 5256 2.1: the base subject of a Subject value, and whether it was a reply or
    forward. Encoded words are decoded (a malformed one stays as written)."""
    if raw is None:
        return "", False
    # Only the start of a huge subject counts: each step below copies the text, so
    # a megabyte of "Re: " would cost minutes (the key keeps MAX_SUBJECT octets anyway).
    text = decode_header_value(raw[:MAX_SUBJECT_INPUT])
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text))  # step 1: WSP runs to one SP
    reply = False
    while True:
        # Step 2: remove subj-trailer ("(fwd)" / WSP), repeatedly.
        while True:
            m = _TRAILER.search(text)
            if m is None or m.start() == len(text):
                break
            if m.group().strip():
                reply = True
            text = text[:m.start()]
        while True:
            before = text
            # Step 3: subj-leader (blobs, "Re:", "Fw:", "Fwd:"), leading WSP.
            text = text.lstrip(" ")
            m = _REFWD.match(text)
            if m is not None:
                text = text[m.end():]
                reply = True
            # Step 4: a leading blob, if something is left after it.
            m = _LEADING_BLOB.match(text)
            if m is not None and text[m.end():].strip():
                text = text[m.end():]
            if text == before:  # step 5: until nothing changes
                break
        # Step 6: "[fwd:" subject "]" wraps a forwarded subject.
        if text[:5].lower() == _FWD_HEADER and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text.strip(" "), reply


#: _first_mailbox answers by header value: a folder repeats its senders and
#: recipients over and over. Bounded; emptied when full.
_MAILBOXES: dict[bytes, tuple[bytes, str]] = {}
_MAILBOXES_MAX = 4096


def _first_mailbox(value: bytes | None) -> tuple[bytes, str]:
    """(addr-mailbox, RFC 5957 display text) of the first address in a header."""
    if value is None:
        return b"", ""
    known = _MAILBOXES.get(value)
    if known is None:
        known = _parse_first_mailbox(value)
        if len(value) < 512:
            if len(_MAILBOXES) >= _MAILBOXES_MAX:
                _MAILBOXES.clear()
            _MAILBOXES[value] = known
    return known


def _parse_first_mailbox(value: bytes) -> tuple[bytes, str]:
    for name, _adl, mailbox, host in parse_addresses(value):
        if mailbox is None:
            continue  # a group's end
        if host is None:  # a group's start: its name stands for it (as in Dovecot)
            text = _CONTROL.sub(" ", decode_header_value(mailbox)).strip()
            return mailbox, text
        display = _CONTROL.sub(" ", decode_header_value(name)).strip() if name else ""
        if not display:  # RFC 5957 2: no display name, the addr-spec
            spec = mailbox if host == MISSING_DOMAIN else mailbox + b"@" + host
            display = spec.decode("utf-8", "replace")
        return mailbox, display
    return b"", ""


def _sent_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
        if parsed is None or parsed[0] < 1 or parsed[0] > 9999:
            return None
        return float(email.utils.mktime_tz(parsed))
    except (ValueError, IndexError, TypeError, OverflowError):
        return None


def message_ids(value: bytes | None) -> list[bytes]:
    """The msg-ids `<...>` in a References or In-Reply-To value (RFC 5322 3.6.4),
    without brackets; anything else in it (comments, phrases, junk) is skipped."""
    if not value:
        return []
    return _MSG_ID.findall(value)


def compute(header: bytes) -> Keys:
    """The keys of one message from its header block."""
    fields = envelope_fields(header)
    subject, reply = base_subject(fields.get(b"subject"))
    from_, display_from = _first_mailbox(fields.get(b"from"))
    to, display_to = _first_mailbox(fields.get(b"to"))
    cc, _ = _first_mailbox(fields.get(b"cc"))
    ids = message_ids(fields.get(b"message-id"))
    # RFC 5256 3 step 1.B: References; without any, the first id of In-Reply-To.
    found = _REFERENCES.search(b"\n" + header)
    references = message_ids(found.group(1)) if found is not None else []
    if not references:
        references = message_ids(fields.get(b"in-reply-to"))[:1]
    return Keys(
        date=_sent_date(fields.get(b"date")),
        subject=subject.encode("utf-8", "replace")[:MAX_SUBJECT].upper(),
        reply=reply,
        from_=from_.upper(), to=to.upper(), cc=cc.upper(),
        display_from=display_from.casefold(), display_to=display_to.casefold(),
        message_id=ids[0] if ids else b"",
        references=tuple(references[-MAX_REFERENCES:]),
    )


def render(keys: Keys) -> bytes:
    """The keys as kept in the index (see the module's docstring)."""
    return b"\0".join((
        b"" if keys.date is None else repr(keys.date).encode(),
        keys.subject, b"1" if keys.reply else b"",
        keys.from_, keys.to, keys.cc,
        keys.display_from.encode("utf-8", "replace"),
        keys.display_to.encode("utf-8", "replace"),
        keys.message_id, b" ".join(keys.references)))


def parse(value: bytes) -> Keys | None:
    """Keys from their index form; None if it is not one (then they are computed)."""
    parts = value.split(b"\0")
    if len(parts) != 10:
        return None
    try:
        date = float(parts[0]) if parts[0] else None
    except ValueError:
        return None
    return Keys(date, parts[1], parts[2] == b"1", parts[3], parts[4], parts[5],
                parts[6].decode("utf-8", "replace"), parts[7].decode("utf-8", "replace"),
                parts[8], tuple(parts[9].split()))


class KeyCache:
    """Parsed keys of recently sorted folders: folder key -> {uid: Keys}, the least
    recently used folder dropped first when over `max_entries`. A UID names one
    message for as long as the UIDVALIDITY in the folder key holds (RFC 3501 2.3.1.1),
    so an entry never goes stale."""

    def __init__(self, max_entries: int = MAX_KEPT) -> None:
        self.max_entries = max_entries
        self.entries = 0
        self._folders: OrderedDict[tuple[Any, ...], dict[int, Keys]] = OrderedDict()
        self._lock = threading.Lock()

    def folder(self, key: tuple[Any, ...]) -> dict[int, Keys]:
        """The folder's keys (a copy: read it without the lock)."""
        with self._lock:
            known = self._folders.get(key)
            if known is None:
                return {}
            self._folders.move_to_end(key)
            return dict(known)

    def add(self, key: tuple[Any, ...], found: dict[int, Keys]) -> None:
        if not found:
            return
        with self._lock:
            known = self._folders.get(key)
            if known is None:
                known = self._folders[key] = {}
            self._folders.move_to_end(key)
            before = len(known)
            known.update(found)
            self.entries += len(known) - before
            while self.entries > self.max_entries and len(self._folders) > 1:
                _, dropped = self._folders.popitem(last=False)
                self.entries -= len(dropped)
            if self.entries > self.max_entries:  # one folder alone too big
                self.entries -= len(known)
                known.clear()

    def clear(self) -> None:
        with self._lock:
            self._folders.clear()
            self.entries = 0


KEYS = KeyCache()


def load(view: IMailboxView, cache_key: tuple[Any, ...] | None,
         infos: Sequence[MessageInfo]) -> dict[int, Keys]:
    """uid -> Keys for these messages: from memory, else the folder's index, else the
    header block (then written back to both). Blocking. A message expunged meanwhile
    by another session is left out."""
    known = KEYS.folder(cache_key) if cache_key is not None else {}
    missing = [info.uid for info in infos if info.uid not in known]
    fresh: dict[int, Keys] = {}
    for start in range(0, len(missing), BATCH):
        uids = missing[start:start + BATCH]
        new: list[tuple[int, bytes]] = []
        for uid, value in view.cached_items(SORT_ITEM, uids).items():
            keys = parse(value)
            if keys is not None:
                fresh[uid] = keys
        for uid in uids:
            if uid in fresh:
                continue
            try:
                header = view.header(uid)
            except StoreError:
                continue
            keys = compute(header)
            fresh[uid] = keys
            new.append((uid, render(keys)))
        if new:
            view.remember_items(SORT_ITEM, new)
    if cache_key is not None:
        KEYS.add(cache_key, fresh)
    known.update(fresh)
    return known
