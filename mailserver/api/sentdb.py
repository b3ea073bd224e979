"""What the API remembers about the messages it sent: idempotency keys, which user sent
which queue id, and each recipient's last state. One SQLite file per data_dir
(data_dir/api/sent.sqlite, WAL), shared by every process of the server.

Why SQLite: the three needs are small keyed tables read and written by several
processes at once (worker processes each serve the API), and "insert this key unless
it exists" must be atomic across them; SQLite's primary keys and busy timeout give that
with no daemon (the abuse table, decision 0012, chose the same for the same reason).

Durability, per table (RFC-free, our own contract):
- idempotency: a key is claimed before the message is submitted, and its answer is
  written with synchronous=FULL (the WAL is fsync'd at that commit, and with it every
  earlier frame: the claim too) before the client is answered. So a key whose message
  was acknowledged is never sent again, even after a power loss. A key whose request
  died between the two ("pending", older than STALE seconds) is taken over by the next
  request with it: that client was never told its message went, so sending it may at
  worst duplicate one the client could not know about. The claim itself is committed
  with synchronous=NORMAL (atomic across processes, kept through a process crash, not
  fsync'd): a pending claim lost in a power loss ends as one that survived it would,
  the next request with the key sends (at once instead of after STALE), and a keyed
  send waits for one fsync instead of two.
- sent and recipients: synchronous=NORMAL; a process crash loses nothing (SQLite's WAL
  is in the file system), a power loss may lose the last states, and GET
  /api/v1/queue/ID then answers what the queue's files still say. Kept 30 days.

Every method blocks (disk, locks): call them through the disk threads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How long an idempotency key is remembered (as the hosted services do: 24 h).
KEY_LIFETIME = 24 * 3600
#: A "pending" key older than this belonged to a request that died.
STALE = 300
#: How long sent messages and their recipients' states are kept.
STATE_LIFETIME = 30 * 24 * 3600
#: Forget old rows every this many writes (cheap DELETEs on indexed times).
PURGE_EVERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    user TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL,
    answer TEXT, created REAL NOT NULL, PRIMARY KEY (user, key));
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
CREATE TABLE IF NOT EXISTS sent (
    queue_id TEXT PRIMARY KEY, user TEXT NOT NULL, message_id TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sent_created ON sent (created);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL, address TEXT NOT NULL, state TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '', diagnostic TEXT NOT NULL DEFAULT '',
    remote TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL, PRIMARY KEY (queue_id, address));
"""


#: (queue_id, user, message_id, [(recipient, state)]): one message record_sent keeps.
SentRecord = tuple[str, str, str, list[tuple[str, str]]]
#: (user, idempotency key, the answer to repeat): what `answered` keeps.
KeyAnswer = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    """What `claim` found: ours to send (answer None, mine True), a finished answer to
    repeat, another body under the key (conflict), or one still being sent (busy)."""

    mine: bool = False
    answer: dict[str, Any] | None = None
    conflict: bool = False
    busy: bool = False


@dataclass(frozen=True)
class RecordedState:
    address: str
    state: str
    status: str
    diagnostic: str
    remote: str
    attempts: int
    updated: float


