"""The SMTP session's side of the abuse defences (mailserver/abuse/): the pregreet
test and the per-address rates and directory-harvest tarpit on port 25, the sending
quotas on submission. The counting is the shared abuse control's; this decides the
replies.

Replies, and why:
- a client listed by the DNS blocklists at or past `abuse.dnsbl_threshold`: 554 5.7.1
  instead of the greeting (RFC 5321 3.1), then close (abuse/dnsbl.py);
- a client that talks before our banner (port 25, `abuse.pregreet_wait` > 0): 554 5.7.1
  and close. RFC 5321 4.3.2 allows 554 instead of 220; a real MTA waits for the
  greeting (RFC 5321 3.1), so this is a bot, and a permanent answer stops its retries
  (postscreen's `pregreet_action = drop` also just hangs up);
- too many messages or recipients from one address per hour: 450 4.7.1 (Postfix's
  smtpd_client_message_rate_limit), the sender retries later;
- RCPTs to unknown users past `abuse.unknown_recipients` per hour: each 550 waits
  `tarpit_delay`; past twice that, 421 4.7.0 and close (RFC 5321 3.8);
- greylisting (port 25, `abuse.greylist_delay` > 0): 450 4.7.1 at RCPT (RFC 6647);
- a submission user over its hourly messages: 451 4.7.1 at MAIL (temporary, the
  client's queue retries); over its recipients per day: 550 5.7.1 at RCPT (a hard cap:
  that recipient is refused, the client must not keep retrying it). Both are reserved
  when MAIL/RCPT is accepted, atomically across processes, so parallel sessions of a
  stolen account cannot together pass the quota; an abandoned transaction still counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from mailserver.abuse.control import AbuseControl, event
from mailserver.abuse.dnsbl import Score
from mailserver.core import submission
from mailserver.errors import ReplyError
from mailserver.reply import Reply
from mailserver.smtp.state import SessionState


class SessionDefences(SessionState):
    """Mixed into SMTPSession (its attributes are declared in state.py)."""

    _lost: bool
    _pregreet_call: IDelayedCall | None = None
    #: Checks still holding the banner back (pregreet wait, DNS blocklists).
    _holding = 0

    if TYPE_CHECKING:
        def close(self) -> None: ...
        def send_banner(self) -> None: ...

    def _abuse(self) -> AbuseControl | None:
        return self.factory.abuse

    # -- before the banner ---------------------------------------------------------------

    def start_greeting(self) -> None:
        """The banner now, or on port 25 once the pregreet wait is over and the DNS
        blocklists have answered (both run at once, like postscreen's)."""
        abuse = self._abuse()
        if (abuse is None or self.factory.policy.name != "smtp"
                or abuse.is_trusted(self.peer_ip)):
            self.send_banner()
            return
        self._holding = 0
        wait = abuse.settings.pregreet_wait
        if wait:
            self._holding += 1
            self._pregreet_call = self.factory.reactor.callLater(wait, self._pregreet_over)
        blocklists = self.factory.blocklists
        if blocklists is not None and blocklists.zones:
            self._holding += 1
            blocklists.score(self.peer_ip).addCallback(self._blocklists_answered)
        if not self._holding:
            self.send_banner()

    def _pregreet_over(self) -> None:
        self._pregreet_call = None
        self._release_banner()

    def _release_banner(self) -> None:
        self._holding -= 1
        if self._holding == 0 and not self._closing:
            self.send_banner()

    def _blocklists_answered(self, score: Score) -> None:
        blocklists = self.factory.blocklists
        if self._closing or self._lost:
            return
        if blocklists is not None and blocklists.blocked(score):
            self.cancel_greeting()
            zones = ",".join(zone for zone, _ in score.listed)
            event("refused", "smtp", self.peer_ip, "dnsbl", score=score.total, zones=zones)
            # RFC 5321 3.1 / 4.3.2: 554 instead of the 220 greeting.
            self._send(Reply(554, "5.7.1", f"{self.config.hostname} Error: your address "
                                            f"is listed by {zones}"))
            self.close()
            return
        self._release_banner()

    def talked_first(self, data: bytes) -> bool:
        """True if `data` came before our banner: refused (and then ignored)."""
        if not self._holding:
            return False
        self.cancel_greeting()
        event("refused", "smtp", self.peer_ip, "pregreet")
        self._send(Reply(554, "5.7.1", f"{self.config.hostname} Error: you talked before "
                                        "my greeting"))
        self.close()
        return True

    def cancel_greeting(self) -> None:
        self._holding = 0
        if self._pregreet_call is not None:
            self._pregreet_call.cancel()
            self._pregreet_call = None

    # -- MAIL and RCPT -------------------------------------------------------------------

    def check_mail_limits(self) -> None:
        """Raise the ReplyError refusing MAIL, or count the message."""
        abuse = self._abuse()
        if abuse is None:
            return
        policy = self.factory.policy
        if policy.require_auth and self.user is not None:
            limits = self.factory.sending_limits
            per_hour = limits.limits(self.user).messages_per_hour if limits else 0
            refusal = submission.message_limit_refusal(abuse, self.user, per_hour)
            if refusal is not None:
                event("refused", policy.name, self.peer_ip, "hourly-quota", self.user)
                raise ReplyError(refusal.code, refusal.enhanced, refusal.lines()[0])
        elif policy.name == "smtp" and abuse.smtp_message(self.peer_ip) is not None:
            raise ReplyError(450, "4.7.1", "Error: too much mail from your address; "
                                           "try again later")

    def check_recipient_limits(self, recipient: str = "") -> None:
        """Raise the ReplyError refusing an (otherwise good) RCPT, or count it."""
        abuse = self._abuse()
        if abuse is None:
            return
        policy = self.factory.policy
        if policy.require_auth and self.user is not None:
            limits = self.factory.sending_limits
            per_day = limits.limits(self.user).recipients_per_day if limits else 0
            refusal = submission.recipient_limit_refusal(abuse, self.user, per_day)
            if refusal is not None:
                event("refused", policy.name, self.peer_ip, "daily-quota", self.user)
                raise ReplyError(refusal.code, refusal.enhanced, refusal.lines()[0])
        elif policy.name == "smtp":
            if abuse.smtp_recipient(self.peer_ip) is not None:
                raise ReplyError(450, "4.7.1", "Error: too many recipients from your "
                                               "address; try again later")
            sender = str(self.envelope.sender) if self.envelope is not None else ""
            if abuse.greylisted(self.peer_ip, sender.lower(), recipient.lower()):
                # RFC 6647 2.1: a temporary refusal the sender's queue will retry.
                raise ReplyError(450, "4.7.1", "Error: greylisted; please try again "
                                               "later")

    def unknown_recipient(self, recipient: str, refusal: ReplyError) -> Deferred[None] | None:
        """A Deferred that answers `refusal` late (the tarpit) or ends the session;
        None to answer it now."""
        abuse = self._abuse()
        if abuse is None or self.factory.policy.name != "smtp":
            return None
        delay, end = abuse.unknown_recipient(self.peer_ip, recipient)
        if not delay and not end:
            return None

        def answer() -> None:
            if end:
                self._send(Reply(421, "4.7.0", f"{self.config.hostname} Error: too many "
                                               "unknown recipients; closing"))
                self.close()
            else:
                self._error(refusal.reply)

        return task.deferLater(self.factory.reactor, delay, answer)
