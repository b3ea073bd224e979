"""The ESMTP session (RFC 5321) of the `smtp`, `submission` and `submissions` listeners.

One state machine per connection, one command at a time: while a command waits on a
Deferred (the fsync behind the 250 after DATA), later pipelined input stays in our
buffer and is not read until the reply has been sent (RFC 2920 3.1: replies in order).
That is the defect of twisted.mail's server (twisted#8126) this module exists to avoid.

Everything that parses lives in grammar.py and data.py; who is local lives behind
IRecipientDirectory; where mail goes lives behind IDeliveryTarget and IOutboundQueue.
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
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailserver.address import Address
from mailserver.config import Config
from mailserver.core.flow import CLOSE_GRACE, FlowControl
from mailserver.core.throttle import FailureThrottle
from mailserver.errors import ReplyError
from mailserver.interfaces import (
    IDeliveryTarget,
    IOutboundQueue,
    IRecipientDirectory,
    MailboxId,
)
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp import auth, grammar
from mailserver.smtp.data import ChunkDecoder, DotDecoder
from mailserver.smtp.fanout import MessageFanout
from mailserver.smtp.headers import HeaderInspector
from mailserver.smtp.reception import MessageReception
from mailserver.smtp.submission import SubmissionCommands
from mailserver.smtp.trace import address_literal

log = logger(__name__)

#: Longest command line we read (RFC 5321 4.5.3.1.4 asks for 512; extensions such as
#: SMTPUTF8 and AUTH= make real lines longer, so we allow what Postfix allows).
MAX_COMMAND_LINE = 2048
#: Pipelined input held while a command is pending before we stop reading the socket.

SERVICE_UNAVAILABLE = Reply(421, "4.3.2", "Service shutting down")  # RFC 3463 X.3.2


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


class SMTPServerFactory(Factory):
    """Builds one SMTPSession per connection, sharing config, directory and target."""

    def __init__(
        self,
        config: Config,
        directory: IRecipientDirectory,
        target: IDeliveryTarget,
        tls_options: interfaces.IOpenSSLServerConnectionCreator | None = None,
        policy: SessionPolicy | None = None,
        instance: int = 0,
        portal: Portal | None = None,
        queue: IOutboundQueue | None = None,
        senders: IRecipientDirectory | None = None,
        auth_throttle: FailureThrottle | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.target = target
        self.tls_options = tls_options
        self.policy = policy or SessionPolicy()
        #: The login portal (AUTH); None: AUTH is never possible.
        self.portal = portal
        #: The outbound queue (IOutboundQueue); None until mailserver.queue exists, and
        #: then remote recipients get 451 4.3.5 so nothing is lost.
        self.queue = queue
        self.senders = senders
        #: Failed AUTHs per client address (shared by the submission listeners).
        self.auth_throttle = auth_throttle or FailureThrottle()
        #: senderauth's hook (listener.py sets it): wraps each message's transaction
        #: to check it (smtp) or DKIM-sign it (submission); None: neither.
        self.message_hook: Any = None
        # Session ids name the process too when there are workers: "smtp-12" / "w2-smtp-12".
        self.id_prefix = f"w{instance}-{self.policy.name}" if instance else self.policy.name
        self.sessions_started = 0
        self.sessions: set[SMTPSession] = set()
        self.shutting_down = False

    def buildProtocol(self, addr: interfaces.IAddress | None) -> SMTPSession:
        self.sessions_started += 1
        session = SMTPSession(self, self.sessions_started)
        return session

    def shut_down(self) -> None:
        """Server stopping: every session says 421 (RFC 5321 3.8) and closes; one that is
        committing a message sends its reply first."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.shut_down()


