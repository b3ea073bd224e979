"""Success reports for copies the SMTP session delivered into local mailboxes itself.

The delivery router (delivery/router.py) writes local copies during the session, not
through the queue; when a recipient asked NOTIFY=SUCCESS (RFC 3461 4.1) the router
calls a LocalSuccessReports once those copies are committed, and it queues the report
(RFC 3464, Action "delivered" or "expanded") for the envelope sender as the scheduler
queues its own: same builder, null sender, DKIM-signed when signing is set up.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred

from mailserver.interfaces import DeliveryEnvelope, OutboundEnvelope, RecipientDsn
from mailserver.logs import logger
from mailserver.queue.bounce import build_dsn, original_headers
from mailserver.queue.envelope import DELIVERED, QueueEntry, RecipientState, new_queue_id
from mailserver.queue.outbound import OutboundQueue

log = logger(__name__)


class LocalSuccessReports:
    """The router's SuccessReporter: queue one report per delivered message."""

    def __init__(self, queue: OutboundQueue,
                 sign: Callable[[bytes], Deferred[bytes]] | None = None) -> None:
        self.queue = queue
        self.sign = sign

    def __call__(self, hostname: str, envelope: DeliveryEnvelope,
                 reports: list[tuple[RecipientDsn, str]], head: bytes) -> None:
        d = defer.ensureDeferred(self.send(hostname, envelope, reports, head))
        d.addErrback(lambda f: log.failure("cannot queue the success report to <{to}>",
                                           f, to=envelope.sender))

    async def send(self, hostname: str, envelope: DeliveryEnvelope,
                   reports: list[tuple[RecipientDsn, str]], head: bytes) -> str:
        entry = QueueEntry(
            id=new_queue_id(), sender=envelope.sender, ret=envelope.ret,
            envid=envelope.envid,
            recipients=[RecipientState(
                r.address, state=DELIVERED, status="2.0.0", remote="local",
                last_error="250 2.0.0 delivered to maildir" if action == "delivered"
                else "250 2.0.0 delivered, and forwarded to more than one address",
                orcpt_type=r.orcpt_type, orcpt=r.orcpt, report=action)
                for r, action in reports])
        dsn = build_dsn(entry, entry.recipients, original_headers(head), hostname,
                        success=True)
        if self.sign is not None:
            dsn = await self.sign(dsn) + dsn
        dsn_id = await self.queue.enqueue(
            OutboundEnvelope(sender="", recipients=(envelope.sender,),
                             body_8bit=not dsn.isascii(),
                             smtputf8=not envelope.sender.isascii()), dsn)
        log.info("success notification to <{to}> for {n} local recipient(s): {dsn_id}",
                 to=envelope.sender, n=len(reports), dsn_id=dsn_id)
        return dsn_id
