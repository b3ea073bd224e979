"""The message hooks (interfaces.IMessageHook) the SMTP session calls: hold a message's
content until it is checked (inbound, port 25) or signed (submission), then hand it on.

The session begins the router's transaction as always (delivery/router.py, which has
already written Return-Path into the local copies) and lets the listener's hook wrap
it (smtp/reception.py). The wrapper holds the trace field (Received) and the content;
at commit it asks the checker or signer (in a thread), writes the trace field, the
Authentication-Results or DKIM-Signature fields and the content, and commits the
router's transaction. A refusal or deferral becomes the ReplyError the session already
answers end-of-data failures with; a DMARC quarantine swaps the local copies for
copies in each recipient's Junk folder.

Memory: the held content is at most limits.message_size, once; the checks and the
signature need the whole message anyway.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Generator, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from mailserver.address import address_literal
from mailserver.delivery.router import RoutedTransaction, return_path_header
from mailserver.errors import ReplyError
from mailserver.interfaces import (
    IDeliveryTransaction,
    IHeldTransaction,
    ILocalDelivery,
    IMessageHook,
    MailboxId,
)
from mailserver.logs import logger
from mailserver.mime7bit import DowngradeError, to_7bit
from mailserver.senderauth.checker import InboundChecker
from mailserver.senderauth.signing import Signer

log = logger(__name__)

#: A host name fit for a Received comment (a PTR may hold any octets).
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


class Session(Protocol):
    """What a hook reads of the SMTP session (interfaces.IMessageHook.wrap)."""

    session_id: str
    peer_ip: str
    helo: str | None
    #: The transaction's envelope (smtp/server.py Envelope): its recipients.
    envelope: Any


@implementer(IHeldTransaction)
class HeldTransaction:
    """Wraps the router's transaction and holds everything written until `_prepare`
    has run: the trace field (our Received) and, after `hold()`, the content."""

    def __init__(self, inner: IDeliveryTransaction) -> None:
        self.inner = inner
        self._held: list[bytes] = []
        self._holding = False
        self._aborted = False
        #: Writes before the content (the trace fields), in order.
        self._trace: list[bytes] = []

    def hold(self) -> None:
        """Everything written from now on is the message content."""
        self._holding = True

    def write(self, data: bytes) -> None:
        if self._holding:
            self._held.append(data)
        else:
            self._trace.append(data)

    def commit(self) -> Deferred[str | None]:
        return self._commit_held()

    @inlineCallbacks
    def _commit_held(self) -> Generator[Deferred[Any], Any, str | None]:
        message = b"".join(self._held)
        self._held.clear()
        if getattr(self.inner, "failed", None) is not None:
            # The router could not begin (or write) the delivery: its commit says why,
            # and no check or signature is worth making first.
            queue_id = yield self.inner.commit()
            return queue_id
        try:
            prefix, message = yield self._prepare(message)
        except Exception:
            self.abort()
            raise
        if self._aborted:
            raise ReplyError(451, "4.3.0", "Requested action aborted: transaction aborted")
        for data in self._trace:
            self.inner.write(self._trace_field(data))
        self.inner.write(prefix)
        self.inner.write(message)
        queue_id = yield self.inner.commit()
        return queue_id

    def _prepare(self, message: bytes) -> Deferred[tuple[bytes, bytes]]:
        raise NotImplementedError

    def _trace_field(self, data: bytes) -> bytes:
        """A trace field as it is written (CheckedTransaction names the client)."""
        return data

    def abort(self) -> None:
        self._aborted = True
        self._held.clear()
        self.inner.abort()


class CheckedTransaction(HeldTransaction):
    """Inbound: every check in one thread job at the end of the data.

    SPF and iprev could start at MAIL time, but a second thread job per message
    costs more than it saves: with the checks split in two jobs the warm-cache
    acceptance rate was 254 msgs/s, in one job 354 (bench/senderauth.py, 10
    connections; each job waits for the GIL behind the busy reactor). SPF only
    marks, so nothing is refused earlier for it either way.
    """

    def __init__(self, inner: RoutedTransaction, hook: InboundHook, session: Session,
                 sender: str, mailboxes: Sequence[MailboxId]) -> None:
        super().__init__(inner)
        self.routed = inner
        self.hook = hook
        self.session = session
        self.sender = sender
        self.mailboxes = list(mailboxes)
        #: The local domain a forwarded copy is signed for: the first recipient's
        #: (an alias to a remote address, RFC 6376 d= of the forwarder).
        self.forwarder = (_forwarding_domain(session.envelope)
                          if inner.queued is not None else None)
        self.client = (session.peer_ip, session.helo or "", sender)
        #: A recipient's domain asks DMARC rejects to go to Junk (checks.no_reject_domains).
        self.no_reject = bool(hook.no_reject & _recipient_domains(session.envelope))
        #: The client's forward-confirmed name (iprev pass), "" if it has none.
        self.client_name = ""

    def _trace_field(self, data: bytes) -> bytes:
        """Our Received names the client's confirmed host name beside its address, as
        Postfix does: "from HELO (NAME [IP])" (RFC 5321 4.4 TCP-info)."""
        ip = self.session.peer_ip
        literal = f"({address_literal(ip)})".encode("ascii")
        if not _HOST.fullmatch(self.client_name) or not data.startswith(b"Received: ") \
                or literal not in data:
            return data
        named = f"({self.client_name} {address_literal(ip)})".encode("ascii", "replace")
        return data.replace(literal, named, 1)

    @inlineCallbacks
    def _prepare(self, message: bytes) -> Generator[Deferred[Any], Any, tuple[bytes, bytes]]:
        verdict = yield self.hook.checker.check_all(message, *self.client)
        session = self.session
        if (self.no_reject and verdict.reply is not None and verdict.reply.code == 550
                and verdict.dmarc is not None and verdict.dmarc.result == "fail"):
            verdict.action, verdict.reply = "junk", None
        if verdict.reply is not None:
            # Never silent: every refusal with its code and the client's address.
            log.info("{session} refused from {ip} sender <{sender}>: {code} {status} "
                     "{text} [{summary}]", session=session.session_id, ip=session.peer_ip,
                     sender=self.sender, code=verdict.reply.code,
                     status=verdict.reply.enhanced, text=verdict.reply.lines()[0],
                     summary=verdict.summary)
            raise ReplyError(verdict.reply.code, verdict.reply.enhanced,
                             verdict.reply.lines()[0])
        if verdict.action == "junk" and self.routed.local is not None and self.mailboxes:
            # Only Return-Path was written to the inbox copies (the router's, at begin):
            # the Junk copies get it too, first, as RFC 5321 4.4 wants it.
            self.routed.local.abort()
            self.routed.local = self.hook.junk.begin(self.mailboxes)
            self.routed.write_local(return_path_header(self.sender))
        self.client_name = verdict.iprev_name
        log.info("{session} from {ip} sender <{sender}>: {action} [{summary}]",
                 session=session.session_id, ip=session.peer_ip, sender=self.sender,
                 action=verdict.action, summary=verdict.summary)
        prefix = verdict.header
        if self.forwarder is not None and self.hook.signer is not None:
            # The copy we forward carries our verdict sealed with ARC (RFC 8617), so
            # the next hop can trust it when forwarding broke SPF or DKIM, and our
            # DKIM signature over all of it.
            prefix = (yield self.hook.seal(prefix + verdict.message, self.forwarder)
                      ) + prefix
            prefix = (yield self.hook.signer.sign(prefix + verdict.message,
                                                  self.forwarder)) + prefix
        return prefix, verdict.message


def _recipient_domains(envelope: Any) -> set[str]:
    return {str(getattr(a, "domain", "")).lower()
            for a in getattr(envelope, "recipients", None) or ()}


def _forwarding_domain(envelope: Any) -> str | None:
    recipients = getattr(envelope, "recipients", None) or ()
    for address in recipients:
        domain = getattr(address, "domain", "")
        if domain:
            return str(domain).lower()
    return None


@implementer(IMessageHook)
class InboundHook:
    """The smtp listener's hook."""

    def __init__(self, checker: InboundChecker, junk: ILocalDelivery,
                 trusted: tuple[str, ...] = (), signer: Signer | None = None,
                 no_reject: tuple[str, ...] = ()) -> None:
        self.checker = checker
        self.no_reject = {d.lower() for d in no_reject}
        self.junk = junk
        #: Signs the copies forwarded to remote alias targets; None: unsigned.
        self.signer = signer
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]

    def seal(self, message: bytes, domain: str) -> Deferred[bytes]:
        """The ARC set for a forwarded copy, made in a thread (RSA signing)."""
        assert self.signer is not None
        return deferToThread(self.signer.seal_sync, message, domain,
                             self.checker.authserv_id)

    def wrap(self, transaction: IDeliveryTransaction, session: Session, sender: str,
             mailboxes: Sequence[MailboxId]) -> HeldTransaction | None:
        """None (nothing to do) for a client in checks.trusted_networks."""
        try:
            ip = ipaddress.ip_address(session.peer_ip)
        except ValueError:
            ip = None
        if ip is not None and any(ip in net for net in self.trusted):
            return None
        if not isinstance(transaction, RoutedTransaction):
            # The quarantine swaps the local half and a forwarded copy is signed: both
            # need the router's transaction (delivery/router.py), not another one.
            raise TypeError(f"InboundHook wraps a RoutedTransaction, not {transaction!r}")
        return CheckedTransaction(transaction, self, session, sender, mailboxes)


class SignedTransaction(HeldTransaction):
    def __init__(self, inner: IDeliveryTransaction, signer: Signer) -> None:
        super().__init__(inner)
        self.signer = signer

    @inlineCallbacks
    def _prepare(self, message: bytes) -> Generator[Deferred[Any], Any, tuple[bytes, bytes]]:
        if not message.isascii():
            # 8-bit parts made 7-bit before signing (mime7bit.py), so that no relay
            # converting for a peer without 8BITMIME (RFC 6152 3) breaks the body hash
            # of our signature on the way. 8-bit headers (SMTPUTF8) stay as they are.
            try:
                message = yield deferToThread(to_7bit, message)
            except DowngradeError:
                pass
        signature = yield self.signer.sign(message)
        return signature, message


@implementer(IMessageHook)
class SigningHook:
    """The submission listeners' hook: DKIM-sign what our users send."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def wrap(self, transaction: IDeliveryTransaction, session: Session, sender: str,
             mailboxes: Sequence[MailboxId]) -> HeldTransaction:
        return SignedTransaction(transaction, self.signer)