class SMTPSession(SubmissionCommands, MessageReception, FlowControl, Protocol, TimeoutMixin):
    """One ESMTP connection."""

    def __init__(self, factory: SMTPServerFactory, number: int) -> None:
        self.factory = factory
        self.config = factory.config
        self.session_id = f"{factory.id_prefix}-{number}"
        self.peer_ip = "unknown"
        self.helo: str | None = None
        self.esmtp = False
        self.tls_active = factory.policy.implicit_tls
        self.envelope: Envelope | None = None
        self.errors = 0
        #: The authenticated user's address (RFC 4954), None before AUTH.
        self.user: str | None = None
        self.auth_failures = 0
        self._sasl: auth.SASLExchange | None = None
        # Input handling
        self._buffer = bytearray()
        self._discarding_long_line = False
        self._busy = False
        self._processing = False
        self._closing = False
        self.init_flow()
        # Message reception
        self._decoder: DotDecoder | ChunkDecoder | None = None
        self._receiving = False  # reading DATA lines or a BDAT chunk, not commands
        self._transaction: MessageFanout | None = None
        self._headers: HeaderInspector | None = None
        self._message_id = ""
        self._bdat_last = False
        self._bdat_octets = 0  # raw octets of this transaction's chunks, for the replies
        self._bdat_failed: Reply | None = None

    # -- connection lifecycle ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer_ip = getattr(peer, "host", "unknown")
        self.factory.sessions.add(self)
        self.start_flow()
        self.setTimeout(self.config.limits.command_timeout)
        self._send(Reply(220, None, f"{self.config.hostname} ESMTP mailserver"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self._closing = True
        self._abort_transaction()
        self.factory.sessions.discard(self)

    def shut_down(self) -> None:
        if self._busy:
            return  # _wait_for's callback sends the reply, then closes
        self._send(SERVICE_UNAVAILABLE)
        self._close()

    def timeoutConnection(self) -> None:
        if self.abort_if_not_reading():
            return
        log.info("{session} timeout from {peer}", session=self.session_id, peer=self.peer_ip)
        self._send(Reply(421, "4.4.2", f"{self.config.hostname} Error: timeout exceeded"))
        self._close()
        self.setTimeout(CLOSE_GRACE)  # ... unless the client never reads that reply

    # -- input ---------------------------------------------------------------------------

    def _process(self) -> None:
        """Handle buffered input until it runs out or a command has to wait."""
        if self._processing:
            return
        self._processing = True
        try:
            while not self.held() and self._buffer:
                if self._receiving:
                    self._feed_message()
                    continue
                try:
                    line = self._next_line()
                except ReplyError as refused:
                    self._sasl = None  # an unreadable SASL response ends the exchange
                    self._error(refused.reply)  # that line is consumed; go on
                    continue
                if line is None:
                    break
                if self._sasl is not None:
                    self._sasl_response(line)
                else:
                    self._handle_line(line)
        finally:
            self._processing = False

    def _next_line(self) -> bytes | None:
        """One CRLF-terminated line without its CRLF, or None until one has arrived.

        Raises ReplyError for a line that was read but is refused (overlong, bare LF).
        """
        end = self._buffer.find(b"\n")
        if self._discarding_long_line:
            if end < 0:
                self._buffer.clear()
                return None
            del self._buffer[: end + 1]
            self._discarding_long_line = False
            raise ReplyError(500, "5.5.2", "Line too long")
        if end < 0:
            if len(self._buffer) > MAX_COMMAND_LINE:
                # Memory stays bounded: drop what we have and everything up to the next LF.
                self._buffer.clear()
                self._discarding_long_line = True
            return None
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        if len(line) > MAX_COMMAND_LINE:
            raise ReplyError(500, "5.5.2", "Line too long")
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            # RFC 5321 2.3.8: lines end with CRLF only; bare CR/LF is how smuggling starts.
            raise ReplyError(500, "5.5.2", "Syntax error: bare CR or LF in command")
        return line[:-2]

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

    def _wait_for(self, d: Deferred[Any]) -> None:
        """Hold all further input until `d` fires (RFC 2920: replies in order)."""
        self._busy = True
        self.setTimeout(None)  # our own disk is not the client's fault

        def done(_: object) -> None:
            self._busy = False
            if self._closing:
                return
            if self.factory.shutting_down:
                self.shut_down()
                return
            self.setTimeout(self.config.limits.command_timeout)
            self._process()
            self.resume_reading()

        d.addBoth(done)

    # -- output --------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if self.transport is not None:
            self.transport.write(reply.encode())

    def _error(self, reply: Reply) -> None:
        """A refused command; too many of them ends the session (like Postfix's
        smtpd_hard_error_limit), so a flood cannot hold a connection forever."""
        self._send(reply)
        if reply.code >= 500:
            self.errors += 1
            if self.errors >= self.config.limits.errors_per_session:
                log.info("{session} too many errors from {peer}", session=self.session_id,
                         peer=self.peer_ip)
                self._send(Reply(421, "4.7.0", f"{self.config.hostname} Error: too many "
                                 "errors"))
                self._close()

    def _close(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._abort_transaction()
        self.close_transport()

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
        ]
        if self.factory.tls_options is not None and not self.tls_active:
            keywords.append("STARTTLS")                      # RFC 3207
        if self._auth_possible():
            keywords.append("AUTH " + " ".join(auth.MECHANISMS))  # RFC 4954
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
        self._buffer.clear()
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
        if not self.esmtp and (command.size is not None or command.body or command.smtputf8):
            raise ReplyError(555, "5.5.4", "MAIL parameters need EHLO")
        limit = self.config.limits.message_size
        if command.size is not None and command.size > limit:
            # RFC 1870 6.1
            raise ReplyError(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if not command.sender.is_ascii and not command.smtputf8:
            # RFC 6531 3.5: 550 for MAIL, 553 for RCPT.
            raise ReplyError(550, "5.6.7", "Non-ASCII sender address needs SMTPUTF8")
        if policy.check_sender:
            self._check_sender(command.sender)
        self.envelope = Envelope(
            sender=command.sender,
            body_8bit=command.body == "8BITMIME",
            smtputf8=command.smtputf8,
        )
        self._send(Reply(250, "2.1.0", "Ok"))

    def do_RCPT(self, command: grammar.Rcpt) -> None:
        envelope = self.envelope
        if envelope is None:
            raise ReplyError(503, "5.5.1", "Error: need MAIL command")
        if len(envelope.recipients) >= self.config.limits.recipients_per_message:
            # RFC 5321 4.5.3.1.10: 452 tells the client to send the rest later.
            self._send(Reply(452, "4.5.3", "Error: too many recipients"))
            return
        rcpt = command.recipient
        if not rcpt.is_ascii and not envelope.smtputf8:
            raise ReplyError(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8")
        mailboxes, remote = self._resolve(rcpt, command.postmaster)
        envelope.recipients.append(rcpt)
        envelope.mailboxes.update(mailboxes)
        envelope.remote.update(dict.fromkeys(remote))
        self._send(Reply(250, "2.1.5", "Ok"))

    def _resolve(self, rcpt: Address,
                 postmaster: bool) -> tuple[tuple[MailboxId, ...], tuple[str, ...]]:
        """Local mailboxes and remote addresses for one recipient, or the ReplyError
        refusing it."""
        if postmaster:
            # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
            domains = self.config.domains.local
            if not domains:
                raise ReplyError(550, "5.1.1", "Error: no postmaster here")
            address = f"postmaster@{domains[0]}"
        else:
            if not self.config.is_local_domain(rcpt.domain):
                if not (self.factory.policy.relay_for_authenticated and self.user):
                    # Only authenticated submission relays (RFC 5321 3.6.1, 7.1; RFC
                    # 6409 3.3); the MX never does, whoever connects.
                    raise ReplyError(550, "5.7.1", "Error: relay access denied")
                self._need_queue(str(rcpt))
                return (), (str(rcpt),)
            address = str(rcpt)
        resolution = self.factory.directory.resolve(address)
        if resolution.remote:
            # Forwarding: an alias with targets elsewhere. The queue relays them with the
            # original envelope sender (no SRS rewriting; SPF at the far end may object).
            self._need_queue(address)
        if resolution.is_empty:
            raise ReplyError(550, "5.1.1", "Error: user unknown")
        return resolution.mailboxes, resolution.remote

    def _need_queue(self, rcpt: str) -> None:
        if self.factory.queue is None:
            # No relay queue in this build: a temporary failure keeps the sender
            # retrying instead of losing a copy.
            log.warn("{session} {rcpt} needs the relay queue, which is missing",
                     session=self.session_id, rcpt=rcpt)
            raise ReplyError(451, "4.3.5", "Error: relaying not available yet; try later")

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
