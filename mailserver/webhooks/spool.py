"""The webhook spool: data_dir/webhooks/{tmp,pending,failed}/, one file per POST owed.

Like the queue's spool: a record is written to tmp/, fsync'd, renamed into pending/
and the directory fsync'd before `write` returns, so an event the publisher was told
about survives a crash. Any process may write (every worker delivers locally): names
are unique (time in nanoseconds, the pid, a counter), and a rename is atomic. Only the
dispatcher (instance 0) and the operator's commands rewrite or move files.

A name is the record's id, and ids sort by the time they were made: the dispatcher
sends each (hook, message) key's records in that order. A record given up (its day of
retries over, or its URL refused) moves to failed/, where `mailserver webhook list
--failed` shows it and `retry` moves it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mailserver.core.diskio import DirSyncGroup, fsync_dir, write_all
from mailserver.core.ownfiles import Owner, give_fd

PENDING, FAILED = "pending", "failed"


@dataclass
class Record:
    """One POST owed to one hook."""

    id: str
    hook: str
    #: Records with the same key are sent in id order (one message, one hook).
    key: str
    type: str
    created: float
    #: The JSON body's "data" etc.: {id, type, time, data}.
    payload: dict[str, Any]
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    #: Set when given up: why.
    gave_up: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        try:
            data = json.loads(raw)
            record = cls(**data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"not a webhook record: {e}") from None
        if not is_record_id(record.id) or not isinstance(record.payload, dict):
            raise ValueError("not a webhook record: bad id or payload")
        return record


_lock = threading.Lock()
_last = [0]


def new_id() -> str:
    """"msg_" + 16 hex digits of nanoseconds (strictly increasing in this process) +
    the pid + 4 random hex digits: unique across processes, sorted by time."""
    with _lock:
        now = max(time.time_ns(), _last[0] + 1)
        _last[0] = now
    return f"msg_{now:016x}{os.getpid() & 0xFFFFFF:06x}{os.urandom(2).hex()}"


def is_record_id(text: str) -> bool:
    return (len(text) == 30 and text.startswith("msg_")
            and all(c in "0123456789abcdef" for c in text[4:]))


@dataclass
class WebhookSpool:
    root: Path
    #: Whom files we create must belong to (the operator's command run as root).
    owner: Owner | None = None
    dirs: dict[str, Path] = field(init=False)
    #: Directory fsyncs of concurrent writers (a process's disk threads) grouped: one
    #: fsync of pending/ covers every rename that came before it started.
    syncs: DirSyncGroup = field(init=False, default_factory=DirSyncGroup)

    def __post_init__(self) -> None:
        self.dirs = {name: self.root / name for name in ("tmp", PENDING, FAILED)}

    def ensure_dirs(self) -> None:
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- writing (any process) ----------------------------------------------------

    def write(self, records: list[Record]) -> None:
        """Make every record durable in pending/ (blocking: a disk thread)."""
        if not records:
            return
        for record in records:
            self._put(record, PENDING)
        self.syncs.sync(self.dirs[PENDING])

    def _put(self, record: Record, where: str) -> None:
        tmp = self.dirs["tmp"] / f"{record.id}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            give_fd(fd, self.owner)
            write_all(fd, record.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dirs[where] / record.id)

    # -- the dispatcher and the commands ----------------------------------------

    def ids(self, where: str = PENDING) -> list[str]:
        """Record ids in `where`, oldest first."""
        try:
            names = os.listdir(self.dirs[where])
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_record_id(n))

    def load(self, record_id: str, where: str = PENDING) -> Record:
        """FileNotFoundError if gone; ValueError if unreadable."""
        return Record.from_json((self.dirs[where] / record_id).read_bytes())

    def find(self, record_id: str) -> tuple[Record, str] | None:
        for where in (PENDING, FAILED):
            with contextlib.suppress(FileNotFoundError):
                return self.load(record_id, where), where
        return None

    def save(self, record: Record) -> None:
        """Rewrite a pending record (its attempts, next try, last error)."""
        self._put(record, PENDING)

    def done(self, record_ids: list[str]) -> None:
        """Delivered: the records go. Not fsync'd: should a crash undo an unlink, the
        event is sent once more with the same webhook-id, which receivers dedupe."""
        for record_id in record_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dirs[PENDING] / record_id)

    def give_up(self, record: Record, reason: str) -> None:
        """Move to failed/, with the reason, kept for the operator."""
        record.gave_up = reason
        self._put(record, FAILED)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dirs[PENDING] / record.id)
        fsync_dir(self.dirs[FAILED])

    def retry(self, record_id: str, now: float) -> bool:
        """Back from failed/ to pending/, due now, with a fresh day of retries; False if
        there is no such failed record."""
        try:
            record = self.load(record_id, FAILED)
        except FileNotFoundError:
            return False
        record.gave_up = ""
        record.next_try = now
        record.created = now  # the retry period starts again
        self._put(record, PENDING)
        fsync_dir(self.dirs[PENDING])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dirs[FAILED] / record_id)
        return True