class SentDb:
    """data_dir/api/sent.sqlite; one connection per thread (sqlite3 objects are not
    shared between threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._writes = 0
        #: This process's writers take turns here before BEGIN IMMEDIATE. SQLite's own
        #: busy handler sleeps 1, 2, 5, 10 ... ms between retries of a held lock, so
        #: the disk threads of one process contending for it (10 API clients: 10 record
        #: writes at once) each lost milliseconds asleep while the lock was already
        #: free; a Python lock hands it over at once. Other processes still meet
        #: SQLite's lock and its busy timeout, as before.
        self._write_lock = threading.Lock()

    def _db(self, durable: bool = True) -> sqlite3.Connection:
        """This thread's connection: synchronous=FULL (`durable`) or NORMAL."""
        name = "full" if durable else "normal"
        db: sqlite3.Connection | None = getattr(self._local, name, None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={name.upper()}")
            db.executescript(_SCHEMA)
            os.chmod(self.path, 0o600)
            setattr(self._local, name, db)
        return db

    # -- idempotency ----------------------------------------------------------------

    def claim(self, user: str, key: str, digest: str, now: float | None = None) -> Claim:
        """Take `key` for this request, atomically across processes (not fsync'd:
        `answered` makes it durable, module docstring)."""
        now = time.time() if now is None else now
        db = self._db(durable=False)
        with self._write_lock, _transaction(db):
            row = db.execute("SELECT digest, answer, created FROM idempotency WHERE "
                             "user = ? AND key = ?", (user, key)).fetchone()
            if row is not None and row[2] < now - KEY_LIFETIME:
                db.execute("DELETE FROM idempotency WHERE user = ? AND key = ?",
                           (user, key))
                row = None
            if row is None:
                db.execute("INSERT INTO idempotency (user, key, digest, answer, created) "
                           "VALUES (?, ?, ?, NULL, ?)", (user, key, digest, now))
                return Claim(mine=True)
            stored_digest, answer, created = row
            if stored_digest != digest:
                return Claim(conflict=True)
            if answer is not None:
                return Claim(answer=json.loads(answer))
            if created < now - STALE:
                db.execute("UPDATE idempotency SET created = ? WHERE user = ? AND key = ?",
                           (now, user, key))
                return Claim(mine=True)
            return Claim(busy=True)

    def answered(self, user: str, key: str, answer: dict[str, Any]) -> None:
        """The answer to repeat for `key`; durable when this returns."""
        db = self._db()
        with self._write_lock, _transaction(db):
            db.execute("UPDATE idempotency SET answer = ? WHERE user = ? AND key = ?",
                       (json.dumps(answer), user, key))

    def release(self, user: str, key: str) -> None:
        """The request was refused: nothing was sent, the key may be used again."""
        db = self._db()
        with self._write_lock, _transaction(db):
            db.execute("DELETE FROM idempotency WHERE user = ? AND key = ? AND answer IS "
                       "NULL", (user, key))

    # -- sent messages and recipients' states -----------------------------------------

    def record_sent(self, queue_id: str, user: str, message_id: str,
                    recipients: list[tuple[str, str]], now: float | None = None) -> None:
        """A message the API submitted, with its recipients' first states."""
        self.record_sent_many([(queue_id, user, message_id, recipients)], now)

    def record_sent_many(self, sent: list[SentRecord], now: float | None = None,
                         answers: list[KeyAnswer] | None = None) -> None:
        """Several record_sent in one transaction (api/sentrecorder.py's group commit:
        one WAL append for all the requests that finished meanwhile), and with them the
        `answered` of keyed requests: then the commit is durable (synchronous=FULL),
        as `answered` alone is."""
        now = time.time() if now is None else now
        db = self._db(durable=bool(answers))
        with self._write_lock, _transaction(db):
            db.executemany("INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?)",
                           [(q, user, m, now) for q, user, m, _ in sent])
            db.executemany(
                "INSERT OR IGNORE INTO recipients (queue_id, address, state, updated) "
                "VALUES (?, ?, ?, ?)",
                [(q, a, s, now) for q, _, _, rcpts in sent for a, s in rcpts])
            db.executemany("UPDATE idempotency SET answer = ? WHERE user = ? AND key = ?",
                           [(json.dumps(answer), user, key)
                            for user, key, answer in answers or ()])
        self._maybe_purge(db, now)

    def record_states(self, rows: list[RecordedState], queue_ids: list[str]) -> None:
        """The latest state of recipients of messages the API sent (others ignored)."""
        db = self._db()
        # Most events are of messages the API did not send (every SMTP submission's
        # local "delivered"): a plain read (WAL: it never waits for a writer) finds
        # that, and no write lock is taken for them. Known ones are looked up again
        # under the lock, as before.
        if not self._known(db, queue_ids):
            return
        with self._write_lock, _transaction(db):
            known = self._known(db, queue_ids)
            db.executemany(
                "INSERT INTO recipients (queue_id, address, state, status, diagnostic, "
                "remote, attempts, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (queue_id, address) DO UPDATE SET state = excluded.state, "
                "status = excluded.status, diagnostic = excluded.diagnostic, "
                "remote = excluded.remote, attempts = excluded.attempts, "
                "updated = excluded.updated WHERE excluded.updated >= recipients.updated",
                [(q, r.address, r.state, r.status, r.diagnostic, r.remote, r.attempts,
                  r.updated) for q, r in zip(queue_ids, rows, strict=True) if q in known])

    @staticmethod
    def _known(db: sqlite3.Connection, queue_ids: list[str]) -> set[str]:
        """Those of `queue_ids` the API sent."""
        return {q for q in set(queue_ids) if db.execute(
            "SELECT 1 FROM sent WHERE queue_id = ?", (q,)).fetchone()}

    def sent_by(self, queue_id: str) -> tuple[str, str] | None:
        """(user, message_id) of a message the API sent, None if unknown."""
        row = self._db().execute("SELECT user, message_id FROM sent WHERE queue_id = ?",
                                 (queue_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def states(self, queue_id: str) -> list[RecordedState]:
        rows = self._db().execute(
            "SELECT address, state, status, diagnostic, remote, attempts, updated FROM "
            "recipients WHERE queue_id = ? ORDER BY rowid", (queue_id,)).fetchall()
        return [RecordedState(*row) for row in rows]

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % PURGE_EVERY:
            return
        with self._write_lock, _transaction(db):
            db.execute("DELETE FROM idempotency WHERE created < ?", (now - KEY_LIFETIME,))
            old = now - STATE_LIFETIME
            db.execute("DELETE FROM recipients WHERE queue_id IN (SELECT queue_id FROM "
                       "sent WHERE created < ?)", (old,))
            db.execute("DELETE FROM sent WHERE created < ?", (old,))


class _transaction:  # noqa: N801 - used as a statement keyword
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken at once,
    so two processes claiming one key serialise instead of both reading "absent"."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


_OPEN: dict[Path, SentDb] = {}
_OPEN_LOCK = threading.Lock()


def sent_db(data_dir: Path) -> SentDb:
    """The process's SentDb of `data_dir` (one per path: a reload keeps it)."""
    path = data_dir / "api" / "sent.sqlite"
    with _OPEN_LOCK:
        db = _OPEN.get(path)
        if db is None:
            db = _OPEN[path] = SentDb(path)
        return db
