"""The queue on disk: data_dir/queue/ (docs/decisions/0006-queue-layout.md).

    tmp/         files being written; anything here after a crash is garbage
    messages/ID  the message, LF line ends, exactly as the session received it
    held/ID      envelope of a committed entry not yet released by its session
    envelopes/ID envelope of a released entry: the scheduler's work list
    corrupt/     envelopes that could not be parsed (kept for the operator)
    flush        trigger file: `mailserver queue flush` creates it, the scheduler
                 retries every deferred recipient and removes it
    lock         flock()ed around every envelope rename, so `queue delete` and the
                 scheduler never race (a deleted entry is never written back)

Every write is temp file -> fsync -> rename -> fsync of the directory (Postfix and
OpenSMTPD do the same). The message is made durable first and the envelope last: the
envelope is the commit point, so a crash leaves either nothing visible or a complete
entry. A message without an envelope is an unfinished commit and is removed on start.

Everything here blocks: callers run it in a disk thread (context.disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailserver.core.diskio import DirSyncGroup, write_all
from mailserver.core.ownfiles import Owner, give_fd, open_nofollow
from mailserver.logs import logger
from mailserver.queue.envelope import QueueEntry, is_queue_id

log = logger(__name__)

#: Directory fsyncs group-committed across the disk threads (core/diskio.py): many
#: envelopes renamed at once into envelopes/ cost about one fsync, not one each.
_dir_sync = DirSyncGroup()


def fsync_dir(path: Path) -> None:
    _dir_sync.sync(path)

FILE_MODE = 0o600
#: An orphaned message file (no envelope) younger than this may belong to a commit in
#: progress in another process; older ones are leftovers of a crash.
ORPHAN_GRACE = 3600.0
#: A held entry older than this lost its session's release (see release_stale_held).
HELD_GRACE = 600.0


class EntryGone(Exception):
    """The entry was deleted (by `mailserver queue delete`) while we worked on it."""


class MessageMissing(ValueError):
    """The envelope is there but its message file is not (removed by hand, a broken
    disk): the entry can never be delivered, so it is set aside, not retried."""


class Spool:
    def __init__(self, queue_dir: Path, owner: Owner | None = None) -> None:
        self.root = queue_dir
        #: Who gets a lock file this process creates (the admin tool as root sets it).
        self.owner = owner
        self.tmp = queue_dir / "tmp"
        self.messages = queue_dir / "messages"
        self.held = queue_dir / "held"
        self.envelopes = queue_dir / "envelopes"
        self.corrupt = queue_dir / "corrupt"
        self.flush_trigger = queue_dir / "flush"
        self.lock_path = queue_dir / "lock"

    def ensure_dirs(self) -> None:
        for d in (self.root, self.tmp, self.messages, self.held, self.envelopes,
                  self.corrupt):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- writing ----------------------------------------------------------------

    def tmp_path(self, queue_id: str, kind: str) -> Path:
        return self.tmp / f"{queue_id}.{kind}.{os.getpid()}"

    def commit(self, entry: QueueEntry, message_tmp: Path) -> None:
        """Make message and envelope durable under held/ (not yet scheduled)."""
        _fsync_file(message_tmp)
        os.rename(message_tmp, self.messages / entry.id)
        fsync_dir(self.messages)
        self._write_atomic(self.held / entry.id, entry.to_json())

    def release(self, queue_id: str) -> None:
        """held/ID -> envelopes/ID: the scheduler may start now.

        Not fsync'd: should the rename be lost in a crash, start-up releases every
        held entry anyway (a session that committed had answered, or was about to).
        """
        with self.locked():
            try:
                os.rename(self.held / queue_id, self.envelopes / queue_id)
            except FileNotFoundError:
                if not (self.envelopes / queue_id).exists():
                    raise
                # Start-up recovery (another thread) released it already: fine.

    def discard(self, queue_id: str) -> None:
        """Remove an entry wherever it is (abort after commit; a finished entry).

        The envelope goes first: a message without one is an unfinished commit,
        never a live entry.
        """
        self.discard_many([queue_id])

    def discard_many(self, queue_ids: Sequence[str]) -> None:
        """discard() for several entries at once: one fsync per directory however many
        there are (the scheduler's group commit of finished entries; one fsync per
        delivered message kept the disk threads busy during a drain,
        bench/results/relay.md).

        The flock is taken per entry, not around the batch: an unlink can wait for the
        file system's journal for milliseconds, and sessions releasing their entries
        wait for the same lock.

        Until the fsync has returned, a crash may bring an envelope back: its message is
        then sent again (at most once more), never lost.
        """
        removed: set[Path] = set()
        for queue_id in queue_ids:
            with self.locked():
                for d in (self.envelopes, self.held):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(d / queue_id)
                        removed.add(d)
        # Durable, so that a delivered entry cannot come back after a crash; and an
        # entry aborted while held (the client got a 4xx) must not come back either,
        # or start-up would release and send a message the client sends again. With
        # nothing removed here, another thread's unlink may still await its fsync.
        for d in sorted(removed) or [self.envelopes]:
            fsync_dir(d)
        for queue_id in queue_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.messages / queue_id)

    def save(self, entry: QueueEntry) -> None:
        """Durably replace the envelope of a released entry (per-recipient state).

        EntryGone if it was deleted meanwhile: the scheduler then drops it.
        """
        tmp = self.tmp_path(entry.id, "env")
        _write_file(tmp, entry.to_json())
        with self.locked():
            target = self.envelopes / entry.id
            if not target.exists():
                os.unlink(tmp)
                raise EntryGone(entry.id)
            os.rename(tmp, target)
        fsync_dir(self.envelopes)

    def delete(self, queue_id: str) -> bool:
        """The operator's delete: safe while the server runs (under the lock)."""
        with self.locked():
            found = False
            for d in (self.envelopes, self.held):
                try:
                    os.unlink(d / queue_id)
                    found = True
                except FileNotFoundError:
                    pass
        if found:
            fsync_dir(self.envelopes)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.messages / queue_id)
        return found

    def _write_atomic(self, target: Path, data: bytes) -> None:
        tmp = self.tmp_path(target.name, "env")
        _write_file(tmp, data)
        os.rename(tmp, target)
        fsync_dir(target.parent)

    # -- reading ----------------------------------------------------------------

    def load(self, queue_id: str) -> QueueEntry:
        """The released entry; EntryGone if deleted, ValueError if unreadable."""
        try:
            raw = (self.envelopes / queue_id).read_bytes()
        except FileNotFoundError:
            raise EntryGone(queue_id) from None
        return QueueEntry.from_json(raw)

    def load_any(self, queue_id: str) -> tuple[QueueEntry, str]:
        """An entry released or held (for the admin tool): (entry, "queued"|"held")."""
        for d, where in ((self.envelopes, "queued"), (self.held, "held")):
            try:
                return QueueEntry.from_json((d / queue_id).read_bytes()), where
            except FileNotFoundError:
                continue
        raise EntryGone(queue_id)

    def read_message(self, queue_id: str) -> bytes:
        try:
            return (self.messages / queue_id).read_bytes()
        except FileNotFoundError:
            raise EntryGone(queue_id) from None

    def read_head(self, queue_id: str, limit: int = 64 * 1024) -> bytes:
        """The first `limit` bytes of the message (enough for its headers)."""
        try:
            with open(self.messages / queue_id, "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            raise EntryGone(queue_id) from None

    def load_for_delivery(self, queue_id: str,
                          inline: int) -> tuple[QueueEntry, int, int, bytes | None]:
        """One disk job before an attempt: the envelope, the message's size and line
        count (its CRLF size is the sum: RFC 1870), and the message itself when it is
        at most `inline` bytes (else it is streamed from the file while sending)."""
        entry = self.load(queue_id)
        size = lines = 0
        blocks = []
        try:
            with open(self.messages / queue_id, "rb") as f:
                while block := f.read(1 << 20):
                    size += len(block)
                    lines += block.count(b"\n")
                    if size <= inline:
                        blocks.append(block)
        except FileNotFoundError:
            if (self.envelopes / queue_id).exists():
                raise MessageMissing(f"message file {queue_id} missing") from None
            raise EntryGone(queue_id) from None
        return entry, size, lines, b"".join(blocks) if size <= inline else None

    def set_aside(self, queue_id: str) -> bool:
        """Move a released envelope that cannot be used to corrupt/ (for the operator);
        False if it is gone already (deleted meanwhile: nothing to keep)."""
        with self.locked():
            try:
                os.rename(self.envelopes / queue_id, self.corrupt / queue_id)
            except FileNotFoundError:
                return False
        fsync_dir(self.envelopes)
        return True

    def ids(self) -> list[str]:
        return sorted(n for n in _names(self.envelopes) if is_queue_id(n))

    def held_ids(self) -> list[str]:
        return sorted(n for n in _names(self.held) if is_queue_id(n))

    def release_stale_held(self, now: float | None = None,
                           grace: float = HELD_GRACE) -> list[str]:
        """Release held entries older than `grace`: their session committed and then
        failed to release them (the rename failed, the worker died). Without this they
        waited for the next restart; a session releases within milliseconds."""
        now = time.time() if now is None else now
        released = []
        for queue_id in self.held_ids():
            try:
                if now - (self.held / queue_id).stat().st_mtime <= grace:
                    continue
                self.release(queue_id)
            except FileNotFoundError:
                continue  # released or deleted meanwhile
            log.warn("queue {id}: committed but never released; scheduling it now",
                     id=queue_id)
            released.append(queue_id)
        return released

    # -- start-up ---------------------------------------------------------------

    def recover(self, now: float | None = None) -> list[QueueEntry]:
        """After a start (or crash): release held entries, drop unfinished writes,
        set aside corrupt envelopes, and return every live entry."""
        now = time.time() if now is None else now
        self.ensure_dirs()
        for name in _names(self.tmp):
            if _writer_alive(name):
                continue  # a session of a running process is writing it right now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp / name)
        for queue_id in self.held_ids():
            log.info("queue {id}: committed before the last stop; scheduling it",
                     id=queue_id)
            with contextlib.suppress(FileNotFoundError):
                self.release(queue_id)
        entries = []
        for queue_id in self.ids():
            try:
                entry = self.load(queue_id)
            except EntryGone:
                continue
            except ValueError as e:
                log.error("queue {id}: unreadable envelope moved to corrupt/: {error}",
                          id=queue_id, error=str(e))
                self.set_aside(queue_id)
                continue
            if not (self.messages / queue_id).exists():
                log.error("queue {id}: message file missing; envelope moved to corrupt/",
                          id=queue_id)
                self.set_aside(queue_id)
                continue
            entries.append(entry)
        live = {e.id for e in entries} | set(self.held_ids())
        for name in _names(self.messages):
            path = self.messages / name
            if name in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > ORPHAN_GRACE:
                    os.unlink(path)
        fsync_dir(self.envelopes)
        return entries

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = open_nofollow(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            give_fd(fd, self.owner)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _writer_alive(name: str) -> bool:
    """Temporary names end in the writer's pid (tmp_path); is that process running?"""
    pid = name.rpartition(".")[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file; on failure (a full disk) nothing is left behind."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a leftover of our own failed attempt (the name has our pid)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
