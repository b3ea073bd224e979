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

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from zope.interface import Interface, implementer

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


@implementer(IDeliveryEvents)
class EventFanout:
    """Every listener gets every event (the webhook spool, the API's state recorder).

    app/service.py builds one per process and puts it in ServerContext.events; adding a
    listener is one `fanout.add(listener)` there. A listener that fails is logged and
    the others still run: what was delivered stays delivered (a failing spool must not
    make the queue send a message twice), and each listener keeps its own durability.
    """

    def __init__(self) -> None:
        self.listeners: list[IDeliveryEvents] = []

    def add(self, listener: IDeliveryEvents) -> None:
        self.listeners.append(listener)

    def publish(self, events: Sequence[DeliveryEvent]) -> None:
        if not events:
            return
        for listener in self.listeners:
            try:
                listener.publish(events)
            except Exception:
                from mailserver.logs import logger

                logger(__name__).failure("events: listener {name} failed",
                                         name=type(listener).__name__)


class IWebhookRegistry(Interface):
    """Users' webhook registrations, as the API reaches them (api/ never imports
    webhooks/; app/ puts the implementation in ServerContext.webhooks). Every method but
    `check_url` blocks on disk: call it in a disk thread."""

    def list_hooks(owner: str) -> list[dict[str, object]]:
        """The owner's hooks, secrets left out."""

    def get_hook(owner: str, hook_id: str) -> dict[str, object] | None:
        """One of the owner's hooks (secret left out), or None."""

    def add_hook(owner: str, url: str, events: Sequence[str], secret: str | None,
                 raw_limit: int) -> dict[str, object]:
        """Store a new hook; the answer holds the secret (the only time it is shown).
        ValueError: the owner has too many hooks."""

    def update_hook(owner: str, hook_id: str,
                    changes: dict[str, object]) -> dict[str, object] | None:
        """Change url, events, raw_limit or active; None if there is no such hook."""

    def delete_hook(owner: str, hook_id: str) -> bool:
        """Remove a hook; False if there was none."""

    def check_url(url: str) -> object:
        """A Deferred firing with None (the URL may be used) or the reason it may not
        (scheme, host, an address in a refused network): resolved off the reactor."""


_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]{1,500})>?",
                         re.IGNORECASE | re.MULTILINE)


def message_id_of(head: bytes) -> str:
    """The Message-ID header's value without <> (RFC 5322 3.6.4), from the header
    section at the start of `head`; "" when there is none."""
    end = head.find(b"\n\n")
    end2 = head.find(b"\r\n\r\n")
    cut = min((e for e in (end, end2) if e >= 0), default=len(head))
    found = _MESSAGE_ID.search(head, 0, cut)
    return found.group(1).decode("utf-8", "replace") if found else ""
