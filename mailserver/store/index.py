"""The per-folder cache: header blocks, and sizes/dates of files whose names lack them.

A cache only (CONTRACT.md: deleting it loses nothing): every row is keyed by the
message's base name, which names one immutable file content for good, so a row can
never describe the wrong message, whatever happens to UID lists or flags. The Maildir
is read to fill it, never the other way round.

sqlite3 (stdlib) in WAL mode: readers in other processes never see a torn file,
writers are serialised by sqlite's own locks, and a damaged database is deleted and
started again. Writes are batched (a header FETCH of 100k messages is a few hundred
transactions, not 100k); synchronous=NORMAL, because losing the last batch in a crash
only means reading those files once more. A full batch is written by the process's
index-writer thread (the FETCH or SEARCH that filled it answers meanwhile: on a cold
folder the writes were a fifth of a first FETCH's time), its rows served from memory
until then; flush() and close() still write synchronously.

In cluster mode (several nodes over one shared tree) the database is not beside the
folder but under the node's cache_dir, at the folder's path (store/sharedfs.py):
SQLite's locking does not work over sshfs and most NFS setups.

The database records the UIDVALIDITY of the UID list it was filled under (table
`validity`), and a FolderIndex is bound to the UIDVALIDITY its folder state numbers
with: a database of an older UIDVALIDITY (the folder deleted and made again, a stale
writer in another process) is emptied before use, and a FolderIndex of an older one
reads and writes nothing. So a cache row never outlives its folder's UID space, even
for foreign file names that another folder of the same path may reuse.

Header FETCHes go through `headers(bases)`, which answers a whole run of messages with
one query, so FETCH 1:* (BODY.PEEK[HEADER.FIELDS ...]) on a warm cache opens no file.

Table `items` keeps what IMAP clients ask for again and again, rendered as sent: ENVELOPE,
BODY, BODYSTRUCTURE and the HEADER.FIELDS lists clients fetch or search on, keyed by
(base, item name). It is shared by every session and process and outlives a restart, so
a warm FETCH BODYSTRUCTURE neither re-reads nor re-parses a message (the in-memory
ItemCache of imap/fetch.py is only its front). The rendering may change with the code:
`PRAGMA user_version` records ITEMS_FORMAT, and a database of another format has its
items dropped on open. At most MAX_ITEM_NAMES distinct names are kept per folder (table
`item_names`), so a client asking for ever new field lists cannot grow it without bound.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mailserver.logs import logger
from mailserver.store import sharedfs

log = logger(__name__)

INDEX_FILE = "mailserver-index.db"
#: Pending writes are committed in batches of this many (by the writer thread).
_BATCH = 500
#: Pending rows past which the session's thread writes them itself (writer lagging).
_MAX_PENDING = 8 * _BATCH
#: Headers larger than this are not cached (a header bomb must not bloat the cache).
MAX_CACHED_HEADER = 64 * 1024
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta(base TEXT PRIMARY KEY, size INTEGER, date REAL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS headers(base TEXT PRIMARY KEY, header BLOB) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS validity(value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS items(base TEXT, name TEXT, value BLOB,"
    " PRIMARY KEY (base, name)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS item_names(name TEXT PRIMARY KEY) WITHOUT ROWID",
)
#: The rendering of the rows in `items`; bump it when ENVELOPE, BODYSTRUCTURE or
#: HEADER.FIELDS output changes, and every database drops its old items when opened.
ITEMS_FORMAT = 1
#: Distinct item names (ENVELOPE, BODYSTRUCTURE, HEADER.FIELDS lists...) kept per folder.
MAX_ITEM_NAMES = 24
#: Item values larger than this are not kept (an ENVELOPE of a header bomb).
MAX_ITEM = 64 * 1024


def _stored_validity(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT max(value) FROM validity").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _check_items_format(db: sqlite3.Connection) -> None:
    """Drop items rendered by another version of the code (ITEMS_FORMAT)."""
    if db.execute("PRAGMA user_version").fetchone()[0] == ITEMS_FORMAT:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] != ITEMS_FORMAT:
            db.execute("DELETE FROM items")
            db.execute("DELETE FROM item_names")
            db.execute(f"PRAGMA user_version={ITEMS_FORMAT:d}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class FolderIndex:
    """The cache of one folder; thread-safe (its own lock), opened on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: Beside the folder; in cluster mode under the node's cache_dir (sharedfs.py).
        self.path = sharedfs.cache_path(folder, INDEX_FILE)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._pending_meta: list[tuple[str, int, float]] = []
        self._pending_headers: list[tuple[str, bytes]] = []
        self._pending_items: list[tuple[str, str, bytes]] = []
        #: Item names the database keeps (None: not read yet).
        self._item_names: set[str] | None = None
        #: The UIDVALIDITY this cache serves (0: not known yet, nothing is cached).
        self.validity = 0
        #: The database serves a newer UIDVALIDITY than ours: we use no cache.
        self._stale = False
        #: Handed to the writer thread, not written yet (_spill).
        self._queued = False

    def bind(self, validity: int) -> None:
        """Serve the folder's UID space `validity` (its state calls this once it has
        read the UID list). A rebind to another one drops what is pending."""
        with self._lock:
            if validity == self.validity:
                return
            self._pending_meta, self._pending_headers = [], []
            self._pending_items = []
            self._close()
            self.validity = validity
            self._stale = False

    # ----------------------------------------------------------------- connection

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is not None or self._broken or self._stale or not self.validity:
            return self._db
        if not create and not self.path.exists():
            return None
        if not sharedfs.prepare_cache(self.folder, self.path):
            return None
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=2.0, check_same_thread=False,
                                 isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Thousands of folders may be open: a small page cache each (256 KiB).
            db.execute("PRAGMA cache_size=-256")
            for statement in _SCHEMA:
                db.execute(statement)
            _check_items_format(db)
            self._stale = not self._claim(db)
        except sqlite3.OperationalError:
            if db is not None:
                db.close()
            return None  # busy (another process): this time without the cache
        except sqlite3.DatabaseError as e:
            self._db = db
            self._drop(e)
            return None
        if self._stale:
            db.close()
            return None
        os.chmod(self.path, 0o600)
        self._db = db
        return db

    def _claim(self, db: sqlite3.Connection) -> bool:
        """Make the database serve our UIDVALIDITY: one filled under an older one (or
        before databases recorded it) is emptied first. False if the database belongs
        to a newer UIDVALIDITY than ours: we are the stale one (UIDVALIDITY only grows,
        uidlist.allocate_validity), and must neither read nor write."""
        stored = _stored_validity(db)
        if stored != self.validity:
            db.execute("BEGIN IMMEDIATE")  # the write lock only when there is work
            try:
                stored = _stored_validity(db)
                if stored < self.validity:
                    db.execute("DELETE FROM meta")
                    db.execute("DELETE FROM headers")
                    db.execute("DELETE FROM items")
                    db.execute("DELETE FROM validity")
                    db.execute("INSERT INTO validity VALUES (?)", (self.validity,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return stored <= self.validity

    def _drop(self, error: Exception) -> None:
        """A damaged or unusable cache: delete it; the next use starts a new one."""
        log.warn("index {path} unusable ({error}): rebuilt from the Maildir",
                 path=str(self.path), error=str(error))
        self._item_names = None
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._flush()
            self._close()

    def discard(self) -> None:
        """Close without writing what is pending (it describes a folder that is gone)."""
        with self._lock:
            self._pending_meta, self._pending_headers = [], []
            self._pending_items = []
            self._close()

    def _close(self) -> None:
        self._item_names = None
        if self._db is not None:
            self._db.close()
            self._db = None

    # ----------------------------------------------------------------- meta

    def meta(self, base: str) -> tuple[int, float] | None:
        """(CRLF size, internal date) cached for a file whose name lacks them."""
        if not base.isascii():
            return None
        with self._lock:
            for b, size, date in self._pending_meta:
                if b == base:
                    return size, date
            db = self._connect(create=False)
            if db is None:
                return None
            try:
                row = db.execute("SELECT size, date FROM meta WHERE base=?", (base,)).fetchone()
            except sqlite3.DatabaseError as e:
                self._drop(e)
                return None
        return (int(row[0]), float(row[1])) if row else None

    def put_meta(self, base: str, size: int, date: float) -> None:
        if not base.isascii():
            return  # a foreign name with undecodable bytes: served, just not cached
        with self._lock:
            self._pending_meta.append((base, size, date))
            if len(self._pending_meta) >= _BATCH:
                self._spill()

    # ----------------------------------------------------------------- headers

    def headers(self, bases: Sequence[str]) -> dict[str, bytes]:
        """The cached header blocks of those of `bases` that have one."""
        bases = [b for b in bases if b.isascii()]
        with self._lock:
            wanted = set(bases)
            found = {b: h for b, h in self._pending_headers if b in wanted}
            db = self._connect(create=False)
            if db is None:
                return found
            try:
                for base, header in _rows_for(
                        db, "SELECT base, header FROM headers WHERE base IN ({})", bases):
                    found[base] = bytes(header)
            except sqlite3.DatabaseError as e:
                self._drop(e)
        return found

    def put_header(self, base: str, header: bytes) -> None:
        if len(header) > MAX_CACHED_HEADER or not base.isascii():
            return
        with self._lock:
            self._pending_headers.append((base, header))
            if len(self._pending_headers) >= _BATCH:
                self._spill()

    def forget(self, bases: Sequence[str]) -> None:
        """Drop rows of expunged messages (keeps the cache the size of the folder)."""
        bases = [b for b in bases if b.isascii()]
        if not bases:
            return
        with self._lock:
            self._flush()
            db = self._connect(create=False)
            if db is None:
                return
            try:
                db.execute("BEGIN")
                db.executemany("DELETE FROM headers WHERE base=?", [(b,) for b in bases])
                db.executemany("DELETE FROM meta WHERE base=?", [(b,) for b in bases])
                db.executemany("DELETE FROM items WHERE base=?", [(b,) for b in bases])
                db.execute("COMMIT")
            except sqlite3.OperationalError:
                self._rollback()
            except sqlite3.DatabaseError as e:
                self._drop(e)

    # ----------------------------------------------------------------- items

    def items(self, name: str, bases: Sequence[str]) -> dict[str, bytes]:
        """The kept values of item `name` (e.g. "ENVELOPE") for those of `bases` that
        have one: one query per 900 messages."""
        bases = [b for b in bases if b.isascii()]
        with self._lock:
            wanted = set(bases)
            found = {b: v for n, b, v in self._pending_items if n == name and b in wanted}
            db = self._connect(create=False)
            if db is None:
                return found
            try:
                if not self._has_name(db, name):
                    return found  # nothing kept under it: no query per 900 messages
                for base, value in _rows_for(
                        db, "SELECT base, value FROM items WHERE name=? AND base IN ({})",
                        bases, name):
                    found[base] = bytes(value)
            except sqlite3.DatabaseError as e:
                self._drop(e)
        return found

    def _has_name(self, db: sqlite3.Connection, name: str) -> bool:
        """Whether any row may be kept under item `name`: its first FETCH or SEARCH on a
        cold folder then costs one query of the small `item_names` table instead of
        one per 900 messages. The names are read again when `name` is not among them
        (another process may have added it since)."""
        if self._item_names is not None and name in self._item_names:
            return True
        self._item_names = {n for (n,) in db.execute("SELECT name FROM item_names")}
        return name in self._item_names

    def put_items(self, name: str, values: Sequence[tuple[str, bytes]]) -> None:
        """Keep item `name` of these (base, value) pairs (written in batches)."""
        with self._lock:
            self._pending_items.extend(
                (name, b, v) for b, v in values if len(v) <= MAX_ITEM and b.isascii())
            if len(self._pending_items) >= _BATCH:
                self._spill()

    def _admit_names(self, db: sqlite3.Connection, names: set[str]) -> set[str]:
        """Those of `names` the database may keep: known ones, and new ones while fewer
        than MAX_ITEM_NAMES are known (recorded here, inside the caller's transaction)."""
        if self._item_names is None:
            self._item_names = {n for (n,) in db.execute("SELECT name FROM item_names")}
        known = self._item_names
        for name in sorted(names - known):
            if len(known) >= MAX_ITEM_NAMES:
                break
            db.execute("INSERT OR IGNORE INTO item_names VALUES (?)", (name,))
            known.add(name)
        return names & known

    def flush(self) -> None:
        with self._lock:
            self._queued = False
            self._flush()

    def _spill(self) -> None:
        """A batch is pending (caller holds the lock): hand its write to the writer
        thread, so the FETCH or SEARCH that filled it answers without waiting for
        sqlite, whose write then overlaps the sending (sqlite runs without the GIL).
        The rows stay readable from the pending lists meanwhile. Past _MAX_PENDING
        (the writer lags), the caller writes them itself: memory stays bounded."""
        pending = len(self._pending_meta) + len(self._pending_headers) + len(self._pending_items)
        if pending >= _MAX_PENDING:
            self._queued = False
            self._flush()
        elif not self._queued:
            self._queued = True
            _writer().put(self)

    def _flush(self) -> None:
        if not self._pending_meta and not self._pending_headers and not self._pending_items:
            return
        meta, self._pending_meta = self._pending_meta, []
        headers, self._pending_headers = self._pending_headers, []
        items, self._pending_items = self._pending_items, []
        db = self._connect(create=True)
        if db is None:
            return
        try:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?,?)", meta)
            db.executemany("INSERT OR REPLACE INTO headers VALUES (?,?)", headers)
            if items:
                admitted = self._admit_names(db, {n for n, _, _ in items})
                db.executemany("INSERT OR REPLACE INTO items VALUES (?,?,?)",
                               [(b, n, v) for n, b, v in items if n in admitted])
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            self._item_names = None  # names added in the rolled-back transaction
            self._rollback()  # busy (another process): a cache may skip a write
        except sqlite3.DatabaseError as e:
            self._drop(e)

    def _rollback(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _rows_for(db: sqlite3.Connection, query: str, bases: list[str],
              *params: object) -> Iterator[Any]:
    """The rows of `query` (its `IN ({})` filled with placeholders) for every base, 900
    at a time: SQLite allows at most 999 host parameters in one statement."""
    for start in range(0, len(bases), 900):
        chunk = bases[start:start + 900]
        yield from db.execute(query.format(",".join("?" * len(chunk))), [*params, *chunk])


_queue: queue.SimpleQueue[FolderIndex] | None = None
_queue_lock = threading.Lock()


def _writer() -> queue.SimpleQueue[FolderIndex]:
    """The process's index writer: one thread that flushes the indexes handed to it
    (FolderIndex._spill), started on first use."""
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = queue.SimpleQueue()
            threading.Thread(target=_write_forever, args=(_queue,), name="index-writer",
                             daemon=True).start()
        return _queue


def _write_forever(jobs: queue.SimpleQueue[FolderIndex]) -> None:
    while True:
        index = jobs.get()
        try:
            index.flush()
        except Exception as e:  # noqa: BLE001 - a cache write lost; the thread must live
            log.warn("index {path} not written: {error}", path=str(index.path), error=repr(e))


def wait_for_writer() -> None:
    """Return once the writer has written what was handed to it before (tests)."""
    done = threading.Event()
    marker = FolderIndex(Path("/nonexistent"))
    marker.flush = done.set  # type: ignore[method-assign]
    _writer().put(marker)
    done.wait(30)
