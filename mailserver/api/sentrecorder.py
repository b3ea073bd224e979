"""Group commit of what POST /api/v1/send records after each message (api/sentdb.py
record_sent: the queue id, its user, its recipients' first states), on a thread of its
own (and, through `call`, the idempotency keys' writes).

Why: the record must be in SQLite before the answer goes out (the client may ask GET
/api/v1/queue/ID at once, and a process crash must not lose it), so every send waited
for one more job. On the shared disk threads that job queued behind other messages'
fsyncs, and each was its own BEGIN IMMEDIATE ... COMMIT: bench/api_send.py measured
the send path 12 % faster without it (bench/results/api.md, 2026-12-07). Here the
records of all requests that finish while a write is running go in the next single
transaction, written by one thread that does nothing else; each request's Deferred
fires once its row is committed, so the ordering "recorded, then answered" holds.
For a queued message the record is written before the router releases the queue copy
(api/submit.py, interfaces.IQueueReleaseStep), so the queue's first event finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.api.sentdb import KeyAnswer, SentDb, SentRecord
from mailserver.core.jobthreads import JobThreads

#: Runs a blocking function off the reactor: fn, *args -> Deferred of its result.
Runner = Callable[..., "Deferred[Any]"]


class SentRecorder:
    """One per SentDb and process (`recorder_for`); used on the reactor thread only."""

    def __init__(self, db: SentDb, run: Runner | None = None) -> None:
        self.db = db
        self._run = run
        self._pending: list[tuple[SentRecord, KeyAnswer | None, Deferred[None]]] = []
        self._writing = False

    def record(self, queue_id: str, user: str, message_id: str,
               recipients: list[tuple[str, str]], answer: KeyAnswer | None = None
               ) -> Deferred[None]:
        """Fires once the message's record is committed (errback: the write failed);
        with `answer`, a keyed request's answer too, in the same durable commit (one
        write, not two, before the client hears anything)."""
        d: Deferred[None] = Deferred()
        self._pending.append(((queue_id, user, message_id, recipients), answer, d))
        if not self._writing:
            self._write()
        return d

    def call(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Another write of this SentDb (an idempotency key's claim, answer or release)
        on the same thread: not queued behind the disk threads' fsyncs either. SQLite
        takes one writer at a time anyway, so one thread loses no parallelism."""
        return self._runner()(fn, *args)

    def _write(self) -> None:
        batch, self._pending = self._pending, []
        self._writing = True
        written = self._runner()(self.db.record_sent_many, [r for r, _, _ in batch], None,
                                 [a for _, a, _ in batch if a is not None])

        def done(result: object) -> None:
            self._writing = False
            for _, _, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if self._pending:
                self._write()

        written.addBoth(done)

    def _runner(self) -> Runner:
        if self._run is None:
            from twisted.internet import reactor

            threads = JobThreads(1, "mailserver-api-sent")
            threads.start()
            # Jobs still queued at shutdown run before the thread ends (JobThreads.stop).
            reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
                "after", "shutdown", threads.stop)
            self._run = threads.run
        return self._run


_RECORDERS: dict[int, SentRecorder] = {}


def recorder_for(db: SentDb) -> SentRecorder:
    """The process's recorder of `db` (sent_db gives one SentDb per path)."""
    found = _RECORDERS.get(id(db))
    if found is None:
        found = _RECORDERS[id(db)] = SentRecorder(db)
    return found
