"""A composed message (api/compose.py) submitted the way the SMTP submission session
submits one, step for step, with the same rules in the same shared code:

    SMTP submission (smtp/)                  here
    MAIL: sender rule, hourly limit          sender_refusal, message_limit_refusal
    RCPT: router.route(relay=True),          route every recipient, then reserve each
          daily recipient limit              against the daily limit
    DATA: size limit (552 5.3.4)             len(message) > limits.message_size
          Received, then hold()              received_header (with "HTTP(S)A"), hold()
          HeaderInspector(add_missing)       the same: Message-ID and Date added
          From rule at the end of data       from_refusal (submission.check_from_header)
    commit through the "submission" hook     the same hook: mime7bit, DKIM signature

core/submission.py holds the rules both call, core/headers.py and core/trace.py the
header work. The differences, each on purpose: every check is made before anything is
counted or written (a refused request costs the user no quota), and a recipient the
router refuses refuses the whole request (an application gets one answer, and an
idempotent retry means the same message to the same people), where SMTP would send to
the others.

An SMTP reply becomes an HTTP status (`http_status`) with the enhanced code in the
error's "smtp" field, so an application can act on the same reason a mail client would.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from mailserver.abuse.control import event
from mailserver.address import Address, address_literal
from mailserver.api.addresses import Mailbox
from mailserver.api.compose import Composed
from mailserver.api.resource import ApiError
from mailserver.auth.sending_limits import SendingLimits
from mailserver.core import metrics, submission
from mailserver.core.context import ServerContext
from mailserver.core.headers import HeaderInspector
from mailserver.core.trace import new_message_id, received_header
from mailserver.errors import ReplyError
from mailserver.interfaces import DeliveryEnvelope, IQueueReleaseStep, MailboxId, RecipientDsn
from mailserver.logs import logger
from mailserver.reply import Reply

log = logger(__name__)

#: The listener whose message hook (DKIM signing) and name (logs, metrics) the API's
#: messages share: they are submissions.
LISTENER = "submission"
#: The `with` keyword of our Received field. RFC 3848's registry has none for HTTP;
#: like ESMTPA/ESMTPSA (RFC 3848 2): A for authenticated, S for TLS.
PROTOCOL = {False: "HTTPA", True: "HTTPSA"}


@dataclass
class Submitted:
    message_id: str
    #: The queue's id, or (no remote recipient) the local delivery's id.
    queue_id: str
    #: (address, "delivered" | "queued") per envelope recipient, in request order.
    recipients: list[tuple[str, str]]
    #: The addresses the queue delivers to (aliases expanded), for the state records.
    remote: tuple[str, ...]


#: What the caller keeps of a submitted message (api/send.py: its state record); run
#: before the queue may act on the message (IQueueReleaseStep), or after the local
#: delivery when nothing was queued.
Recorder = Callable[[Submitted], Coroutine[Any, Any, None]]


@dataclass
class _RecordStep:
    """The caller's record of a queued message as the router's step before the queue
    copy's release (interfaces.IQueueReleaseStep), once the queue id is known."""

    record: Recorder
    message_id: str
    states: list[tuple[str, str]]
    remote: tuple[str, ...]
    done: bool = False

    def before_release(self, queue_id: str) -> Deferred[None]:
        self.done = True
        return ensureDeferred(self.record(Submitted(self.message_id, queue_id,
                                                    self.states, self.remote)))


@dataclass
class ApiSession:
    """What a message hook may read of its "session" (interfaces.IMessageHook.wrap)."""

    session_id: str
    peer_ip: str
    helo: str | None
    envelope: Any


@dataclass
class _Envelope:
    recipients: list[Address]


def http_status(reply: Reply, recipient: str = "", status: int | None = None,
                code: str = "") -> ApiError:
    """The ApiError for an SMTP refusal: `status` and `code` when the caller knows what
    was refused, else the status that fits the reply; the reply's text, and its
    enhanced code in "smtp"."""
    enhanced = reply.enhanced or ""
    text = reply.lines()[0]
    if recipient:
        text = f"<{recipient}>: {text}"
    headers: dict[str, str] = {}
    if status is None:
        if enhanced == "4.3.1":
            status, code = 507, "disk_full"  # RFC 4918 11.5: Insufficient Storage
        elif recipient:
            status = 422
            code = {"5.1.1": "unknown_recipient", "4.2.2": "mailbox_full",
                    "5.2.2": "mailbox_full"}.get(enhanced, "recipient_refused")
            if reply.code < 500 and enhanced not in ("4.2.2",):
                status, code = 503, "try_again"
        elif reply.code >= 500:
            status, code = 422, "message_refused"
        else:
            status, code = 503, "try_again"
    if status in (429, 503, 507):
        headers["Retry-After"] = "3600" if status == 429 and reply.code < 500 else (
            "86400" if status == 429 else "60")
    return ApiError(status, code or "refused", text, smtp=enhanced or None,
                    headers=headers)


