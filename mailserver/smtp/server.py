"""The ESMTP session (RFC 5321) of the `smtp`, `submission` and `submissions` listeners.

One state machine per connection, one command at a time: while a command waits on a
Deferred (the fsync behind the 250 after DATA), later pipelined input stays in our
buffer and is not read until the reply has been sent (RFC 2920 3.1: replies in order).
That is the defect of twisted.mail's server (twisted#8126) this module exists to avoid.

Everything that parses lives in grammar.py and data.py; who is local and where mail
goes lives behind IDeliveryRouter (delivery/router.py): the session asks it about each
recipient and hands it the message, never knowing whether that ends in a Maildir, in
the relay queue, or both.
This module holds the state machine and the envelope commands; the message content
(DATA, BDAT) is reception.py's, AUTH and the sender rule are submission.py's, both
mixins of SMTPSession. What differs between the ports is a SessionPolicy (listener.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.abuse.control import AbuseControl
from mailserver.abuse.dnsbl import Blocklists
from mailserver.address import Address, address_literal
from mailserver.auth.sending_limits import SendingLimits
from mailserver.config import Config
from mailserver.core import metrics
from mailserver.core.connection import Goodbyes, LineConnection, SessionFactory
from mailserver.core.lines import SMTP_LINES, LineRefused
from mailserver.core.throttle import LoginThrottle
from mailserver.errors import ReplyError
from mailserver.interfaces import (
    IDeliveryRouter,
    IMessageHook,
    IRecipientDirectory,
    ISubmitUrls,
    MailboxId,
    RecipientDsn,
    Resolution,
)
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp import auth, grammar
from mailserver.smtp.burl import BurlCommands
from mailserver.smtp.defences import SessionDefences
from mailserver.smtp.reception import MessageReception
from mailserver.smtp.submission import SubmissionCommands
from mailserver.smtp.xclient import XclientCommands

log = logger(__name__)

#: Longest command line we read (core/lines.py states why: SMTP_LINES).
MAX_COMMAND_LINE = SMTP_LINES.max_line

#: 421 closes the session (RFC 5321 3.8); RFC 3463 X.4.2 timeout, X.7.0, X.3.2 shutdown.
GOODBYES = Goodbyes(timeout="421 4.4.2 {hostname} Error: timeout exceeded",
                    errors="421 4.7.0 {hostname} Error: too many errors",
                    shutdown="421 4.3.2 Service shutting down")


@dataclass
class Envelope:
    """One mail transaction; RSET and the end of DATA replace it, the session stays."""

    sender: Address
    body_8bit: bool = False
    smtputf8: bool = False
    recipients: list[Address] = field(default_factory=list)
    mailboxes: set[MailboxId] = field(default_factory=set)
    #: Remote addresses for the outbound queue: recipients in other domains (submission
    #: only) and remote targets of local aliases (forwarding, every port). Ordered, unique.
    remote: dict[str, None] = field(default_factory=dict)
    #: DSN (RFC 3461): RET and ENVID of MAIL, and each RCPT's NOTIFY/ORCPT with what it
    #: resolved to; REQUIRETLS (RFC 8689) of MAIL.
    ret: str = ""
    envid: str = ""
    dsn: list[RecipientDsn] = field(default_factory=list)
    requiretls: bool = False


@dataclass(frozen=True)
class SessionPolicy:
    """What a listener allows: the MX (port 25), submission (587) and submissions (465)
    differ only here (see smtp/listener.py for the three policies)."""

    name: str = "smtp"
    #: TLS is on from the first byte (RFC 8314 implicit TLS); no STARTTLS offered.
    implicit_tls: bool = False
    #: AUTH (RFC 4954) is offered; on the MX it is refused with 503.
    offer_auth: bool = False
    #: MAIL needs a successful AUTH first (RFC 6409 4.3: 530 5.7.0).
    require_auth: bool = False
    #: Authenticated users may send to any domain (RFC 6409 3.3); everyone else, and
    #: every listener without this, may only send to local domains.
    relay_for_authenticated: bool = False
    #: The envelope sender must be the user or one of its aliases (RFC 6409 6.1).
    check_sender: bool = False
    #: Add Message-ID and Date when missing (RFC 6409 8.2, 8.3).
    add_missing_headers: bool = False


class SMTPServerFactory(SessionFactory["SMTPSession"]):
    """Builds one SMTPSession per connection, sharing config and delivery target."""

    def __init__(
        self,
        config: Config,
        target: IDeliveryRouter,
        tls_options: interfaces.IOpenSSLServerConnectionCreator | None = None,
        policy: SessionPolicy | None = None,
        instance: int = 0,
        portal: Portal | None = None,
        senders: IRecipientDirectory | None = None,
        login_throttle: LoginThrottle | None = None,
        abuse: AbuseControl | None = None,
        sending_limits: SendingLimits | None = None,
        blocklists: Blocklists | None = None,
        reactor: Any = None,
        message_hook: IMessageHook | None = None,
        burl: ISubmitUrls | None = None,
    ) -> None:
        self.policy = policy or SessionPolicy()
        super().__init__(self.policy.name, instance)
        self.config = config
        #: Where every recipient is routed and every message delivered (local mailboxes,
        #: the relay queue, or both: the session does not know which).
        self.target = target
        self.tls_options = tls_options
        #: The login portal (AUTH); None: AUTH is never possible.
        self.portal = portal
        #: Who may send as whom (RFC 6409 6.1); None: every sender is refused.
        self.senders = senders
        #: Failed AUTHs per client address (shared by the submission listeners).
        self.login_throttle = login_throttle or LoginThrottle()
        #: The shared abuse control and the users' sending limits (smtp/defences.py);
        #: None: no such checks (unit tests).
        self.abuse = abuse
        self.sending_limits = sending_limits
        #: DNS blocklists checked before the banner on port 25 (abuse/dnsbl.py).
        self.blocklists = blocklists
        #: Wraps each message's transaction to hold its content until checked (port 25)
        #: or DKIM-signed (submission): senderauth's, set by app/; None: neither.
        self.message_hook = message_hook
        #: BURL (RFC 4468): the octets of a submit+ URL from our own store
        #: (imap/urlauth.SubmitUrls); None: no BURL on this listener.
        self.burl = burl
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor

    def new_session(self, number: int) -> SMTPSession:
        return SMTPSession(self, number)


class SMTPSession(SessionDefences, SubmissionCommands, BurlCommands, MessageReception,
                  XclientCommands, LineConnection):
    """One ESMTP connection (the reading, waiting, error limit and timeouts are
    core/connection.py's, the framing rules core/lines.py's SMTP_LINES). Its attributes
    are declared, with their types, once for it and its mixins in state.py; __init__
    gives each its first value."""

    rules = SMTP_LINES
    goodbyes = GOODBYES
    suspend_timeout_while_waiting = True  # our fsync is not the client's silence

    def __init__(self, factory: SMTPServerFactory, number: int) -> None:
        self.factory = factory
        self.config = factory.config
        self.session_id = f"{factory.id_prefix}-{number}"
        self.helo = None
        self.esmtp = False
        self.tls_active = factory.policy.implicit_tls
        self.envelope = None
        self.user = None
        self.auth_failures = 0
        self._sasl = None
        self.init_connection()
        # Message reception
        self._decoder = None
        self._receiving = False  # reading DATA lines or a BDAT chunk, not commands
        self._transaction = None
        self._headers = None
        self._message_id = ""
        self._bdat_last = False
        self._bdat_octets = 0  # raw octets of this transaction's chunks, for the replies
        self._bdat_failed = None

    # -- connection lifecycle ------------------------------------------------------------

    def greeting(self) -> None:
        self.start_greeting()  # after the pregreet wait on port 25 (smtp/defences.py)

    def send_banner(self) -> None:
        self._send(Reply(220, None, f"{self.config.hostname} ESMTP mailserver"))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self._holding and self.talked_first(data):
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.cancel_greeting()
        super().connectionLost(reason)
        self._abort_transaction()

    def on_close(self) -> None:
        self._abort_transaction()

    # -- input ---------------------------------------------------------------------------

    def take_raw(self) -> bool:
        """DATA lines and BDAT chunks go to the message decoder (reception.py)."""
        if self._receiving:
            self._feed_message()
            return True
        return False

    def line_refused(self, refused: LineRefused) -> None:
        self._sasl = None  # an unreadable SASL response ends the exchange
        error = refused.error
        self._error(Reply(int(error.status), error.code, error.text))

    def line_received(self, line: bytes) -> None:
        if self._sasl is not None:
            self._sasl_response(line)
        else:
            self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        try:
            command = grammar.parse_command(line)
        except ReplyError as e:
            self._error(e.reply)
            return
        handler = getattr(self, "do_" + type(command).__name__.upper(), None)
        if handler is None:  # pragma: no cover - grammar and session disagree
            self._error(Reply(502, "5.5.1", "Command not implemented"))
            return
        try:
            result = handler(command)
        except ReplyError as e:
            self._error(e.reply)
            return
        if isinstance(result, Deferred):
            self._wait_for(result)

    # -- output --------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if reply.code >= 400:
            metrics.smtp_refusal(self.factory.policy.name, reply.enhanced or "")
        self.emit(reply.encode())

    def emit(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _error(self, reply: Reply) -> None:
        """A refused command; 5xx ones count towards the error limit."""
        self._send(reply)
        if reply.code >= 500:
            self._count_error()

    # -- commands without a transaction ---------------------------------------------------

    def ehlo_keywords(self) -> list[str]:
        """RFC 5321 4.1.1.1 and each extension's RFC."""
        keywords = [
            "PIPELINING",                                    # RFC 2920
            f"SIZE {self.config.limits.message_size}",       # RFC 1870
            "8BITMIME",                                      # RFC 6152
            "SMTPUTF8",                                      # RFC 6531
            "ENHANCEDSTATUSCODES",                           # RFC 2034
            "CHUNKING",                                      # RFC 3030
            "DSN",                                           # RFC 3461
        ]
        if self.tls_active:
            # RFC 8689 4: only where the session itself is protected by TLS.
            keywords.append("REQUIRETLS")                    # RFC 8689
        if self.factory.tls_options is not None and not self.tls_active:
            keywords.append("STARTTLS")                      # RFC 3207
        if self._auth_possible():
            keywords.append("AUTH " + " ".join(auth.MECHANISMS))  # RFC 4954
        if self.factory.burl is not None:
            keywords.append("BURL imap")                     # RFC 4468 3.1
        if self.xclient_usable():  # only to cluster.trusted_proxies (smtp/xclient.py)
            keywords.append("XCLIENT ADDR PORT NAME HELO PROTO LOGIN DESTADDR DESTPORT")
        return keywords

    def do_EHLO(self, command: grammar.Ehlo) -> None:
        self._reset_envelope()  # RFC 5321 4.1.4: EHLO resets the state like RSET
        self.helo, self.esmtp = command.domain, True
        lines = [f"{self.config.hostname} Hello {command.domain} {address_literal(self.peer_ip)}"]
        self._send(Reply(250, None, tuple(lines + self.ehlo_keywords())))

    def do_HELO(self, command: grammar.Helo) -> None:
        self._reset_envelope()
        self.helo, self.esmtp = command.domain, False
        self._send(Reply(250, None, f"{self.config.hostname} Hello {command.domain}"))

    def do_NOOP(self, command: grammar.Noop) -> None:
        self._send(Reply(250, "2.0.0", "Ok"))

    def do_RSET(self, command: grammar.Rset) -> None:
        self._reset_envelope()
        self._send(Reply(250, "2.0.0", "Ok"))

    def do_QUIT(self, command: grammar.Quit) -> None:
        self._send(Reply(221, "2.0.0", f"{self.config.hostname} closing connection"))
        self._close()

    def do_HELP(self, command: grammar.Help) -> None:
        self._send(Reply(214, "2.0.0", (
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS"
            + (" AUTH" if self.factory.policy.offer_auth else ""),
            "See RFC 5321",
        )))

    def do_VRFY(self, command: grammar.Vrfy) -> None:
        # RFC 5321 3.5.3: 252 when we will not confirm; we never disclose who exists.
        self._send(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and "
                                       "attempt delivery"))

    def do_STARTTLS(self, command: grammar.StartTls) -> None:
        if self.tls_active:
            raise ReplyError(503, "5.5.1", "TLS already active")
        if self.factory.tls_options is None:
            raise ReplyError(502, "5.5.1", "STARTTLS not available")
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        # RFC 3207 4.2 and the STARTTLS injection attacks (CVE-2011-0411): whatever the
        # client pipelined after STARTTLS in plaintext is thrown away, never executed.
        self.discard_input()
        self.transport.startTLS(self.factory.tls_options)  # type: ignore[union-attr]
        self.tls_active = True
        # RFC 3207 4.2: forget everything learnt before TLS; the client must EHLO again
        # (and AUTH again, if it had authenticated in the clear where that is allowed).
        self.helo, self.esmtp, self.user = None, False, None
        self._reset_envelope()

    # -- the mail transaction --------------------------------------------------------------

    def do_MAIL(self, command: grammar.Mail) -> None:
        if self.helo is None:
            raise ReplyError(503, "5.5.1", "Error: send HELO/EHLO first")
        if self.envelope is not None:
            raise ReplyError(503, "5.5.1", "Error: nested MAIL command")
        policy = self.factory.policy
        if policy.require_auth and self.user is None:
            # RFC 6409 4.3 / RFC 4954 6: 530 5.7.0.
            raise ReplyError(530, "5.7.0", "Authentication required")
        if not self.esmtp and (command.size is not None or command.body or command.smtputf8
                               or command.ret or command.envid or command.requiretls):
            raise ReplyError(555, "5.5.4", "MAIL parameters need EHLO")
        if command.requiretls and not self.tls_active:
            # RFC 8689 4: offered only over TLS; elsewhere it is a parameter we do not
            # offer (RFC 5321 4.1.1.11: 555). Nothing would protect the first hop.
            raise ReplyError(555, "5.5.4", "Unsupported parameter: REQUIRETLS (needs TLS)")
        limit = self.config.limits.message_size
        if command.size is not None and command.size > limit:
            # RFC 1870 6.1
            raise ReplyError(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if not command.sender.is_ascii and not command.smtputf8:
            # RFC 6531 3.5: 550 for MAIL, 553 for RCPT.
            raise ReplyError(550, "5.6.7", "Non-ASCII sender address needs SMTPUTF8")
        if policy.check_sender:
            self._check_sender(command.sender)
        self.check_mail_limits()
        self.envelope = Envelope(
            sender=command.sender,
            body_8bit=command.body == "8BITMIME",
            smtputf8=command.smtputf8,
            ret=command.ret,
            envid=command.envid,
            requiretls=command.requiretls,
        )
        self._send(Reply(250, "2.1.0", "Ok"))

    def do_RCPT(self, command: grammar.Rcpt) -> Deferred[None] | None:
        envelope = self.envelope
        if envelope is None:
            raise ReplyError(503, "5.5.1", "Error: need MAIL command")
        if len(envelope.recipients) >= self.config.limits.recipients_per_message:
            # RFC 5321 4.5.3.1.10: 452 tells the client to send the rest later.
            self._send(Reply(452, "4.5.3", "Error: too many recipients"))
            return None
        rcpt = command.recipient
        if not rcpt.is_ascii and not envelope.smtputf8:
            raise ReplyError(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8")
        if command.orcpt_unitext and not envelope.smtputf8:
            # RFC 6533 3: raw UTF-8 in ORCPT (utf-8-addr-unitext) only with SMTPUTF8;
            # otherwise its \x{HEX} form (utf-8-addr-xtext).
            raise ReplyError(501, "5.5.4", "Syntax: ORCPT with raw UTF-8 needs SMTPUTF8 "
                                           "(RFC 6533)")
        if not self.esmtp and (command.dsn.notify or command.dsn.orcpt_type):
            raise ReplyError(555, "5.5.4", "RCPT parameters need EHLO")
        try:
            resolution = self._resolve(rcpt, command.postmaster)
        except ReplyError as e:
            if e.reply.enhanced != "5.1.1":
                raise
            late = self.unknown_recipient(str(rcpt), e)  # the harvest tarpit
            if late is None:
                raise
            return late
        self.check_recipient_limits(str(rcpt))
        envelope.recipients.append(rcpt)
        envelope.mailboxes.update(resolution.mailboxes)
        envelope.remote.update(dict.fromkeys(resolution.remote))
        given = command.dsn
        if given.notify or given.orcpt_type or resolution.remote:
            # <Postmaster> was resolved as postmaster@ our first domain (_resolve).
            final = f"postmaster@{self.config.domains.local[0]}" if command.postmaster \
                else str(rcpt)
            envelope.dsn.append(RecipientDsn(
                final, tuple(sorted(given.notify)), given.orcpt_type, given.orcpt,
                resolution.mailboxes, resolution.remote))
        self._send(Reply(250, "2.1.5", "Ok"))
        return None

    def _resolve(self, rcpt: Address, postmaster: bool) -> Resolution:
        """Local mailboxes and remote addresses for one recipient, or the ReplyError
        refusing it. Where an address goes is the router's business; whether this
        client may relay at all is the port's policy and the AUTH state, ours."""
        if postmaster:
            # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
            domains = self.config.domains.local
            if not domains:
                raise ReplyError(550, "5.1.1", "Error: no postmaster here")
            address = f"postmaster@{domains[0]}"
        else:
            address = str(rcpt)
        relay = self.factory.policy.relay_for_authenticated and bool(self.user)
        return self.factory.target.route(address, relay)

    def _abort_transaction(self) -> None:
        if self._transaction is not None:
            self._transaction.abort()
            self._transaction = None

    def _reset_envelope(self) -> None:
        self.envelope = None
        self._decoder = None
        self._headers = None
        self._bdat_octets = 0
        self._bdat_failed = None
        self._abort_transaction()
