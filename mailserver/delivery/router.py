"""The delivery target of the server: local mailboxes, the relay queue, or both at once.

Every producer of mail (the SMTP sessions of all three ports, the queue delivering to
our own domains) hands its message to one DeliveryRouter, which owns the split: `route`
says where one recipient goes, `begin` takes the whole envelope and gives back one
IDeliveryTransaction.

A submitted message (or a forwarded one: an alias with remote targets) can have local
and remote recipients in the same transaction. Both copies get the same bytes; only the
local copy starts with Return-Path (RFC 5321 4.4: the final delivery adds it, a relay
must not). The 250 may only be sent once every copy is durable, and a failure of either
half must leave nothing behind that the client will send again, so commit() goes:

1. commit the queue copy: durable on disk, not yet scheduled (IQueueTransaction);
   then the producer's own step with the queue id, if it gave one
   (IQueueReleaseStep: the API's record of what it sent, which must exist before the
   queue can report a delivery; its failure aborts everything, as 2's does);
2. commit the local copies: visible in new/;
3. release the queue copy to the scheduler.

If 1 fails, the local copies are aborted (nothing was visible). If 2 fails, the queue
copy is aborted (it was never scheduled, so nothing goes out). Only a crash between 2
and 3 leaves a committed but unreleased queue entry; the queue treats such an entry as
pending on restart (its own contract), so nothing is lost and nothing is sent twice:
the client got no 250 and sends again, which is the duplicate RFC 5321 6.1 accepts
over a loss.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface import implementer

from mailserver.config import Config
from mailserver.errors import ReplyError
from mailserver.events import DELIVERED, RECEIVED, DeliveryEvent, message_id_of
from mailserver.interfaces import (
    DeliveryEnvelope,
    IDeliveryRouter,
    IDeliveryTransaction,
    ILocalDelivery,
    ILocalTransaction,
    IOutboundQueue,
    IQueueReleaseStep,
    IQueueTransaction,
    IRecipientDirectory,
    OutboundEnvelope,
    RecipientDsn,
    Resolution,
)
from mailserver.logs import logger

log = logger(__name__)

#: Sends the success reports of local copies (RFC 3461 NOTIFY=SUCCESS): (hostname, the
#: envelope, [(recipient, action)], the head of the message) -> nothing; the queue's
#: (queue/reports.py), set by app/. The router only decides who gets one.
SuccessReporter = Callable[[str, DeliveryEnvelope, list[tuple[RecipientDsn, str]], bytes],
                           None]

#: Makes "received" events durable with their listeners, in a disk thread (app/ sets
#: it to run events.IDeliveryEvents.publish there); fires when they are.
Publisher = Callable[[Sequence[DeliveryEvent]], Deferred[None]]

#: (head of the message, the local transaction, the queue id or None) -> published.
Announcer = Callable[[bytes, ILocalTransaction, str | None], Deferred[None]]

#: Bytes of the message kept for a success report: its header (RFC 3461 4.3: a report
#: that tells of no failure returns the headers only).
REPORT_HEAD = 64 * 1024


def local_failure() -> ReplyError:
    """The reply when a copy could not be made for a reason that is not a ReplyError."""
    return ReplyError(451, "4.3.0", "Error: local delivery failed; try again later")


def return_path_header(sender: str) -> bytes:
    """RFC 5321 4.4: the final delivery adds Return-Path with the reverse-path."""
    return f"Return-Path: <{sender}>\n".encode()


@implementer(IDeliveryRouter)
class DeliveryRouter:
    """Local recipients to `local`, remote ones to `queue` (None: this server cannot
    relay, and a remote recipient is refused with 451 4.3.5 so nothing is lost)."""

    def __init__(self, config: Config, directory: IRecipientDirectory,
                 local: ILocalDelivery, queue: IOutboundQueue | None = None) -> None:
        self.config = config
        self.directory = directory
        self.local = local
        self.queue = queue
        #: Success reports of local copies; None: none are sent (no queue to send them).
        self.reporter: SuccessReporter | None = None
        #: "received" events of the local copies, published before the commit fires
        #: (so before the 250); None: nobody listens.
        self.publish: Publisher | None = None

    def route(self, address: str, relay: bool) -> Resolution:
        domain = address.rpartition("@")[2]
        if not self.config.is_local_domain(domain):
            if not relay:
                # Only authenticated submission relays (RFC 5321 3.6.1, 7.1; RFC 6409
                # 3.3); the MX never does, whoever connects.
                raise ReplyError(550, "5.7.1", "Error: relay access denied")
            self._need_queue(address)
            return Resolution(remote=(address,))
        resolution = self.directory.resolve(address)
        if resolution.remote:
            # Forwarding: an alias with targets elsewhere. The queue relays them with the
            # original envelope sender, unless this is port 25's router with SRS (its
            # queue is senderauth's SRSQueue: app/service.py, ServerContext.mx_target).
            self._need_queue(address)
        if resolution.is_empty:
            problem = self.directory.unavailable()
            if problem is not None:
                # A users file the server cannot read (wrong owner after an edit as
                # root) must not turn every recipient into a permanent 5.1.1 bounce:
                # RFC 5321 4.2.5, a temporary failure, and the sender retries.
                log.error("{rcpt}: {problem}", rcpt=address, problem=problem)
                raise ReplyError(451, "4.3.0", "Error: recipient lookup failed; try later")
            raise ReplyError(550, "5.1.1", "Error: user unknown")
        check_quota = getattr(self.local, "check_quota", None)  # store/delivery.py's
        if check_quota is not None and resolution.mailboxes:
            check_quota(resolution.mailboxes)  # 452 4.2.2 for a mailbox already full
        return resolution

    def _need_queue(self, address: str) -> None:
        if self.queue is None:
            # No relay queue in this server: a temporary failure keeps the sender
            # retrying instead of losing a copy.
            log.warn("{rcpt} needs the relay queue, which is missing", rcpt=address)
            raise ReplyError(451, "4.3.5", "Error: relaying not available yet; try later")

    def begin(self, envelope: DeliveryEnvelope) -> RoutedTransaction:
        local: ILocalTransaction | None = None
        queued: IQueueTransaction | None = None
        try:
            if envelope.mailboxes:
                local = self.local.begin(list(envelope.mailboxes))
            if envelope.remote:
                if self.queue is None:
                    raise ReplyError(451, "4.3.5", "Error: relaying not available yet; "
                                     "try later")
                queued = self.queue.begin(OutboundEnvelope(
                    sender=envelope.sender, recipients=envelope.remote,
                    smtputf8=envelope.smtputf8, body_8bit=envelope.body_8bit,
                    submitter=envelope.submitter, ret=envelope.ret, envid=envelope.envid,
                    dsn=queued_dsn(envelope), requiretls=envelope.requiretls))
            if local is None and queued is None:
                raise ValueError("a message needs a local or a remote recipient")
        except Exception as e:
            # A bug or a refusal: nothing may stay begun, and the caller learns at commit.
            if not isinstance(e, ReplyError):
                log.failure("cannot begin a delivery to {n} local, {m} remote recipients",
                            n=len(envelope.mailboxes), m=len(envelope.remote))
            if local is not None:
                local.abort()
            return RoutedTransaction(None, None, failed=e)
        transaction = RoutedTransaction(local, queued)
        reports = local_reports(envelope) if envelope.sender else []
        if reports and self.reporter is not None:
            reporter, hostname = self.reporter, self.config.hostname
            transaction.on_commit(lambda head: reporter(hostname, envelope, reports, head))
        if self.publish is not None and local is not None:
            publish = self.publish
            transaction.announce(lambda head, txn, queue_id: publish(
                received_events(envelope, head, txn, queue_id)))
        transaction.write_local(return_path_header(envelope.sender))
        return transaction


def received_events(envelope: DeliveryEnvelope, head: bytes, local: ILocalTransaction,
                    queue_id: str | None) -> list[DeliveryEvent]:
    """One "received" per stored copy (the envelope, the user, where the file is) and,
    for submitted mail, one "delivered" per local recipient, as the queue tells of its
    remote ones (under the queue id when the message has a queued part too, so one
    message's events share their key)."""
    by_mailbox = {m: rcpt.address for rcpt in envelope.dsn for m in rcpt.mailboxes}
    message_id = message_id_of(head)
    now = time.time()
    events = []
    delivered: set[str] = set()
    stored: list[tuple[Any, str]] = getattr(local, "stored", [])  # store/delivery.py's
    for mailbox, path in stored:
        name = os.path.basename(path)
        local_id = queue_id or name.split(",", 1)[0]
        recipient = by_mailbox.get(mailbox, mailbox.address)
        events.append(DeliveryEvent(
            RECEIVED, local_id, envelope.sender, recipient, now, message_id=message_id,
            submitter=envelope.submitter, mailbox=mailbox.address, folder="",
            size=int(getattr(local, "size", 0)), stored_as=name, extra={"path": path}))
        if envelope.submitter and recipient not in delivered:
            delivered.add(recipient)
            events.append(DeliveryEvent(
                DELIVERED, local_id, envelope.sender, recipient, now, message_id=message_id,
                submitter=envelope.submitter, status="2.0.0",
                diagnostic="250 2.0.0 delivered to maildir", remote="local", attempts=1))
    return events


def _fans_out(rcpt: RecipientDsn) -> bool:
    return len(rcpt.mailboxes) + len(rcpt.remote) > 1


def local_reports(envelope: DeliveryEnvelope) -> list[tuple[RecipientDsn, str]]:
    """The recipients this router reports success for (NOTIFY=SUCCESS), with the Action
    (RFC 3464 2.3.3): "delivered" into one of our mailboxes; "expanded" for an address
    (an alias) that went to several places (RFC 3461 5.2.7.3), whose targets then no
    longer ask for it (queued_dsn). One remote target: the queue reports, not us."""
    reports = []
    for rcpt in envelope.dsn:
        if not rcpt.wants("SUCCESS"):
            continue
        if _fans_out(rcpt):
            reports.append((rcpt, "expanded"))
        elif rcpt.mailboxes:
            reports.append((rcpt, "delivered"))
    return reports


def queued_dsn(envelope: DeliveryEnvelope) -> tuple[RecipientDsn, ...]:
    """The DSN requests of the remote addresses (RFC 3461 5.2.7: an alias passes its
    recipient's NOTIFY and ORCPT on; 4.2: when none was given, the ORCPT we add is the
    address of the RCPT we received). An alias that fans out has reported "expanded" for SUCCESS already, so
    its targets no longer ask for it (NEVER if nothing else was asked)."""
    out: dict[str, RecipientDsn] = {}
    for rcpt in envelope.dsn:
        notify = rcpt.notify
        if _fans_out(rcpt) and "SUCCESS" in notify:
            notify = tuple(n for n in notify if n != "SUCCESS") or ("NEVER",)
        for target in rcpt.remote:
            kind, orcpt = rcpt.orcpt_type, rcpt.orcpt
            if not kind and target != rcpt.address:
                kind, orcpt = "rfc822" if rcpt.address.isascii() else "utf-8", rcpt.address
            if target not in out and (notify or kind):
                out[target] = RecipientDsn(target, notify, kind, orcpt)
    return tuple(out.values())


@implementer(IDeliveryTransaction, IQueueReleaseStep)
class RoutedTransaction:
    """The delivery transaction of one message: local copies, a queue copy, or both."""

    def __init__(self, local: ILocalTransaction | None, queued: IQueueTransaction | None,
                 failed: Exception | None = None) -> None:
        self.local = local
        self.queued = queued
        #: Why this transaction can only fail (begin or write went wrong); commit says so.
        self.failed = failed
        self._released = False
        #: Called with the head of the message once every copy is committed.
        self._after_commit: Callable[[bytes], None] | None = None
        #: Publishes the local copies' "received" events, awaited before commit fires.
        self._announce: Announcer | None = None
        #: The producer's step between the queue copy's commit and its release.
        self._before_release: Callable[[str], Deferred[None]] | None = None
        self._head = bytearray()

    def write_local(self, data: bytes) -> None:
        """Bytes only the local copies get (Return-Path)."""
        if self.local is not None and self.failed is None:
            self._guarded(self.local.write, data)

    def on_commit(self, callback: Callable[[bytes], None]) -> None:
        """Call `callback` with the head of the message (REPORT_HEAD bytes at most)
        once every copy is committed: the success reports."""
        self._after_commit = callback

    def announce(self, publish: Announcer) -> None:
        """Call `publish` with the head of the message, the local transaction and the
        queue id (None: nothing queued) once the local copies are committed, and wait
        for it before commit fires (so before the 250)."""
        self._announce = publish

    def before_release(self, step: Callable[[str], Deferred[None]]) -> None:
        """IQueueReleaseStep: `step(queue_id)` after the queue copy's commit, before
        anything is visible or released (commit's step 1b)."""
        self._before_release = step

    def write(self, data: bytes) -> None:
        if self.failed is not None:
            return
        if (self._after_commit is not None or self._announce is not None) and \
                len(self._head) < REPORT_HEAD:
            self._head += data[:REPORT_HEAD - len(self._head)]
        if self.local is not None:
            self._guarded(self.local.write, data)
        if self.queued is not None and self.failed is None:
            self._guarded(self.queued.write, data)

    def _guarded(self, write: Callable[[bytes], None], data: bytes) -> None:
        """The interface says write never raises; should a half do so, the session is
        not the place to find out: both halves are dropped and commit reports it."""
        try:
            write(data)
        except Exception as e:
            log.failure("writing a message for delivery failed")
            self.failed = e
            self.abort()

    def commit(self) -> Deferred[str | None]:
        """Fires with the queue id (None without a queue copy) once every copy is durable
        and the queue copy is released; errbacks with ReplyError, leaving nothing."""
        if self.failed is not None:
            error = self.failed
            return defer.fail(error if isinstance(error, ReplyError) else local_failure())
        return self._commit()

    @inlineCallbacks
    def _commit(self) -> Generator[Deferred[Any], Any, str | None]:
        queue_id: str | None = None
        if self.queued is not None:
            try:
                queue_id = yield self.queued.commit()
            except Exception:
                self.abort()
                raise
            if self._before_release is not None and queue_id is not None:
                try:
                    yield self._before_release(queue_id)
                except Exception as e:
                    log.failure("the step before releasing queued message {id} failed",
                                id=queue_id)
                    self.abort()
                    raise local_failure() from e
        if self.local is not None:
            try:
                yield self.local.commit()
            except Exception as e:
                self.abort()
                if isinstance(e, ReplyError):
                    raise
                raise local_failure() from e
        if self.queued is not None:
            self._released = True
            try:
                self.queued.release()
            except Exception:
                # Durable and committed: the queue picks it up when it next scans.
                log.failure("release of queued message {id} failed", id=queue_id)
        if self._announce is not None and self.local is not None:
            try:
                yield self._announce(bytes(self._head), self.local, queue_id)
            except Exception:  # the copies are delivered; a listener's failure is logged
                log.failure("cannot publish the received events")
        if self._after_commit is not None:
            try:
                self._after_commit(bytes(self._head))
            except Exception:  # a report must never undo a delivery
                log.failure("cannot send the success report")
        return queue_id

    def abort(self) -> None:
        """Drop every copy that is not yet out of our hands; safe at any point."""
        if self.local is not None:
            self.local.abort()
        if self.queued is not None and not self._released:
            self.queued.abort()
