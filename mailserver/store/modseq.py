"""Mod-sequences of one folder (RFC 7162 CONDSTORE/QRESYNC), kept across processes.

A folder's modseqs live in their own sqlite database next to the UID list
(`mailserver-modseq.db`, WAL): per message (uid, flags as last recorded, modseq), the
folder's HIGHESTMODSEQ, and a bounded list of expunged UID ranges with the modseq of
their expunge (for VANISHED (EARLIER), RFC 7162 3.2.5.1). Every process reads and
writes the same database, serialised by sqlite's write lock (BEGIN IMMEDIATE).

How changes get their modseq: recording compares what the folder state sees on disk
(FolderState.entries: the flags in the file names) with what the database recorded, and
gives every difference one new modseq: a flag change (a row whose flags differ), an
arrival (no row yet), an expunge (a row whose message is gone: the row goes, its UID
goes into `vanished`). Recording is idempotent, so it does not matter which process
notices a change first: ours by STORE, another IMAP process's rename, a POP3 DELE, mutt
or Dovecot's tools on the same Maildir. Only the UIDs the state's change log names since
the last recording are compared (the whole folder only the first time, or when the log
no longer reaches back): a STORE of 100 flags costs 100 row reads, not a folder scan.
A UID in `vanished` is never recorded again (UIDs are not reused, RFC 3501 2.3.1.1), so
a process whose listing lags behind cannot resurrect a message another one expunged.

Recording starts in a process once a client uses CONDSTORE on the folder (`activate`);
changes made meanwhile are found by the first (whole-folder) recording, with modseqs
above any the database gave out before, which is all RFC 7162 asks.

Losing the file loses no mail: a new one starts its HIGHESTMODSEQ at the current time in
microseconds, above any modseq an older database can have given out (it would have had
to record more than a million changes a second since it began), so a client's
CHANGEDSINCE sees every message as changed and resynchronises in full. A database
of another UIDVALIDITY (folder deleted and made again) is emptied before use.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailserver.logs import logger
from mailserver.store import sharedfs

if TYPE_CHECKING:
    from mailserver.store.folderstate import FolderState

log = logger(__name__)

MODSEQ_FILE = "mailserver-modseq.db"
#: Expunged UID ranges kept for VANISHED (EARLIER); past this the older half is
#: forgotten and answered conservatively (every UID the client may know that is gone).
MAX_VANISHED_RANGES = 20_000
#: RFC 7162 3.1.1: mod-sequence values are at most 2^63 - 1.
MAX_MODSEQ = 2**63 - 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS folder(validity INTEGER NOT NULL, highest INTEGER NOT NULL,"
    " vanished_floor INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages(uid INTEGER PRIMARY KEY, flags TEXT NOT NULL,"
    " modseq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_modseq ON messages(modseq)",
    "CREATE TABLE IF NOT EXISTS vanished(lo INTEGER NOT NULL, hi INTEGER NOT NULL,"
    " modseq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vanished_modseq ON vanished(modseq)",
)


class ModseqUnavailable(Exception):
    """The database cannot be used just now (busy for too long, unwritable)."""


def _fresh_highest() -> int:
    """The HIGHESTMODSEQ a new database starts from (see the module docstring)."""
    return time.time_ns() // 1000


def flag_key(flags: frozenset[str], memo: dict[frozenset[str], str]) -> str:
    """The flags as recorded: sorted, space-separated (a folder has few distinct sets)."""
    key = memo.get(flags)
    if key is None:
        key = memo[flags] = " ".join(sorted(flags))
    return key


def ranges_of(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending UIDs -> (lo, hi) runs."""
    out: list[tuple[int, int]] = []
    for uid in uids:
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        elif not out or uid > out[-1][1]:
            out.append((uid, uid))
    return out


