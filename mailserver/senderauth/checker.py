"""The inbound checks of one message, and the policy that turns them into an action.

API (each returns a Deferred and does its work in a thread, never on the reactor):

- `check_at_envelope(client_ip, helo, mail_from)`: SPF of HELO and MAIL FROM, and
  iprev of the client;
- `check_message(message, early)`: DKIM, ARC and DMARC on the whole message, then
  the Verdict: the Authentication-Results field to add, the message without forged
  results, and the action: accept, junk, refuse (550 5.7.1) or defer (451 4.7.5);
- `check_all(message, client_ip, helo, mail_from)`: both in one thread job, what the
  SMTP hook uses (transaction.py says why).

Policy (RFC 7489 6.6.3 / 7.3 and the [checks] config): DMARC p=reject fails are
refused, p=quarantine fails go to Junk; SPF fail alone only marks (forwarders break
SPF); a DNS failure never refuses permanently: when it decides the DMARC verdict the
answer is 451 4.7.5 ("defer", default) or delivery marked temperror ("accept"); an
ambiguous From (RFC 7489 6.6.1) is refused, since no author can be authenticated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from mailserver.config import Config
from mailserver.core.dns import SharedResolver
from mailserver.reply import Reply
from mailserver.senderauth import dmarc, results
from mailserver.senderauth.dkimcheck import (
    ARCResult,
    DKIMResult,
    verify_arc,
    verify_dkim,
)
from mailserver.senderauth.iprev import IprevResult, check_iprev
from mailserver.senderauth.lookups import Lookups
from mailserver.senderauth.spfcheck import SPFResult, check_spf

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


@dataclass
class EnvelopeChecks:
    """What is known before the message: SPF of both identities, iprev."""

    spf_mailfrom: SPFResult
    spf_helo: SPFResult
    iprev: IprevResult
    helo: str
    lookups: Lookups


@dataclass
class Verdict:
    action: str  # "accept", "junk", "refuse", "defer"
    #: The Authentication-Results field to add on top of the message.
    header: bytes
    #: The message with every Authentication-Results claiming our id removed.
    message: bytes
    reply: Reply | None = None
    #: One line for the log: each method's result.
    summary: str = ""
    dkim: list[DKIMResult] = field(default_factory=list)
    dmarc: dmarc.DMARCResult | None = None
    #: The client's forward-confirmed host name (iprev pass), else "".
    iprev_name: str = ""


class InboundChecker:
    def __init__(self, config: Config, resolver: SharedResolver) -> None:
        self.config = config
        self.checks = config.checks
        self.resolver = resolver
        self.authserv_id = config.hostname

    # ------------------------------------------------------------------ async API

    def check_at_envelope(self, client_ip: str, helo: str, mail_from: str
                          ) -> Deferred[EnvelopeChecks]:
        return deferToThread(self.envelope_sync, client_ip, helo, mail_from)

    def check_message(self, message: bytes, early: EnvelopeChecks) -> Deferred[Verdict]:
        return deferToThread(self.message_sync, message, early)

    def check_all(self, message: bytes, client_ip: str, helo: str, mail_from: str
                  ) -> Deferred[Verdict]:
        return deferToThread(self.all_sync, message, client_ip, helo, mail_from)

    def all_sync(self, message: bytes, client_ip: str, helo: str, mail_from: str
                 ) -> Verdict:
        return self.message_sync(message, self.envelope_sync(client_ip, helo, mail_from))

    # ------------------------------------------------------------------ blocking

    def envelope_sync(self, client_ip: str, helo: str, mail_from: str) -> EnvelopeChecks:
        lookups = Lookups(self.resolver, self.checks.time_budget)
        spf_mailfrom, spf_helo = check_spf(lookups, client_ip, helo, mail_from)
        iprev = check_iprev(lookups, client_ip)
        lookups.pause()
        return EnvelopeChecks(spf_mailfrom, spf_helo, iprev, helo, lookups)

    def message_sync(self, message: bytes, early: EnvelopeChecks) -> Verdict:
        message, _removed = results.strip_our_results(message, self.authserv_id)
        lookups = early.lookups
        lookups.resume()  # what is left of the message's time budget
        dkim_results = verify_dkim(message, lookups, self.checks.max_signatures)
        arc = verify_arc(message, lookups)
        try:
            author = dmarc.from_domain(from_fields(message))
        except dmarc.AmbiguousFrom as e:
            dmarc_result = dmarc.DMARCResult("permerror", "", reason=str(e))
        else:
            dmarc_result = dmarc.evaluate(
                lookups, author, early.spf_mailfrom.domain, early.spf_mailfrom.result,
                [r.domain for r in dkim_results if r.result == "pass"])
        action, reply = self._decide(early, dkim_results, dmarc_result)
        entries = self._entries(early, dkim_results, dmarc_result, arc)
        header = results.build_header(self.authserv_id, entries)
        summary = " ".join(e.split(" ", 1)[0] for e in entries)
        return Verdict(action, header, message, reply, summary, dkim_results, dmarc_result,
                       early.iprev.name if early.iprev.result == "pass" else "")

    def _decide(self, early: EnvelopeChecks, dkim_results: list[DKIMResult],
                result: dmarc.DMARCResult) -> tuple[str, Reply | None]:
        if result.result == "permerror" and not result.from_domain:
            # RFC 7489 6.6.1: no single author domain, nothing to authenticate.
            return "refuse", Reply(550, "5.7.1", f"Message refused: ambiguous From "
                                   f"({result.reason}); see RFC 7489 6.6.1")
        temp = result.result == "temperror" or (result.result == "fail" and (
            early.spf_mailfrom.result == "temperror"
            or any(r.result == "temperror" for r in dkim_results)))
        if temp and self.checks.temperror == "defer" and (
                result.result == "temperror" or result.disposition != "none"):
            return "defer", Reply(451, "4.7.5", f"Temporary DNS failure while "
                                  f"authenticating {result.from_domain}; try again later")
        if result.result != "fail":
            return "accept", None
        if result.disposition == "reject" and self.checks.dmarc_reject:
            return "refuse", Reply(550, "5.7.1", f"Message refused: {result.from_domain} "
                                   f"asks to reject mail failing DMARC (RFC 7489)")
        if result.disposition in ("reject", "quarantine") and self.checks.dmarc_quarantine:
            return "junk", None
        return "accept", None

    def _entries(self, early: EnvelopeChecks, dkim_results: list[DKIMResult],
                 result: dmarc.DMARCResult, arc: ARCResult) -> list[str]:
        e = results.entry
        entries = [e("iprev", early.iprev.result, early.iprev.name,
                     policy_iprev=early.iprev.ip)]
        mailfrom = early.spf_mailfrom
        entries.append(e("spf", mailfrom.result, mailfrom.explanation,
                         smtp_mailfrom=mailfrom.identity))
        entries.append(e("spf", early.spf_helo.result, "", smtp_helo=early.helo))
        if not dkim_results:
            entries.append(e("dkim", "none"))
        for r in dkim_results:
            entries.append(e("dkim", r.result, r.reason, header_d=r.domain,
                             header_s=r.selector, header_a=r.algorithm,
                             header_b=r.b_prefix))
        policy = f"p={result.policy}" if result.policy else ""
        entries.append(e("dmarc", result.result, result.reason or policy,
                         header_from=result.from_domain))
        entries.append(e("arc", arc.result, arc.reason if arc.result != "none" else ""))
        return entries


def from_fields(message: bytes) -> list[bytes]:
    """The values of every From field in the header section, unfolded.

    The header section ends, as in core/headers.py, at the empty line or at the first
    line that is not a field; a field name spelled with spaces before the colon
    ("From :") counts, because mail clients show it as the author.
    """
    values: list[bytearray] = []
    current: bytearray | None = None
    for line in message.split(b"\n"):
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += line
            continue
        match = _FIELD.match(line)
        if match is None:
            break
        current = None
        if match.group(1).lower() == b"from":
            current = bytearray(line[match.end():])
            values.append(current)
    return [bytes(v) for v in values]
