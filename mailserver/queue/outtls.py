"""The TLS of outbound deliveries: MTA-STS (RFC 8461), DANE (RFC 7672), REQUIRETLS
(RFC 8689) and TLS reporting (RFC 8460), applied by the Dispatcher around each
connection (queue/destinations.py); the rules themselves are in tlspolicy.py.

For one destination domain (Dispatcher._serve):
1. plan(): the domain's MTA-STS policy (cached; StsPolicies), and the MX hosts an
   enforced policy allows (none left: RouteError 4.7.5, so the mail waits and in the
   end bounces).
2. needs(), per hop: its DANE state when dns.dnssec is on (a failed TLSA lookup:
   4.7.5 for this hop, never a plaintext attempt, RFC 7672 2.1.1), then HopTls.
3. check(), after the connection is open (greeting, EHLO, STARTTLS, EHLO): judge()
   the session with the chain the peer sent; record the outcome (log, TLS-RPT); a
   session that does not satisfy the policy raises 4.7.5 before any MAIL FROM.

A destination carries a mode: "" (the domain's policies), "requiretls" (REQUIRETLS
messages: a verified session or nothing) or "tls-optional" (messages with
"TLS-Required: No", RFC 8689 5: failures are recorded but delivery goes on as
opportunistic TLS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dns.resolver
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import defer, threads

from mailserver.logs import logger
from mailserver.queue import dane
from mailserver.queue.mtasts import StsPolicy
from mailserver.queue.routing import Hop, RouteError
from mailserver.queue.tlspolicy import HopTls, Level, Verdict, allowed_hosts, hop_tls, judge
from mailserver.queue.tlsrpt import ResultLog, SessionResult

if TYPE_CHECKING:
    from mailserver.queue.client import SMTPConnection
    from mailserver.queue.mtasts_fetch import StsPolicies

log = logger(__name__)

REQUIRETLS, TLS_OPTIONAL = "requiretls", "tls-optional"


class TlsRefused(Exception):
    """This hop may not be used for this mail: `status` and `text` for the recipients."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Plan:
    """One destination's TLS needs for one connection attempt series."""

    domain: str
    mode: str
    sts: StsPolicy | None
    hops: list[Hop]
    #: DANE policies looked up for this plan, by host (one lookup per MX host).
    dane: dict[str, dane.DanePolicy] = field(default_factory=dict)

    def require_tls(self, needs: HopTls) -> bool:
        """No plaintext fallback after a failed handshake."""
        return self.mode == REQUIRETLS or (needs.required and self.mode != TLS_OPTIONAL)


