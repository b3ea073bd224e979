"""IOutboundQueue: how a session (or the scheduler, for a DSN) puts mail in the queue.

Works in every server process: it only writes files. The scheduler (process 0) learns
of a released entry directly when it lives in the same process (`notify`), else through
inotify on queue/envelopes/ (see scheduler.SpoolWatcher).

Memory per transaction is bounded: past SPILL_THRESHOLD the data goes to the temporary
file in disk threads, one job at a time in order (a chain of Deferreds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.core.diskio import DiskExecutor, write_all
from mailserver.interfaces import IOutboundQueue, IQueueTransaction, OutboundEnvelope
from mailserver.logs import logger
from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
from mailserver.queue.spool import Spool
from mailserver.store.delivery import delivery_error

log = logger(__name__)

SPILL_THRESHOLD = 256 * 1024

_OPEN, _COMMITTING, _COMMITTED, _RELEASED, _ABORTED = (
    "open", "committing", "committed", "released", "aborted")


@implementer(IOutboundQueue)
class OutboundQueue:
    def __init__(self, spool: Spool, disk: DiskExecutor,
                 notify: Callable[[str], None] | None = None,
                 spill_threshold: int = SPILL_THRESHOLD) -> None:
        self.spool = spool
        self.disk = disk
        #: Tells an in-process scheduler about a released entry (None in workers).
        self.notify = notify
        self.spill_threshold = spill_threshold

    def begin(self, envelope: OutboundEnvelope) -> QueueTransaction:
        if not envelope.recipients:
            raise ValueError("a queued message needs at least one recipient")
        return QueueTransaction(self, envelope)

    def enqueue(self, envelope: OutboundEnvelope, data: bytes) -> Deferred[str]:
        """Queue a whole message at once and release it (DSNs); fires with the id."""
        txn = self.begin(envelope)
        txn.write(data)
        d = txn.commit()

        def released(queue_id: str) -> Deferred[str]:
            return txn.release_now().addCallback(lambda _: queue_id)

        return d.addCallback(released)


@implementer(IQueueTransaction)
class QueueTransaction:
    def __init__(self, queue: OutboundQueue, envelope: OutboundEnvelope) -> None:
        self.queue = queue
        self.envelope = envelope
        self.id = new_queue_id()
        self.state = _OPEN
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._tmp: Path = queue.spool.tmp_path(self.id, "msg")
        #: The chain of disk jobs appending spilled data, in order.
        self._tail: Deferred[None] = defer.succeed(None)
        self._spill_error: Failure | None = None

    def write(self, data: bytes) -> None:
        if self.state != _OPEN:
            raise RuntimeError(f"write in state {self.state}")
        self._chunks.append(data)
        self._buffered += len(data)
        self._size += len(data)
        if self._buffered >= self.queue.spill_threshold:
            self._spill()

    def _spill(self) -> None:
        block = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0

        def append(_: None) -> Deferred[None]:
            return self.queue.disk.run(_append, self._tmp, block)

        def failed(f: Failure) -> None:
            self._spill_error = self._spill_error or f

        self._tail.addCallback(append).addErrback(failed)

    def commit(self) -> Deferred[str]:
        if self.state != _OPEN:
            return defer.fail(RuntimeError(f"commit in state {self.state}"))
        self.state = _COMMITTING
        block = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        env = self.envelope
        asked = {d.address: d for d in env.dsn}
        recipients = [RecipientState(r) for r in dict.fromkeys(env.recipients)]
        for rcpt in recipients:
            if (asks := asked.get(rcpt.address)) is not None:
                rcpt.notify = list(asks.notify)
                rcpt.orcpt_type, rcpt.orcpt = asks.orcpt_type, asks.orcpt
        entry = QueueEntry(
            id=self.id, sender=env.sender, recipients=recipients,
            smtputf8=env.smtputf8, body_8bit=env.body_8bit, submitter=env.submitter,
            size=self._size, ret=env.ret, envid=env.envid, requiretls=env.requiretls,
        )
        spool = self.queue.spool

        def write_and_commit(_: None) -> None:
            if self._spill_error is not None:
                self._spill_error.raiseException()
            _append(self._tmp, block)
            spool.commit(entry, self._tmp)

        d = self._tail.addCallback(lambda _: self.queue.disk.run(write_and_commit, None))

        def done(_: None) -> str:
            if self.state == _ABORTED:  # aborted while committing: take it back
                self.queue.disk.run(spool.discard, self.id)
            else:
                self.state = _COMMITTED
            return self.id

        def failed(f: Failure) -> Failure:
            self.state = _ABORTED
            log.error("queue {id}: cannot queue the message: {error}", id=self.id,
                      error=f.getErrorMessage())
            self.queue.disk.run(_cleanup, self._tmp, spool, self.id)
            return Failure(delivery_error(f.value or Exception()))

        return d.addCallbacks(done, failed)

    def release(self) -> None:
        self.release_now()

    def release_now(self) -> Deferred[None]:
        if self.state != _COMMITTED:
            return defer.fail(RuntimeError(f"release in state {self.state}"))
        self.state = _RELEASED
        d = self.queue.disk.run(self.queue.spool.release, self.id)

        def released(_: None) -> None:
            log.info("queue {id}: from=<{sender}>, size={size}, nrcpt={n} (queue active)",
                     id=self.id, sender=self.envelope.sender, size=self._size,
                     n=len(self.envelope.recipients))
            if self.queue.notify is not None:
                self.queue.notify(self.id)

        def failed(f: Failure) -> None:
            # Still in held/: the next start releases it (nothing is lost).
            log.error("queue {id}: release failed ({error}); sent after the next restart",
                      id=self.id, error=f.getErrorMessage())

        return d.addCallbacks(released, failed)

    def abort(self) -> None:
        state, self.state = self.state, _ABORTED
        if state == _OPEN:
            self._chunks = []
            self._tail.addCallback(
                lambda _: self.queue.disk.run(_cleanup, self._tmp, None, self.id))
        elif state == _COMMITTED:
            self.queue.disk.run(self.queue.spool.discard, self.id)
        # _COMMITTING: `done` discards once the commit has finished.
        # _RELEASED: too late; the scheduler owns it (the interface allows this no-op).


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _cleanup(tmp: Path, spool: Spool | None, queue_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if spool is not None:
        spool.discard(queue_id)