class FolderModseqs:
    """The modseq database of one folder; every method is called with the folder
    state's lock held (FolderState.lock), so one connection serves all threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: Beside the folder; in cluster mode under the node's cache_dir (sharedfs.py).
        self.path = sharedfs.cache_path(folder, MODSEQ_FILE)
        self._db: sqlite3.Connection | None = None
        #: Recording runs in this process (a client used CONDSTORE on the folder).
        self.active = False
        #: The state's local change counter and load count when last recorded.
        self._synced = -1
        self._loads = -1
        #: HIGHESTMODSEQ as of the last recording (0: none yet).
        self.highest = 0
        self.validity = 0

    # ----------------------------------------------------------------- connection

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            if not sharedfs.prepare_cache(self.folder, self.path):
                raise ModseqUnavailable(f"{self.folder}: folder gone")
        except OSError as e:
            raise ModseqUnavailable(str(e)) from None
        try:
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False,
                                 isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # FULL, not NORMAL: a modseq given out must survive a power cut (RFC
                # 7162 3.1.2.1: they only grow; a lost commit would hand out again
                # values a client already holds). One fsync per recording.
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA cache_size=-512")
                for statement in _SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as e:
            if not isinstance(e, sqlite3.OperationalError):
                self._drop(e)
            raise ModseqUnavailable(str(e)) from None
        os.chmod(self.path, 0o600)
        self._db = db
        return db

    def _drop(self, error: Exception) -> None:
        """A damaged database: delete it; the next one starts above it (see above)."""
        log.warn("modseq database {path} unusable ({error}): started again",
                 path=str(self.path), error=str(error))
        self.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except OSError:
                pass
        self._synced = -1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def forget(self) -> None:
        """The folder's UID space changed (FolderState._forget_all: the folder may have
        been deleted and made again, with a new database file): record afresh."""
        self._synced = -1
        self.close()

    # ----------------------------------------------------------------- recording

    def activate(self, state: FolderState) -> None:
        self.active = True
        self.record(state)

    def record(self, state: FolderState) -> None:
        """Give every change the state sees since the last recording a new modseq."""
        if not self.active:
            return
        validity = state.numbered_validity or state.validity
        if not validity:
            return  # an empty folder never numbered: nothing to record yet
        if (self._synced == state.modseq and self._loads == state.loads
                and self.validity == validity):
            return
        db = self._connect()
        if self.highest and self._recorded_elsewhere(db):
            # Another process recorded changes since we last looked: list the folder
            # now, so that a HIGHESTMODSEQ we hand out does not cover a change of
            # theirs that our state has not seen yet (its client would never be told).
            state.refresh(force=True)
            validity = state.numbered_validity or state.validity
            db = self._connect()  # the refresh may have found the folder made again
        full = self._synced < 0 or self._loads != state.loads or self.validity != validity
        changed = None if full else state.changes_since(self._synced)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                highest = self._claim(db, validity)
                if self._synced < 0:  # a new or emptied database: every message
                    changed = None
                highest = self._record(db, state, highest, changed)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise ModseqUnavailable(str(e)) from None
        except sqlite3.DatabaseError as e:
            self._drop(e)
            raise ModseqUnavailable(str(e)) from None
        self.highest = highest
        self.validity = validity
        self._synced = state.modseq
        self._loads = state.loads

    def _recorded_elsewhere(self, db: sqlite3.Connection) -> bool:
        try:
            row = db.execute("SELECT highest FROM folder").fetchone()
        except sqlite3.OperationalError:
            return False  # busy: the transaction below waits for it
        return row is not None and int(row[0]) > self.highest

    def _claim(self, db: sqlite3.Connection, validity: int) -> int:
        """HIGHESTMODSEQ of the database, emptied first if it served another
        UIDVALIDITY (its UIDs name other messages)."""
        row = db.execute("SELECT validity, highest FROM folder").fetchone()
        if row is not None and row[0] == validity:
            return int(row[1])
        if row is not None and row[0] > validity:
            raise ModseqUnavailable("the folder has a newer UIDVALIDITY than ours")
        highest = max(_fresh_highest(), int(row[1]) + 1 if row is not None else 0)
        db.execute("DELETE FROM folder")
        db.execute("DELETE FROM messages")
        db.execute("DELETE FROM vanished")
        # Its expunge list is complete only from here on: a client's older modseq (of a
        # lost database) gets the conservative VANISHED (EARLIER) answer, as a trimmed
        # list does (RFC 7162 3.2.5.1), not "nothing vanished".
        db.execute("INSERT INTO folder VALUES (?, ?, ?)", (validity, highest, highest))
        self._synced = -1
        return highest

    def _record(self, db: sqlite3.Connection, state: FolderState, highest: int,
                changed: set[int] | None) -> int:
        entries = state.entries
        if changed is None:
            rows = dict(db.execute("SELECT uid, flags FROM messages"))
            candidates: Iterable[int] = set(entries).union(rows)
        else:
            rows = dict(_rows_for(db, "SELECT uid, flags FROM messages WHERE uid IN ({})",
                                  sorted(changed)))
            candidates = changed
        memo: dict[frozenset[str], str] = {}
        modseq = highest + 1
        upserts: list[tuple[int, str, int]] = []
        fresh: list[tuple[int, str, int]] = []
        gone: list[int] = []
        for uid in candidates:
            entry = entries.get(uid)
            recorded = rows.get(uid)
            if entry is None:
                if recorded is not None:
                    gone.append(uid)
                continue
            key = flag_key(entry.info.flags, memo)
            if recorded is None:
                fresh.append((uid, key, modseq))
            elif recorded != key:
                upserts.append((uid, key, modseq))
        if fresh:
            expunged = _VanishedRanges(db)
            fresh = [row for row in fresh if not expunged.contains(row[0])]
        if not (upserts or fresh or gone):
            return highest
        db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?)", upserts + fresh)
        if gone:
            gone.sort()
            db.executemany("DELETE FROM messages WHERE uid=?", [(u,) for u in gone])
            db.executemany("INSERT INTO vanished VALUES (?, ?, ?)",
                           [(lo, hi, modseq) for lo, hi in ranges_of(gone)])
            self._trim_vanished(db)
        db.execute("UPDATE folder SET highest=?", (modseq,))
        return modseq

    @staticmethod
    def _trim_vanished(db: sqlite3.Connection) -> None:
        """Keep at most MAX_VANISHED_RANGES expunged ranges: forget the older half, and
        remember up to which modseq the list is no longer complete."""
        count = db.execute("SELECT count(*) FROM vanished").fetchone()[0]
        if count <= MAX_VANISHED_RANGES:
            return
        cut = db.execute("SELECT modseq FROM vanished ORDER BY modseq LIMIT 1 OFFSET ?",
                         (count // 2,)).fetchone()[0]
        db.execute("DELETE FROM vanished WHERE modseq < ?", (cut,))
        db.execute("UPDATE folder SET vanished_floor=max(vanished_floor, ?)", (cut - 1,))

    # ----------------------------------------------------------------- reading

    def _read(self, query: str, params: Sequence[object] = ()) -> list[Any]:
        db = self._connect()
        try:
            return db.execute(query, params).fetchall()
        except sqlite3.OperationalError as e:
            raise ModseqUnavailable(str(e)) from None
        except sqlite3.DatabaseError as e:
            self._drop(e)
            raise ModseqUnavailable(str(e)) from None

    def of(self, uids: Sequence[int]) -> dict[int, int]:
        """uid -> modseq for those of `uids` (ascending) that are recorded: one range
        query for a run of UIDs (a FETCH batch), filtered here; IN lists for a few
        UIDs spread over a big folder."""
        if not uids:
            return {}
        if uids[-1] - uids[0] > 4 * len(uids):  # sparse (STORE of 100 in 100,000)
            found: dict[int, int] = {}
            for start in range(0, len(uids), 900):
                chunk = list(uids[start:start + 900])
                found.update(self._read(
                    "SELECT uid, modseq FROM messages WHERE uid IN ({})".format(
                        ",".join("?" * len(chunk))), chunk))
            return found
        wanted = set(uids)
        rows = self._read("SELECT uid, modseq FROM messages WHERE uid BETWEEN ? AND ?",
                          (uids[0], uids[-1]))
        return {uid: modseq for uid, modseq in rows if uid in wanted}

    def changed_since(self, modseq: int) -> dict[int, int]:
        """uid -> modseq of every message changed after `modseq` (the modseq index:
        the cost is the number of changes, not the folder's size)."""
        if modseq >= self.highest:
            return {}
        return dict(self._read("SELECT uid, modseq FROM messages WHERE modseq > ?",
                               (modseq,)))

    def vanished_since(self, modseq: int) -> list[tuple[int, int]] | None:
        """UID ranges expunged after `modseq`; None if the list no longer reaches back
        that far (the caller then names every UID the client may know that is gone)."""
        row = self._read("SELECT vanished_floor FROM folder")
        if row and modseq < row[0][0]:
            return None
        rows = self._read("SELECT lo, hi FROM vanished WHERE modseq > ? ORDER BY lo",
                          (modseq,))
        return [(int(lo), int(hi)) for lo, hi in rows]


class _VanishedRanges:
    """The expunged UID ranges, read once when a recording meets UIDs it has no row for
    (bounded by MAX_VANISHED_RANGES)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        merged = ranges_of_pairs(db.execute("SELECT lo, hi FROM vanished ORDER BY lo"))
        self.los = [lo for lo, _ in merged]
        self.his = [hi for _, hi in merged]

    def contains(self, uid: int) -> bool:
        i = bisect.bisect_right(self.los, uid) - 1
        return i >= 0 and uid <= self.his[i]


def ranges_of_pairs(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges sorted by low end -> merged, non-overlapping ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in pairs:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _rows_for(db: sqlite3.Connection, query: str, uids: list[int]) -> Iterator[tuple[int, str]]:
    """Rows of `query` (its `IN ({})` filled) for every UID, 900 at a time (SQLite's
    limit of host parameters)."""
    for start in range(0, len(uids), 900):
        chunk = uids[start:start + 900]
        yield from db.execute(query.format(",".join("?" * len(chunk))), chunk)