class OutboundTls:
    """What the Dispatcher asks before and after opening a connection."""

    def __init__(self, policies: StsPolicies | None,
                 dane_resolver: Callable[[], dns.resolver.Resolver] | None,
                 trust: crypto.X509Store | None, results: ResultLog | None,
                 run: Callable[..., Any], sending_ip: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.policies = policies
        #: None: dns.dnssec is off, so no answer is authenticated and DANE is off.
        self.dane_resolver = dane_resolver
        self.trust = trust
        self.results = results
        self.run = run
        self.sending_ip = sending_ip
        self.clock = clock

    async def plan(self, domain: str, hops: list[Hop], mode: str,
                   smarthost: bool = False) -> Plan:
        """The policy and the usable hops; RouteError 4.7.5 when an enforced policy
        allows none of the MX hosts (RFC 8461 5)."""
        sts = None
        if self.policies is not None and not smarthost:
            sts = await self.policies.policy_for(domain)
            if sts is not None and sts.mode == "none":
                sts = None
        plan = Plan(domain, mode, sts, hops)
        if sts is None or mode == TLS_OPTIONAL:
            return plan
        names = list(dict.fromkeys(h.host for h in hops))
        allowed = set(allowed_hosts(names, sts))
        plan.hops = [h for h in hops if h.host in allowed]
        if not plan.hops:
            text = (f"MTA-STS policy of {domain} ({sts.mode}) allows none of its MX "
                    f"hosts ({', '.join(names)[:300]}); policy mx: {', '.join(sts.mx)[:300]}")
            self._record(plan, HopTls(names[0] if names else domain, Level.STS_ENFORCE,
                                      None, sts), "validation-failure", None)
            raise RouteError(False, "4.7.5", text)
        return plan

    async def needs(self, plan: Plan, hop: Hop) -> HopTls:
        """The TLS `hop` needs; TlsRefused when it cannot be used at all."""
        policy = plan.dane.get(hop.host)
        if policy is None and self.dane_resolver is not None:
            # Reference names (RFC 7672 3.2.2): the MX host only; the next-hop domain
            # would need the MX RRset to be secure, which the router does not track.
            resolver = self.dane_resolver
            policy = await threads.deferToThread(
                lambda: dane.lookup(resolver(), hop.host, hop.port))
            plan.dane[hop.host] = policy
        requiretls = plan.mode == REQUIRETLS
        needs = hop_tls(hop.host, policy, plan.sts, requiretls)
        if policy is not None and policy.state is dane.DaneState.FAILED \
                and plan.mode != TLS_OPTIONAL:
            self._record(plan, HopTls(hop.host, Level.DANE, policy, plan.sts),
                         "dnssec-invalid", hop)
            raise TlsRefused("4.7.5", f"DANE: {policy.reason}; not sending to {hop.host} "
                             "without its TLSA records (RFC 7672 2.1.1)")
        if needs.level is Level.REQUIRETLS_IMPOSSIBLE:
            raise TlsRefused("5.7.30", f"REQUIRETLS: {plan.domain} has neither DANE nor "
                             "an MTA-STS policy, so no verified TLS is possible (RFC 8689)")
        return needs

    def check(self, plan: Plan, needs: HopTls, conn: SMTPConnection) -> str:
        """Judge the open session, record it, and return its TLS outcome ("dane",
        "mta-sts", "opportunistic", "none"); TlsRefused (4.7.5) when it falls short."""
        checked = needs.level in (Level.DANE, Level.STS_ENFORCE, Level.STS_TESTING)
        chain = peer_chain(conn) if conn.tls and checked else []
        verdict = judge(needs, conn.tls, chain, self.trust, conn.starttls_offered)
        if verdict.ok and plan.mode == REQUIRETLS and not verdict.verified:
            # MTA-STS testing and DANE without usable records verify nothing.
            verdict = Verdict(False, verdict.result if verdict.result != "success"
                              else "validation-failure",
                              "REQUIRETLS: the session was not verified")
        outcome = verdict.verified or ("opportunistic" if conn.tls else "none")
        self._record(plan, needs, verdict.result, conn.hop)
        if verdict.ok or plan.mode == TLS_OPTIONAL:
            log.info("queue: {hop}: TLS {outcome} (policy {policy}){why}", hop=str(conn.hop),
                     outcome=outcome, policy=needs.level.value,
                     why=f"; {verdict.reason}, delivering anyway" if verdict.reason else "")
            return outcome
        log.warn("queue: {hop}: TLS not good enough for {domain} (policy {policy}): {why}",
                 hop=str(conn.hop), domain=plan.domain, policy=needs.level.value,
                 why=verdict.reason)
        raise TlsRefused("4.7.5", f"{conn.hop}: {verdict.reason}; not sending "
                         f"(policy {needs.level.value})")

    def policy_failed(self, domain: str, result: str) -> None:
        """StsPolicies' report of a policy that could not be had (RFC 8460 4.3:
        sts-policy-fetch-error, sts-policy-invalid), recorded for the domain's TLS
        report as a failure of its "sts" policy."""
        self._record(Plan(domain, "", None, []), HopTls("", Level.STS_ENFORCE),
                     result, None)

    def _record(self, plan: Plan, needs: HopTls, result: str, hop: Hop | None) -> None:
        """A SessionResult for TLS-RPT, written in a disk thread (never waited for)."""
        if self.results is None:
            return
        sts = needs.sts if needs.policy_type == "sts" else None
        strings: tuple[str, ...] = ()
        if sts is not None:
            strings = ("version: STSv1", f"mode: {sts.mode}",
                       *(f"mx: {m}" for m in sts.mx), f"max_age: {sts.max_age}")
        elif needs.policy_type == "tlsa" and needs.dane is not None:
            strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}"
                            for r in needs.dane.records)
        entry = SessionResult(plan.domain, needs.policy_type, result, needs.host,
                              self.sending_ip, hop.address if hop else "", strings,
                              sts.mx if sts else (), self.clock())
        d = defer.maybeDeferred(self.run, self.results.record, entry)
        d.addErrback(lambda f: log.warn("queue: cannot record the TLS outcome: {e}",
                                        e=f.getErrorMessage()))


def peer_chain(conn: SMTPConnection) -> list[bytes]:
    """The certificates the peer sent (DER, leaf first): pyOpenSSL's chain."""
    transport = conn.proto.transport if conn.proto is not None else None
    handle = getattr(transport, "getHandle", lambda: None)()
    get_chain = getattr(handle, "get_peer_cert_chain", None)
    if get_chain is None:
        return []
    certs = get_chain(as_cryptography=True) or []
    return [c.public_bytes(serialization.Encoding.DER) for c in certs[:16]]
