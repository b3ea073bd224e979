"""Message submission (RFC 6409) in the SMTP session: AUTH (RFC 4954) and the sender rule.

A mixin of SMTPSession, kept apart so the session module stays about the SMTP state
machine. The listeners that use it (587 and 465) are described by their SessionPolicy
(smtp/listener.py); the MX (25) never reaches any of this but do_AUTH's 503.

Decisions, each as Postfix does it:
- AUTH PLAIN and LOGIN, only inside TLS (unless auth.allow_plaintext_without_tls):
  refused before TLS with 538 5.7.11 (RFC 4954 6) and not advertised.
- A wrong password costs the checker's delay (0.75 s) and counts as an error of the
  session; AUTH_FAILURE_LIMIT of them close the connection with 421 (Postfix's
  smtpd_hard_error_limit plays that part there; ours is lower because only AUTH
  failures count here). Across connections, core/throttle.py refuses an address with
  too many recent failures (421 4.7.0) before any password is checked.
- The envelope sender must be the user's own address (any +extension) or an alias that
  reaches the user (directory.may_send_as); the null sender <> is refused too, as
  Postfix's reject_sender_login_mismatch does: 553 5.7.1 (RFC 6409 6.1 lets the MSA
  refuse, RFC 3463 X.7.1 "delivery not authorized").
- The From header is held to the same rule (submission.check_from_header, on by
  default; mox does the same): every address of it must be one the user may send as,
  or the message is refused at the end of data with 550 5.7.1 (RFC 3463 X.7.1) and
  nothing is stored. Otherwise any user could put a colleague's name and address in the
  field every client shows as the author; the envelope sender alone is seen by nobody.
  Refused as well, because a receiving client might read them otherwise than we do:
  two From fields (RFC 5322 3.6 allows one), a From we cannot parse without guessing
  (smtp/headers.py from_addresses), group syntax, and a header section too long for
  the HeaderInspector to have seen all of it. A message without From is accepted
  unchanged: it names no author to forge, and RFC 6409 8.1 only permits (MAY) the MSA
  to add one. Resent-From and Sender are not checked.
- The Received header says ESMTPSA (RFC 3848) but does not name the user (Postfix's
  smtpd_sasl_authenticated_header = no): the login name is nobody else's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.address import Address
from mailserver.auth.realm import IMailUser
from mailserver.auth.sasl import login_name
from mailserver.core import metrics
from mailserver.errors import ReplyError
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp import auth, grammar
from mailserver.smtp.headers import BadFromField, HeaderInspector, from_addresses
from mailserver.smtp.state import SessionState

log = logger(__name__)

#: Failed AUTH attempts after which a session is closed (each also counts as an error).
AUTH_FAILURE_LIMIT = 3


class SubmissionCommands(SessionState):
    """AUTH and the sender check, for SMTPSession."""

    def _auth_possible(self) -> bool:
        """AUTH is offered: a submission port, inside TLS unless the operator allowed
        passwords in the clear (RFC 4954 4 and 14: not before TLS). A trusted proxy's
        link counts as secured (it did TLS with the client: core/peer.py)."""
        return (self.factory.policy.offer_auth and self.factory.portal is not None
                and (self.tls_active or self.config.auth.allow_plaintext_without_tls
                     or self.xclient_allowed()))

    if TYPE_CHECKING:
        def xclient_allowed(self) -> bool: ...

    def do_AUTH(self, command: grammar.Auth) -> None:
        """RFC 4954 4: AUTH mechanism [initial-response]."""
        if not self.factory.policy.offer_auth or self.factory.portal is None:
            raise ReplyError(503, "5.5.1", "AUTH not available on this port; use submission")
        if not self.esmtp:
            raise ReplyError(503, "5.5.1", "Error: send EHLO first")
        if self.user is not None:
            raise ReplyError(503, "5.5.1", "Error: already authenticated")
        if self.envelope is not None:
            raise ReplyError(503, "5.5.1", "Error: AUTH not permitted during a mail "
                                           "transaction")
        if not self._auth_possible():
            # RFC 4954 6: 538 when the mechanism needs an encrypted connection.
            raise ReplyError(538, "5.7.11", "Encryption required for requested "
                                            "authentication mechanism")
        exchange = auth.SASLExchange(command.mechanism)
        if self.factory.login_throttle.blocked(self.peer_ip, self.factory.policy.name):
            # Reconnecting does not buy a guesser more tries (core/throttle.py).
            log.info("{session} AUTH refused: too many failures from {peer}",
                     session=self.session_id, peer=self.peer_ip)
            self._send(Reply(421, "4.7.0", f"{self.config.hostname} Error: too many failed "
                             "authentications from your address; try again later"))
            self._close()
            return
        self._sasl_step(exchange, exchange.start(command.initial))

    def _sasl_response(self, line: bytes) -> None:
        """One client line inside an AUTH exchange (never parsed as a command)."""
        exchange, self._sasl = self._sasl, None
        assert exchange is not None
        try:
            step = exchange.respond(line)
        except ReplyError as e:
            self._error(e.reply)
            return
        self._sasl_step(exchange, step)

    def _sasl_step(self, exchange: auth.SASLExchange, step: auth.Step) -> None:
        if isinstance(step, auth.Challenge):
            self._sasl = exchange
            # Written raw: Reply would strip the SP of an empty challenge ("334 ").
            self.transport.write(f"334 {step.text}\r\n".encode("ascii"))  # type: ignore[union-attr]
            return
        portal = self.factory.portal
        assert portal is not None
        d: Deferred[Any] = metrics.counted_login(
            "smtp", portal.login(step.credentials, None, IMailUser))
        mechanism = exchange.mechanism

        def accepted(result: tuple[Any, Any, Any]) -> None:
            _interface, avatar, _logout = result
            self.user = avatar.address
            log.info("{session} AUTH {mechanism} accepted for {user} from {peer}",
                     session=self.session_id, mechanism=mechanism, user=self.user,
                     peer=self.peer_ip)
            self._send(Reply(235, "2.7.0", "Authentication successful"))

        def refused(failure: Failure) -> None:
            if failure.check(UnauthorizedLogin):
                self.auth_failures += 1
                self.factory.login_throttle.failed(self.peer_ip, self.factory.policy.name,
                                                  login_name(step.credentials))
                log.info("{session} AUTH {mechanism} failed from {peer}",
                         session=self.session_id, mechanism=mechanism, peer=self.peer_ip)
                self._error(Reply(535, "5.7.8", "Authentication credentials invalid"))
                if self.auth_failures >= AUTH_FAILURE_LIMIT and not self._closing:
                    self._send(Reply(421, "4.7.0", f"{self.config.hostname} Error: too "
                                     "many failed authentications"))
                    self._close()
                return
            log.failure("{session} AUTH failed", failure, session=self.session_id)
            # RFC 4954 6: 454 4.7.0 for a temporary failure of the server.
            self._send(Reply(454, "4.7.0", "Temporary authentication failure"))

        d.addCallbacks(accepted, refused)
        self._wait_for(d)

    def _check_sender(self, sender: Address) -> None:
        """RFC 6409 6.1: the MSA checks that the submitter may use this sender. The null
        sender is refused too (as Postfix's reject_sender_login_mismatch does): it is for
        bounces, which a user's client has no reason to send, and mail from <> can
        never come back to anyone when it fails."""
        senders = self.factory.senders
        user = self.user
        if (user is None or senders is None or sender.is_null
                or not senders.may_send_as(user, str(sender))):
            log.info("{session} {user} may not send as <{sender}>", session=self.session_id,
                     user=user or "(none)", sender=str(sender))
            raise ReplyError(553, "5.7.1", f"{sender.bracketed()}: Sender address rejected:"
                                           f" not owned by user {user or '(none)'}")

    def _from_refusal(self, headers: HeaderInspector) -> Reply | None:
        """At the end of data: why the From header may not be sent by this user, or None
        (see the module docstring for the rule and the forms refused)."""
        fields = headers.from_fields
        user = self.user or "(none)"
        if headers.gave_up:
            why = "Error: header section too long to check the From header"
        elif not fields:
            return None
        elif len(fields) > 1:
            why = f"Error: {len(fields)} From header fields; RFC 5322 3.6 allows one"
        else:
            try:
                addresses = from_addresses(fields[0])
            except BadFromField as e:
                why = f"Error: From header {e}"
            else:
                senders = self.factory.senders
                refused = [a for a in addresses if self.user is None or senders is None
                           or not senders.may_send_as(self.user, a)]
                if not refused:
                    return None
                why = (f"<{refused[0]}>: From header address rejected: not owned by "
                       f"user {user}")
        log.info("{session} {user} refused at end of data: {why}", session=self.session_id,
                 user=user, why=why)
        return Reply(550, "5.7.1", why)
