"""The two halves behind the router: Maildir copies (ILocalDelivery, ILocalTransaction)
and the relay queue (IOutboundQueue, IQueueTransaction, IQueueStates).

Part of mailserver.interfaces, which re-exports every name here: import them from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface

from mailserver.interfaces.routing import MailboxId, RecipientDsn


class ILocalTransaction(Interface):
    """One message on its way to one or more local mailboxes (store/delivery.py)."""

    def write(data: bytes) -> None:
        """As IDeliveryTransaction.write (the router writes Return-Path here first)."""

    def commit() -> Deferred[None]:
        """Make the message durable and visible in each mailbox's new/ directory.

        Fires once every copy is fsync'd and renamed and each new/ directory fsync'd.
        On failure it errbacks with ReplyError (451 4.3.0, or 452 4.3.1 when the disk is
        full) and no copy is visible anywhere.
        """

    def abort() -> None:
        """Drop the message; nothing becomes visible. Safe to call at any point."""


class ILocalDelivery(Interface):
    """Local delivery into users' Maildirs, in two phases."""

    def begin(mailboxes: Sequence[MailboxId]) -> ILocalTransaction:
        """Start a transaction whose commit delivers one copy to each mailbox."""

    def check_quota(mailboxes: Sequence[MailboxId]) -> None:
        """ReplyError (452 4.2.2) if one of them is full already (RCPT); optional."""


@dataclass(frozen=True)
class OutboundEnvelope:
    """What the queue needs to relay one message (RFC 5321 envelope, remote part only)."""

    #: The envelope sender as given in MAIL FROM, "" for the null sender <>.
    sender: str
    #: Remote recipient addresses, each delivered (and failed, and bounced) on its own.
    recipients: tuple[str, ...]
    #: MAIL FROM had SMTPUTF8 / BODY=8BITMIME: the relay must only send to peers that
    #: support it (RFC 6531 3.4; RFC 6152), or bounce.
    smtputf8: bool = False
    body_8bit: bool = False
    #: MAIL FROM had REQUIRETLS (RFC 8689): relayed over verified TLS only.
    requiretls: bool = False
    #: Who submitted it (the authenticated user), for logs and `queue show`; "" if none.
    submitter: str = ""
    #: DSN (RFC 3461): RET, the decoded ENVID, and the NOTIFY/ORCPT of each recipient
    #: that gave them (RecipientDsn.address is the address in `recipients`).
    ret: str = ""
    envid: str = ""
    dsn: tuple[RecipientDsn, ...] = ()


class IQueueTransaction(Interface):
    """One message on its way into the durable queue (queue/outbound.py), in three steps.

    `write` as ILocalTransaction, without Return-Path. `commit` makes message and
    envelope durable (fsync'd file and directory) but holds them back from the
    scheduler, so that the router, delivering to local mailboxes as well, can still take
    back the queue copy if the local half fails; `release` then hands it over. `abort`
    after `commit` and before `release` deletes the queued files again.
    """

    def write(data: bytes) -> None:
        """As ILocalTransaction.write."""

    def abort() -> None:
        """Drop the message (also after commit, before release); safe at any point."""

    def commit() -> Deferred[str]:
        """Fires with the queue id once the entry is durable; errbacks with ReplyError
        (451 4.3.0, 452 4.3.1 when the disk is full) leaving nothing queued."""

    def release() -> None:
        """Hand the committed entry to the scheduler: a first attempt starts at once
        (in whichever process runs the scheduler)."""


class IOutboundQueue(Interface):
    """The durable relay queue under data_dir/queue/ (mailserver.queue)."""

    def begin(envelope: OutboundEnvelope) -> IQueueTransaction:
        """Start queueing one message for `envelope.recipients`."""


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient of a queue entry as its envelope file has it (queue/envelope.py)."""

    address: str
    #: "pending" (not yet tried, or deferred: attempts > 0), "delivered" or "failed".
    state: str
    attempts: int = 0
    #: The last reply or reason as a person reads it, and its RFC 3463 status.
    last_error: str = ""
    status: str = ""
    #: The host that gave `last_error`.
    remote: str = ""
    #: Seconds since the epoch of the next attempt (pending only), 0 if none.
    next_try: float = 0.0


class IQueueStates(Interface):
    """The relay queue's state of one message, read from its files (queue/states.py),
    for those that may not import the queue: the API's GET /api/v1/queue/ID."""

    def entry(queue_id: str) -> tuple[str, list[QueuedRecipient]] | None:
        """(submitter, recipients) of the entry, queued or held; None when there is no
        such entry (never queued, or finished and removed). Blocks (reads files): call
        it in a disk thread. `queue_id` is untrusted: anything that is not a queue id
        is None."""
