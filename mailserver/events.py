"""What happened to a message, told to whoever follows it (issue 18): webhooks, the API's
per-message state. A base module beside interfaces.py: the queue and the local delivery
publish these; app/ wires the listeners; neither side imports the other.

Durability is the publisher's side of the contract: `publish` is called in a disk thread
BEFORE the publisher forgets what it reports (the queue removing a finished recipient,
a delivery answering 250), and a listener returns only once the events are on disk. So
a crash between "delivered" and the webhook's POST loses nothing: the event is spooled,
and at worst told twice (a listener marks a redelivery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from zope.interface import Interface

#: Event kinds. delivered/deferred/failed/delayed: one recipient of a queued message
#: (RFC 3464's actions: delivered, delayed = a temporary failure that will be retried,
#: failed; "delay_warning" = the delay notice sent to the sender, RFC 3461 4.1);
#: received: a message put in a local mailbox.
DELIVERED = "delivered"
DEFERRED = "deferred"
FAILED = "failed"
DELAY_WARNING = "delay_warning"
RECEIVED = "received"
KINDS = (DELIVERED, DEFERRED, FAILED, DELAY_WARNING, RECEIVED)


@dataclass(frozen=True)
class DeliveryEvent:
    kind: str
    #: The queue entry's id (queued mail) or the local delivery's id (received).
    queue_id: str
    sender: str
    recipient: str
    time: float
    #: The Message-ID header's value, without <>, if the message has one.
    message_id: str = ""
    #: The authenticated user who submitted it ("" for mail from outside).
    submitter: str = ""
    #: RFC 3463 enhanced status ("2.0.0", "4.4.1", "5.1.1") and the remote's reply text.
    status: str = ""
    diagnostic: str = ""
    #: The host that answered (relay) or "local".
    remote: str = ""
    attempts: int = 0
    #: received: the local user's address, its folder, the message's size, and its file
    #: name in the Maildir (what a fetch link resolves).
    mailbox: str = ""
    folder: str = ""
    size: int = 0
    stored_as: str = ""
    #: Anything else a publisher knows (DSN envid, TLS outcome, ...).
    extra: dict[str, str] = field(default_factory=dict)


class IDeliveryEvents(Interface):
    """Listeners of DeliveryEvents (the webhook spool, the API's message states)."""

    def publish(events: Sequence[DeliveryEvent]) -> None:
        """Called in a disk thread; return only once the events are durable."""