class Submitter:
    """Submits for one ServerContext; `limits` re-reads data_dir/sending_limits."""

    def __init__(self, context: ServerContext, limits: SendingLimits) -> None:
        self.context = context
        self.limits = limits

    async def submit(self, user: str, composed: Composed, peer_ip: str,
                     tls: bool, record: Recorder | None = None) -> Submitted:
        """Submit `composed` as `user`; `record` (if given) has run when this returns,
        and for a queued message before the queue could deliver it (a "delivered"
        event of a message the API has no record of yet would be lost)."""
        context = self.context
        config = context.config
        message = composed.message
        if len(message) > config.limits.message_size:
            # RFC 1870 6.1: 552 5.3.4.
            raise http_status(Reply(552, "5.3.4", "Message size exceeds fixed maximum "
                                                  "message size"), status=413,
                              code="too_big")
        refusal = submission.sender_refusal(context.directory, user, composed.sender)
        if refusal is not None:
            log.info("api {user} may not send as <{sender}>", user=user,
                     sender=composed.sender)
            raise http_status(refusal, status=403, code="sender_refused")
        session_id = new_message_id()
        headers = HeaderInspector(add_missing=True, hostname=config.hostname,
                                  message_id=session_id)
        content = headers.feed(message) + headers.finish()
        if headers.too_many_hops:
            raise http_status(Reply(554, "5.4.6", "Error: too many hops (mail loop?)"))
        if config.submission.check_from_header:
            refusal = submission.from_refusal(context.directory, user, headers)
            if refusal is not None:
                log.info("api {user} refused: {why}", user=user, why=refusal.lines()[0])
                raise http_status(refusal, status=403, code="sender_refused")
        routed = self._route(composed.recipients)
        self._reserve(user, composed.recipients, peer_ip)
        mailboxes: set[MailboxId] = set()
        remote: dict[str, None] = {}
        dsn: list[RecipientDsn] = []
        states: list[tuple[str, str]] = []
        for rcpt, resolution in routed:
            mailboxes.update(resolution.mailboxes)
            remote.update(dict.fromkeys(resolution.remote))
            if resolution.remote:
                dsn.append(RecipientDsn(rcpt.address, (), "", "", resolution.mailboxes,
                                        resolution.remote))
            states.append((rcpt.address, "queued" if resolution.remote else "delivered"))
        envelope = DeliveryEnvelope(
            sender=composed.sender, mailboxes=tuple(sorted(mailboxes)),
            remote=tuple(remote), smtputf8=composed.smtputf8,
            body_8bit=not content.isascii(), submitter=user, dsn=tuple(dsn))
        step = None if record is None else _RecordStep(
            record, headers.message_id_value, states, tuple(remote))
        queue_id = await self._deliver(envelope, session_id, peer_ip, tls, composed,
                                       content, step.before_release if step else None)
        log.info("api {id} from {sender} by {user} to {rcpts} local, {remote} queued "
                 "{queue_id} ({size} octets) stored", id=session_id,
                 sender=composed.sender, user=user, rcpts=len(mailboxes),
                 remote=len(remote), queue_id=queue_id or "-", size=len(content))
        submitted = Submitted(headers.message_id_value, queue_id or session_id, states,
                              tuple(remote))
        if record is not None and not (step and step.done):  # nothing was queued
            await record(submitted)
        return submitted

    def _route(self, recipients: list[Mailbox]) -> list[tuple[Mailbox, Any]]:
        """Where each recipient goes (RFC 6409 3.3: authenticated, so relayed), or the
        refusal of the first the router refuses (unknown user, full mailbox, ...)."""
        routed = []
        for rcpt in recipients:
            try:
                routed.append((rcpt, self.context.target.route(rcpt.address, True)))
            except ReplyError as e:
                raise http_status(e.reply, rcpt.address) from None
        return routed

    def _reserve(self, user: str, recipients: list[Mailbox], peer_ip: str) -> None:
        """The user's sending limits, counted as submission counts them (MAIL, then
        each RCPT), shared with SMTP across processes (abuse/control.py)."""
        abuse = self.context.abuse
        if abuse is None:
            return
        limits = self.limits.limits(user)
        refusal = submission.message_limit_refusal(abuse, user, limits.messages_per_hour)
        if refusal is not None:
            event("refused", "api", peer_ip, "hourly-quota", user)
            raise http_status(refusal, status=429, code="sending_limit")
        for _ in recipients:
            refusal = submission.recipient_limit_refusal(abuse, user,
                                                         limits.recipients_per_day)
            if refusal is not None:
                event("refused", "api", peer_ip, "daily-quota", user)
                raise http_status(refusal, status=429, code="sending_limit")

    async def _deliver(self, envelope: DeliveryEnvelope, session_id: str, peer_ip: str,
                       tls: bool, composed: Composed, content: bytes,
                       before_release: Callable[[str], Deferred[None]] | None = None,
                       ) -> str | None:
        """One transaction through the submission listener's hook, as
        smtp/reception.py _start_message and _finish_message do it."""
        context = self.context
        transaction = context.target.begin(envelope)
        if before_release is not None:
            if not IQueueReleaseStep.providedBy(transaction):
                raise TypeError("the delivery target cannot hold the queue's release")
            transaction.before_release(before_release)
        hook = context.message_hooks.get(LISTENER)
        recipients = [Address(*m.address.rsplit("@", 1)) for m in composed.recipients]
        session = ApiSession(session_id, peer_ip, None, _Envelope(recipients))
        held = None if hook is None else hook.wrap(transaction, session, envelope.sender,
                                                   list(envelope.mailboxes))
        if held is not None:
            transaction = held
        transaction.write(received_header(
            helo=address_literal(peer_ip), peer_ip=peer_ip,
            hostname=context.config.hostname, protocol=PROTOCOL[tls],
            message_id=session_id, recipients=recipients))
        if held is not None:
            held.hold()
        transaction.write(content)
        committing = metrics.now()
        d: Deferred[str | None] = transaction.commit()
        try:
            queue_id = await d
        except ReplyError as e:
            transaction.abort()
            raise http_status(e.reply) from None
        except Exception:
            transaction.abort()
            log.failure("api {id} delivery failed", id=session_id)
            raise http_status(Reply(451, "4.3.0", "Error: local delivery failed; try "
                                                  "again later")) from None
        metrics.message_accepted("api", metrics.now() - committing)
        return queue_id
