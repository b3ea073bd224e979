"""interfaces.IQueueStates over the spool: a queue entry's recipients as its envelope
file says, for the API (GET /api/v1/queue/ID), which may not import the queue."""

from __future__ import annotations

from zope.interface import implementer

from mailserver.interfaces import IQueueStates, QueuedRecipient
from mailserver.queue.envelope import is_queue_id
from mailserver.queue.spool import EntryGone, Spool


@implementer(IQueueStates)
class SpoolStates:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def entry(self, queue_id: str) -> tuple[str, list[QueuedRecipient]] | None:
        if not is_queue_id(queue_id):
            return None  # never a path: ids are hex digits only
        try:
            entry, _where = self.spool.load_any(queue_id)
        except (EntryGone, ValueError):
            return None
        return entry.submitter, [
            QueuedRecipient(r.address, r.state, r.attempts, r.last_error, r.status,
                            r.remote, r.next_try) for r in entry.recipients]
