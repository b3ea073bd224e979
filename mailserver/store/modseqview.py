"""CONDSTORE/QRESYNC (RFC 7162) for a session's view: MailboxView's modseq methods.

Kept apart from view.py (which reads and writes messages); MailboxView inherits these.
Every method blocks (sqlite), so the IMAP session calls them in a disk thread. Each one
records the changes the folder state saw before it answers (store/modseq.py), so a
modseq it gives out always covers what the view shows.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mailserver.interfaces import Changes, MessageInfo, StoreError
from mailserver.store.modseq import ModseqUnavailable, ranges_of, ranges_of_pairs

if TYPE_CHECKING:
    from mailserver.store.folderstate import FolderState

#: UID ranges as (lo, hi) pairs, ascending.
Ranges = list[tuple[int, int]]


def _busy() -> StoreError:
    return StoreError("INUSE", "Mod-sequence database busy; try again")


class ModseqViewMixin:
    """RFC 7162 methods of MailboxView (see interfaces.IModseqView)."""

    state: FolderState
    _uids: list[int]
    messages: list[MessageInfo]
    #: The session enabled CONDSTORE: syncs give flag changes their modseqs.
    condstore = False

    #: UIDs the last STORE (UNCHANGEDSINCE) refused (MODIFIED).
    _modified: list[int]

    def store(self, uids: Sequence[int], mode: str, flags: Sequence[str],
              unchanged_since: int | None = None) -> list[MessageInfo]:
        raise NotImplementedError  # MailboxView's

    def enable_condstore(self) -> int:
        """Start tracking modseqs for this view (and the folder, in this process);
        returns HIGHESTMODSEQ."""
        with self.state.lock:
            self.condstore = True
            try:
                self.state.modseqs.activate(self.state)
            except ModseqUnavailable:
                raise _busy() from None
            return self.state.modseqs.highest

    @property
    def highest_modseq(self) -> int:
        """HIGHESTMODSEQ as of the last recording (SELECT, each sync)."""
        return self.state.modseqs.highest

    def _record(self) -> None:
        """Caller holds the state lock."""
        try:
            self.state.record_modseqs()
        except ModseqUnavailable:
            raise _busy() from None

    def with_modseqs(self, changes: Changes) -> Changes:
        """`changes` with the modseqs of its flag changes (RFC 7162 3.2.4: unsolicited
        FETCH responses carry MODSEQ once CONDSTORE is enabled). Caller holds the lock."""
        if not self.condstore:
            return changes
        self._record()
        if not changes.flags_changed:
            return changes
        uids = sorted(info.uid for info in changes.flags_changed)
        return replace(changes, modseqs=self._modseqs_locked(uids))

    def modseqs_of(self, uids: Sequence[int]) -> dict[int, int]:
        """uid -> modseq of these UIDs (ascending), for FETCH MODSEQ."""
        with self.state.lock:
            self._record()
            return self._modseqs_locked(uids)

    def _modseqs_locked(self, uids: Sequence[int]) -> dict[int, int]:
        try:
            found = self.state.modseqs.of(uids)
        except ModseqUnavailable:
            raise _busy() from None
        # A message the database has no row for yet (another process numbered it a
        # moment ago): the folder's highest modseq is a safe upper bound.
        highest = self.state.modseqs.highest or 1
        return {uid: found.get(uid, highest) for uid in uids}

    def changed_since(self, modseq: int) -> dict[int, int]:
        """uid -> modseq of this view's messages changed after `modseq` (CHANGEDSINCE,
        SEARCH MODSEQ): from the database's modseq index, not a scan of the folder."""
        with self.state.lock:
            self._record()
            try:
                found = self.state.modseqs.changed_since(modseq)
            except ModseqUnavailable:
                raise _busy() from None
        uids = self._uids
        out = {}
        for uid, value in found.items():
            i = bisect.bisect_left(uids, uid)
            if i < len(uids) and uids[i] == uid:
                out[uid] = value
        return out

    def vanished_since(self, modseq: int, known: Ranges | None) -> Ranges:
        """UID ranges expunged after `modseq`, within `known` (the client's known-uids,
        or every UID below UIDNEXT): RFC 7162 3.2.5.1 VANISHED (EARLIER). Where the
        bounded expunge list no longer reaches back, every UID of `known` that this
        view does not hold is named (the RFC allows naming more than were expunged)."""
        with self.state.lock:
            self._record()
            try:
                expunged = self.state.modseqs.vanished_since(modseq)
            except ModseqUnavailable:
                raise _busy() from None
            top = max(self.state.uid_next - 1, 0)
        wanted = known if known is not None else ([(1, top)] if top else [])
        if expunged is None:
            return _missing_from(wanted, self._uids)
        return _intersect(ranges_of_pairs(expunged), ranges_of_pairs(sorted(wanted)))

    def store_unchanged_since(self, uids: Sequence[int], mode: str, flags: Sequence[str],
                              unchanged_since: int) -> tuple[list[MessageInfo], list[int]]:
        """STORE (UNCHANGEDSINCE n) (RFC 7162 3.1.3): the messages whose modseq is above
        `unchanged_since` are left alone and returned second (MODIFIED); the check and
        the store happen under one hold of the folder's lock (MailboxView.store)."""
        self._modified = []
        infos = self.store(uids, mode, flags, unchanged_since)
        return infos, self._modified

    def _unchanged(self, uids: Sequence[int], unchanged_since: int) -> list[int]:
        """Those of `uids` whose modseq is at most `unchanged_since`; the others go to
        `_modified`. Caller holds the state lock."""
        self._record()
        current = self._modseqs_locked(sorted(uids))
        self._modified = [uid for uid in uids if current.get(uid, 0) > unchanged_since]
        refused = set(self._modified)
        return [uid for uid in uids if uid not in refused]

def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _missing_from(wanted: Ranges, present: list[int]) -> Ranges:
    """The UIDs of `wanted` not in `present` (ascending), as ranges."""
    out: Ranges = []
    for lo, hi in ranges_of_pairs(sorted(wanted)):
        start = bisect.bisect_left(present, lo)
        end = bisect.bisect_right(present, hi)
        cursor = lo
        for uid in present[start:end]:
            if uid > cursor:
                out.append((cursor, uid - 1))
            cursor = uid + 1
        if cursor <= hi:
            out.append((cursor, hi))
    return out


__all__ = ["ModseqViewMixin", "ranges_of"]
