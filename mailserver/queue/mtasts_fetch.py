"""Fetching and keeping MTA-STS policies (RFC 8461 3.3, 5.1) on the reactor: the HTTPS
GET, and StsPolicies, which answers "what policy does this domain have now?".

Why our own endpoint instead of Agent's: Agent resolves the host with the system
resolver, and every lookup the server makes goes through `dns.nameservers`. So the
policy host's addresses come from our resolver (in a thread), and the TLS connection
goes to one of them with the certificate verified for `mta-sts.DOMAIN` (SNI and name
check by optionsForClientTLS, against relay.ca_file or the system's roots).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.resolver
from twisted.internet import defer, threads
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from mailserver.logs import logger
from mailserver.queue.mtasts import (
    MAX_POLICY_BYTES,
    PolicyCache,
    PolicyError,
    StsPolicy,
    decide,
    lookup_txt,
    parse_policy,
)

log = logger(__name__)

#: RFC 8461 3.3: "...a timeout of one minute or less" is what senders should allow.
FETCH_TIMEOUT = 60.0
#: A cached policy is looked at again once it has less than this left (seconds).
REFRESH_MARGIN = 86_400.0
#: How often the refresher runs (seconds).
REFRESH_EVERY = 3_600.0


@implementer(IAgentEndpointFactory)
class _Fixed:
    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.endpoint


class _Bounded(Protocol):
    """Collects a response body, giving up past `limit` octets."""

    def __init__(self, limit: int, done: defer.Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(PolicyError(f"policy larger than {self.limit} octets"))
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]  # noqa: N802,B008
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(PolicyError(f"policy body cut short: {reason.value}"))


class PolicyFetcher:
    """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt, verified, bounded."""

    def __init__(self, reactor: Any, resolver: Callable[[], dns.resolver.Resolver],
                 trust: IOpenSSLTrustRoot | None, port: int = 443,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.trust = trust
        self.port = port
        self.timeout = timeout

    def _addresses(self, host: str) -> list[str]:
        """A then AAAA of `host` through our resolver (blocking: a thread)."""
        resolver = self.resolver()
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = resolver.resolve(host + ".", rdtype, search=False,
                                          raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers,
                    dns.exception.Timeout):
                continue
            if answer.rrset is not None:
                found.extend(r.address for r in answer.rrset)
        return found

    async def fetch(self, domain: str) -> bytes:
        host = f"mta-sts.{domain}"
        addresses: list[str] = await threads.deferToThread(self._addresses, host)
        if not addresses:
            raise PolicyError(f"{host} has no address")
        last: Exception = PolicyError(f"{host}: not tried")
        for address in addresses[:4]:
            try:
                return await self._get(host, address)
            except PolicyError:
                raise  # the server answered, and what it said is no policy
            except Exception as e:  # a connection or TLS failure: the next address
                last = e
        raise PolicyError(f"fetching https://{host}/ failed: {_say(last)}")

    async def _get(self, host: str, address: str) -> bytes:
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        tcp = kind(self.reactor, address, self.port, timeout=int(self.timeout))
        tls = optionsForClientTLS(host, trustRoot=self.trust)
        agent = Agent.usingEndpointFactory(self.reactor, _Fixed(wrapClientTLS(tls, tcp)))
        url = f"https://{host}/.well-known/mta-sts.txt".encode("ascii")
        request = agent.request(b"GET", url, Headers({b"User-Agent": [b"mailserver"]}))
        request.addTimeout(self.timeout, self.reactor)
        response: IResponse = await request
        # RFC 8461 3.3: 200 only ("HTTP 3xx redirects MUST NOT be followed").
        if response.code != 200:
            response.deliverBody(Protocol())  # discard it
            raise PolicyError(f"https://{host}/.well-known/mta-sts.txt answered "
                              f"HTTP {response.code}")
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if ctype.split(b";")[0].strip().lower() != b"text/plain":
            response.deliverBody(Protocol())
            raise PolicyError(f"policy served as {ctype[:60]!r}, not text/plain")
        if isinstance(response.length, int) and response.length > MAX_POLICY_BYTES:
            response.deliverBody(Protocol())
            raise PolicyError(f"policy of {response.length} octets (at most "
                              f"{MAX_POLICY_BYTES})")
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Bounded(MAX_POLICY_BYTES, done))
        done.addTimeout(self.timeout, self.reactor)
        return await done


def _say(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200] if text else type(error).__name__


class StsPolicies:
    """The policy in force for a domain (RFC 8461 5.1): the cache, the TXT record, and a
    fetch when its id is new. `fetch` is PolicyFetcher.fetch (tests give their own);
    `txt` looks the TXT record up (blocking; run in a thread); `run` runs blocking work
    (the disk threads) for the cache's writes."""

    def __init__(self, cache: PolicyCache, txt: Callable[[str], list[str] | None],
                 fetch: Callable[[str], Any], run: Callable[..., Any],
                 clock: Callable[[], float] = time.time,
                 on_failure: Callable[[str, str], None] | None = None) -> None:
        self.cache = cache
        self.txt = txt
        self.fetch = fetch
        self.run = run
        self.clock = clock
        #: Told (domain, RFC 8460 4.3 result type) when a policy announced by a new TXT
        #: id cannot be had: "sts-policy-fetch-error" (the HTTPS fetch failed) or
        #: "sts-policy-invalid" (it came, and is no policy), for the TLS report.
        self.on_failure = on_failure
        #: Callers waiting for a lookup in progress, by domain.
        self._pending: dict[str, list[defer.Deferred[StsPolicy | None]]] = {}

    def policy_for(self, domain: str, refresh: bool = False
                   ) -> defer.Deferred[StsPolicy | None]:
        """The policy, or None; several deliveries to one domain share one lookup.
        Each caller gets a Deferred of its own: a caller that awaits one consumes its
        result, so one Deferred shared by callbacks gave the later ones None (no
        policy: an enforced domain's mail went out unverified)."""
        domain = domain.lower().rstrip(".")
        waiting: defer.Deferred[StsPolicy | None] = defer.Deferred()
        if domain in self._pending:
            self._pending[domain].append(waiting)
            return waiting
        self._pending[domain] = [waiting]

        def done(result: Any) -> None:
            for caller in self._pending.pop(domain, []):
                caller.callback(result)  # a Failure goes down each errback chain

        defer.ensureDeferred(self._policy_for(domain, refresh)).addBoth(done)
        return waiting

    async def refresh_due(self, margin: float = REFRESH_MARGIN) -> list[str]:
        """RFC 8461 10.2 / 5.1: before a cached policy ends, look again (TXT, then fetch
        when its id changed, or when it would otherwise lapse): a domain we send to
        seldom keeps its policy, so a man in the middle cannot time an attack on its
        expiry. The domains looked at; failures are reported like any others."""
        now = self.clock()
        refreshed = []
        for domain in await self.run(self.cache.domains):
            cached = await self.run(self.cache.get, domain)
            # Less than a day left, or than half its life for a short-lived policy.
            if cached is None or cached.fetched + cached.max_age - now > min(
                    margin, cached.max_age / 2):
                continue
            refreshed.append(domain)
            await self.policy_for(domain, refresh=True)
        return refreshed

    async def _policy_for(self, domain: str, refresh: bool = False) -> StsPolicy | None:
        txt = await threads.deferToThread(self.txt, domain)
        known = self.cache.get(domain) if self.cache.loaded(domain) else \
            await self.run(self.cache.get, domain)
        now = self.clock()
        action, cached, detail = decide(domain, txt, known, now)
        if refresh and action == "use" and cached is not None \
                and detail == "cached, id unchanged":
            # Still announced under the same id: fetched again for a new max_age
            # (RFC 8461 5.1: "...senders SHOULD ... update the cached policy").
            action, detail = "fetch", cached.id
        if action == "use":
            return cached
        if action == "none":
            log.debug("MTA-STS: {domain}: no policy ({why})", domain=domain, why=detail)
            return None
        result = "sts-policy-fetch-error"
        try:
            body = await defer.ensureDeferred(self.fetch(domain))
            result = "sts-policy-invalid"
            policy = parse_policy(domain, detail, body, now)
        except Exception as e:
            if self.on_failure is not None:
                self.on_failure(domain, result)
            log.warn("MTA-STS: {domain}: new policy id {id} not usable: {why}{keep}",
                     domain=domain, id=detail, why=_say(e),
                     keep="; the cached policy stays" if cached else "")
            return cached
        await self.run(self.cache.put, policy)
        log.info("MTA-STS: {domain}: policy {id}, mode {mode}, mx {mx}, max_age {age}",
                 domain=domain, id=policy.id, mode=policy.mode, mx=",".join(policy.mx),
                 age=policy.max_age)
        return policy


def txt_lookup(resolver: Callable[[], dns.resolver.Resolver]
               ) -> Callable[[str], list[str] | None]:
    """lookup_txt bound to our resolver (blocking)."""
    return lambda domain: lookup_txt(resolver(), domain)
