"""One session's SELECTed or EXAMINEd folder (IMailboxView).

The view holds the messages as its client knows them (sequence number n at index n-1)
and catches up with the shared FolderState at each sync: the state's change log names
the UIDs that changed since the view last looked, so a sync costs the size of the
change, not of the folder. Expunges are reported in ascending order, each sequence
number already lowered by those before it (RFC 3501 7.4.1); with report_expunges False
(during FETCH, STORE, SEARCH) vanished messages stay until a later sync reports them.

\\Recent (RFC 3501 2.3.2) belongs to the view whose sync moved the file from new/ to
cur/; read-only views (EXAMINE) never rename anything, so they claim nothing, but show
the messages still in new/ as \\Recent (RFC 3501 6.3.2: the same output as SELECT).
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from zope.interface import implementer

from mailserver.interfaces import (
    Changes,
    CopyResult,
    IMailboxView,
    IModseqView,
    MessageInfo,
    StoreError,
)
from mailserver.logs import logger
from mailserver.store import quota
from mailserver.store.flags import apply_mode
from mailserver.store.folderstate import Entry, FolderState, to_crlf
from mailserver.store.modseqview import ModseqViewMixin
from mailserver.store.names import flag_letters, with_flags
from mailserver.store.registry import release_state
from mailserver.store.uidlist import locked

if TYPE_CHECKING:
    from mailserver.store.userstore import UserStore

log = logger(__name__)

#: Header blocks fetched from the index per query when a session reads headers in order.
_READ_AHEAD = 256
#: Header blocks a view keeps in memory (read-ahead results not yet asked for).
_HEADER_MEMORY = 2 * _READ_AHEAD
#: Reading a header stops after this much (a header bigger than that is the message).
_HEADER_SCAN_LIMIT = 16 * 1024 * 1024


@implementer(IMailboxView, IModseqView)
class MailboxView(ModseqViewMixin):
    """A session's open folder; every method blocks (call it from a disk thread)."""

    def __init__(self, store: UserStore, name: str, state: FolderState,
                 read_only: bool) -> None:
        self.user_store = store
        self.name = name
        self.state = state
        self.read_only = read_only
        self.messages: list[MessageInfo] = []
        #: The UIDs of `messages`, in step: bisect in C instead of through a key.
        self._uids: list[int] = []
        self._modseq = 0
        self._seen_max = 0
        self._vanished: set[int] = set()
        self._recent: set[int] = set()
        self._headers: dict[int, bytes] = {}
        self._ahead: tuple[int, int] = (0, -1)
        self._closed = False
        with state.lock:
            state.refresh()
            claimed = state.unclaimed() if read_only else state.claim_new()
            self._recent.update(claimed)
            self.messages = list(state.infos)
            self._uids = list(state.uids)
            self._modseq = state.modseq
            if self.messages:
                self._seen_max = self.messages[-1].uid
            if claimed:
                self._mark_recent(claimed)
            self.uid_validity: int = state.validity
            self.uid_next: int = state.uid_next

    # ----------------------------------------------------------------- extras

    @property
    def recent_count(self) -> int:
        """How many messages are \\Recent for this session (SELECT's RECENT)."""
        return sum(1 for uid in self._recent if self._pos(uid) is not None)

    @property
    def keywords(self) -> tuple[str, ...]:
        """Keywords defined in this folder, for the FLAGS response."""
        return self.state.keywords.names

    @property
    def can_create_keywords(self) -> bool:
        """Whether PERMANENTFLAGS may include \\* (a free keyword letter is left)."""
        return not self.state.keywords.full

    @property
    def validity_changed(self) -> bool:
        """The folder's UIDVALIDITY changed under this session (UID list lost, folder
        deleted and created again): its UIDs mean nothing any more, so the session
        should end with `* BYE` (as Dovecot does); check after sync()."""
        return bool(self.state.validity) and self.state.validity != self.uid_validity

    def first_unseen(self) -> int | None:
        """The sequence number of the first message without \\Seen (SELECT's UNSEEN)."""
        for i, info in enumerate(self.messages):
            if "\\Seen" not in info.flags:
                return i + 1
        return None

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of `uid` in this view, or None."""
        i = self._pos(uid)
        return None if i is None else i + 1

    def _pos(self, uid: int) -> int | None:
        uids = self._uids
        i = bisect.bisect_left(uids, uid)
        return i if i < len(uids) and uids[i] == uid else None

    def _mark_recent(self, uids: Sequence[int]) -> None:
        for uid in uids:
            i = self._pos(uid)
            if i is not None and not self.messages[i].recent:
                self.messages[i] = replace(self.messages[i], recent=True)

    # ----------------------------------------------------------------- sync

    def sync(self, report_expunges: bool = True) -> Changes:
        with self.state.lock:
            self.state.refresh()
            claimed = (self.state.unclaimed() if self.read_only
                       else self.state.claim_new())
            return self.with_modseqs(self._catch_up(report_expunges, claimed))

    def _catch_up(self, report_expunges: bool, claimed: Sequence[int]) -> Changes:
        """Bring `messages` up to the state's; caller holds the state lock."""
        state = self.state
        self._recent.update(claimed)
        changed = state.changes_since(self._modseq)
        self._modseq = state.modseq
        msgs = self.messages
        candidates = sorted(changed) if changed is not None else [m.uid for m in msgs]
        flags_changed: list[MessageInfo] = []
        for uid in candidates:
            i = self._pos(uid)
            if i is None:
                continue
            entry = state.entries.get(uid)
            if entry is None:
                self._vanished.add(uid)
            elif entry.info.flags != msgs[i].flags:
                info = replace(entry.info, recent=True) if msgs[i].recent else entry.info
                msgs[i] = info
                if uid not in self._vanished:
                    flags_changed.append(info)
        expunged: tuple[int, ...] = ()
        expunged_uids: tuple[int, ...] = ()
        if report_expunges and self._vanished:
            expunged, expunged_uids = self._drop_vanished()
        start = bisect.bisect_right(state.uids, self._seen_max)
        added = state.infos[start:]
        self._uids.extend(state.uids[start:])
        recent = 0
        for info in added:
            if info.uid in self._recent:
                info = replace(info, recent=True)
                recent += 1
            msgs.append(info)
        if added:
            self._seen_max = added[-1].uid
        self.uid_next = max(self.uid_next, state.uid_next)
        self._headers.clear() if len(self._headers) > _HEADER_MEMORY else None
        return Changes(expunged=expunged, exists=len(msgs) if added else None,
                       flags_changed=tuple(flags_changed), recent=recent,
                       expunged_uids=expunged_uids)

    def _drop_vanished(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Drop the vanished messages: their EXPUNGE sequence numbers and UIDs."""
        positions = sorted(i for i in (self._pos(uid) for uid in self._vanished)
                           if i is not None)
        report = tuple(p + 1 - k for k, p in enumerate(positions))
        gone = self._vanished
        self.messages[:] = [m for m in self.messages if m.uid not in gone]
        self._uids = [m.uid for m in self.messages]
        self._recent -= gone
        for uid in gone:
            self._headers.pop(uid, None)
        self._vanished = set()
        return report, tuple(sorted(gone))

    # ----------------------------------------------------------------- reading

    def check_uid_space(self) -> None:
        """StoreError unless the shared state still numbers with this view's UIDVALIDITY:
        after the folder was deleted and made again, UID n of the state is another
        message than the client's UID n (the session ends at its next sync; this closes
        the window until then). Caller holds the state lock."""
        if self.state.numbered_validity != self.uid_validity:
            raise StoreError("NONEXISTENT", "Mailbox was deleted meanwhile; select it again")

    def _entry(self, uid: int) -> Entry:
        self.check_uid_space()
        entry = self.state.entries.get(uid)
        if entry is None or uid in self._vanished:
            raise StoreError("NONEXISTENT", "Message has been expunged")
        return entry

    def _open_file(self, uid: int) -> tuple[Entry, int]:
        """An open fd of the message file, following renames by other processes."""
        with self.state.lock:
            entry = self._entry(uid)
            path = self.state.path_of(entry)
        for _ in range(3):
            try:
                # O_NOFOLLOW: a symlink planted in the Maildir must not serve
                # /etc/passwd as a message.
                return entry, os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StoreError("SERVERBUG", "Message file is a symbolic link") from None
                if e.errno != errno.ENOENT:
                    raise StoreError("SERVERBUG", f"Cannot read message: {e.strerror}") from None
                with self.state.lock:
                    found = self.state.locate(uid)
                    if found is None:
                        raise StoreError("NONEXISTENT", "Message has been expunged") from None
                    entry, path = found, self.state.path_of(found)
        raise StoreError("NONEXISTENT", "Message keeps moving; try again")

    def read(self, uid: int) -> bytes:
        _, fd = self._open_file(uid)
        try:
            data = _read_fd(fd)
        except OSError as e:
            raise StoreError("SERVERBUG", f"Cannot read message: {e.strerror}") from None
        finally:
            os.close(fd)
        return to_crlf(data)

    def header(self, uid: int) -> bytes:
        # Kept (not popped) after use: a client fetching the same range twice in one
        # session must not fall through to the files (the read-ahead window would
        # otherwise say "already looked" and open every file again).
        cached = self._headers.get(uid)
        if cached is not None:
            return cached
        lo, hi = self._ahead
        if not lo <= uid <= hi:
            self._read_ahead(uid)
            cached = self._headers.get(uid)
            if cached is not None:
                return cached
        entry, fd = self._open_file(uid)
        try:
            header = _header_block(fd)
        except OSError as e:
            raise StoreError("SERVERBUG", f"Cannot read message: {e.strerror}") from None
        finally:
            os.close(fd)
        self.state.index.put_header(entry.base, header)
        self._headers[uid] = header
        return header

    def _read_ahead(self, uid: int) -> None:
        """Load the cached headers of `uid` and the messages after it in one query."""
        with self.state.lock:
            state = self.state
            if state.numbered_validity != self.uid_validity:
                return  # header() then fails in _open_file
            start = bisect.bisect_left(state.uids, uid)
            uids = state.uids[start:start + _READ_AHEAD]
            bases = [state.entries[u].base for u in uids if u in state.entries]
        if not uids:
            return
        self._ahead = (uids[0], uids[-1])
        if len(self._headers) > _HEADER_MEMORY:
            self._headers.clear()
        by_base = dict(zip(bases, uids, strict=False))
        for base, header in state.index.headers(bases).items():
            self._headers[by_base[base]] = header

    def cached_items(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        """The values of FETCH item `name` that the folder's index keeps for `uids`
        (store/index.py `items`): one query for a whole FETCH batch, no file opened."""
        bases = self._bases(uids)
        if not bases:
            return {}
        found = self.state.index.items(name, list(bases))
        return {bases[base]: value for base, value in found.items()}

    def remember_items(self, name: str, values: Sequence[tuple[int, bytes]]) -> None:
        """Keep these (uid, value) of item `name` in the folder's index for every later
        session, in this process or another, and after a restart."""
        bases = {uid: base for base, uid in self._bases([uid for uid, _ in values]).items()}
        self.state.index.put_items(name, [(bases[uid], value) for uid, value in values
                                          if uid in bases])

    def _bases(self, uids: Sequence[int]) -> dict[str, int]:
        """base name -> UID for those of `uids` the state knows; nothing when the state
        numbers with another UIDVALIDITY than this view (its UID n is another message)."""
        with self.state.lock:
            state = self.state
            if state.numbered_validity != self.uid_validity:
                return {}
            entries = state.entries
            return {entry.base: uid for uid in uids
                    if (entry := entries.get(uid)) is not None}

    # ----------------------------------------------------------------- flags

    def store(self, uids: Sequence[int], mode: str, flags: Sequence[str],
              unchanged_since: int | None = None) -> list[MessageInfo]:
        if self.read_only:
            raise StoreError("CANNOT", "Mailbox is read-only")
        state = self.state
        results: list[MessageInfo] = []
        with state.lock:
            self.check_uid_space()
            if unchanged_since is not None:  # RFC 7162 3.1.3, checked under the lock
                uids = self._unchanged(uids, unchanged_since)
            self._define_keywords(mode, flags)
            cur = state.path_str + "/cur"
            memo: dict[tuple[frozenset[str], str], tuple[frozenset[str], str]] = {}
            for uid in uids:
                i = self._pos(uid)
                if i is None or uid in self._vanished:
                    continue
                info = self._store_one(uid, mode, flags, cur, memo)
                if info is None:
                    continue
                if self.messages[i].recent:
                    info = replace(info, recent=True)
                if info != self.messages[i]:
                    self.messages[i] = info
                    results.append(info)
            state.index.flush()
            if self.condstore:
                self._record()
        return results

    def _define_keywords(self, mode: str, flags: Sequence[str]) -> None:
        keywords = self.state.keywords
        keywords.reload()
        if mode != "-" and keywords.letters_of(flags) is None:
            with locked(self.state.uidlist.lock_path):
                keywords.add(flags)

    def _store_one(self, uid: int, mode: str, flags: Sequence[str], cur: str,
                   memo: dict[tuple[frozenset[str], str], tuple[frozenset[str], str]],
                   ) -> MessageInfo | None:
        """Rename one file to its new flags; None if it is gone (expunged elsewhere).

        `memo`: (old flags, old letters) -> (new flags, new letters), for this STORE:
        a folder of 100k messages has a few distinct flag sets, so the flag arithmetic
        runs a few times, not per message (the rename is what STORE costs).
        """
        state = self.state
        folder = state.path_str
        for _ in range(3):
            entry = state.entries.get(uid)
            if entry is None:
                return None
            name = entry.name
            old_letters = flag_letters(name)
            key = (entry.info.flags, old_letters)
            known = memo.get(key)
            if known is None:
                known = memo[key] = self._new_flags(entry.info.flags, old_letters, mode,
                                                    flags)
            new_flags, letters = known
            if new_flags == entry.info.flags:
                return entry.info
            new_name = with_flags(name, letters)
            try:
                os.rename(f"{folder}/{entry.sub}/{name}", f"{cur}/{new_name}")
            except FileNotFoundError:
                state.locate(uid)  # renamed by someone else: look again
                continue
            return state.moved(entry, "cur", new_name, new_flags)
        return None

    def _new_flags(self, old: frozenset[str], old_letters: str, mode: str,
                   flags: Sequence[str]) -> tuple[frozenset[str], str]:
        """The flags and info letters a message with `old` flags gets from this STORE."""
        keywords = self.state.keywords
        new_flags = apply_mode(old, mode, flags)
        if new_flags == old:
            return old, old_letters
        letters = keywords.letters_of(new_flags, keep=old_letters)
        if letters is None:  # a keyword another process removed meanwhile
            keywords.add(new_flags)
            letters = keywords.letters_of(new_flags, keep=old_letters) or ""
        return keywords.flags_of(letters), letters  # keywords as first spelled

    # ----------------------------------------------------------------- expunge

    def expunge(self, uids: Sequence[int] | None = None) -> Changes:
        if self.read_only:
            raise StoreError("CANNOT", "Mailbox is read-only")
        state = self.state
        with state.lock:
            state.refresh()
            self.check_uid_space()
            wanted = set(uids) if uids is not None else None
            removed: list[Entry] = []
            for info in self.messages:
                if wanted is not None and info.uid not in wanted:
                    continue
                entry = state.entries.get(info.uid)
                if entry is not None and "\\Deleted" in entry.info.flags:
                    if self._unlink(entry):
                        removed.append(entry)
            state.forget(e.uid for e in removed)
            state.index.forget([e.base for e in removed])
            quota.change(self.user_store.root, -sum(e.info.size for e in removed), -len(removed))
            claimed = [] if self.read_only else state.claim_new()
            return self.with_modseqs(self._catch_up(True, claimed))

    def _unlink(self, entry: Entry) -> bool:
        for _ in range(3):
            try:
                os.unlink(self.state.path_of(entry))
                return True
            except FileNotFoundError:
                found = self.state.locate(entry.uid)
                if found is None or "\\Deleted" not in found.info.flags:
                    return False
                entry = found
        return False

    # ----------------------------------------------------------------- copy / move

    def copy(self, uids: Sequence[int], dest: str) -> CopyResult:
        return self.user_store.transfer(self, uids, dest, move=False)

    def move(self, uids: Sequence[int], dest: str) -> tuple[CopyResult, Changes]:
        if self.read_only:
            raise StoreError("CANNOT", "Mailbox is read-only")
        result = self.user_store.transfer(self, uids, dest, move=True)
        with self.state.lock:
            self.state.forget(result.source_uids)
            claimed = self.state.claim_new()
            return result, self.with_modseqs(self._catch_up(True, claimed))

    def uid_of_base(self, base: str) -> int | None:
        """The UID `base` has in this view (IMailboxView.uid_of_base)."""
        with self.state.lock:
            if self.state.numbered_validity != self.uid_validity:
                return None
            uid = self.state.uidlist.by_base.get(base)
        if uid is None or self._pos(uid) is None or uid in self._vanished:
            return None
        return uid

    def is_vanished(self, uid: int) -> bool:
        """True if `uid` was expunged elsewhere and not yet reported (read() refuses)."""
        return uid in self._vanished

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state.index.flush()
        release_state(self.state)


def _read_fd(fd: int) -> bytes:
    """The whole file: plain read(2) calls sized by fstat (a file object per message
    costs more than the read itself on a FETCH of 10,000 bodies)."""
    size = os.fstat(fd).st_size
    data = os.read(fd, size + 1)  # +1: see the end of a file that grew (never ours)
    if len(data) <= size:
        return data
    parts = [data]
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _header_block(fd: int) -> bytes:
    """The header block of an open message file, blank line included, CRLF ends."""
    data = b""
    size = 8192
    while True:
        chunk = os.read(fd, size)
        data += chunk
        block = _ended_header(data)
        if block is not None:
            return block
        if not chunk or len(data) >= _HEADER_SCAN_LIMIT:
            return header_block_of(data)  # no body: the whole message is header
        size = min(size * 4, 1 << 20)


def header_block_of(data: bytes) -> bytes:
    """The header block of a whole message as stored, blank line included, CRLF ends
    (all of it when it has no body): what header() reads from its file."""
    block = _ended_header(data)
    if block is not None:
        return block
    return to_crlf(data.replace(b"\r\n", b"\n") if b"\r" in data else data)


def _ended_header(data: bytes) -> bytes | None:
    """The header block in the start of a file, None if `data` holds no end of it."""
    normalized = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    if normalized.startswith(b"\n"):
        return b"\r\n"
    end = normalized.find(b"\n\n")
    return to_crlf(normalized[:end + 2]) if end >= 0 else None
