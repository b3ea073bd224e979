"""The API's listener of delivery events (events.IDeliveryEvents): the last state of
each recipient of a message sent through POST /api/v1/send, kept for GET
/api/v1/queue/{id} after the queue has removed the message (api/sentdb.py).

Events of messages the API did not send are ignored (one indexed lookup each). The
publisher calls `publish` in a disk thread before it forgets what it reports; this
returns once the states are committed to SQLite (WAL, synchronous=FULL).
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from mailserver.api.sentdb import RecordedState, SentDb
from mailserver.events import DEFERRED, DELIVERED, FAILED, DeliveryEvent, IDeliveryEvents

#: Event kind -> the state GET /queue/{id} answers.
STATES = {DELIVERED: "delivered", DEFERRED: "deferred", FAILED: "failed"}


@implementer(IDeliveryEvents)
class ApiStates:
    def __init__(self, db: SentDb) -> None:
        self.db = db

    def publish(self, events: Sequence[DeliveryEvent]) -> None:
        rows, ids = [], []
        for e in events:
            state = STATES.get(e.kind)
            if state is None:
                continue
            rows.append(RecordedState(e.recipient, state, e.status, e.diagnostic,
                                      e.remote, e.attempts, e.time))
            ids.append(e.queue_id)
        if rows:
            self.db.record_states(rows, ids)
