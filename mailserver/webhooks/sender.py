"""One POST to a checked address: twisted.web's Agent, pinned to that address.

The Agent gets an endpoint factory that connects to the address urlcheck.py approved,
never to the URL's name (no second lookup, so no DNS rebinding); for https the TLS
handshake still verifies the certificate against the URL's host name (relay.ca_file's
roots, else the system's). Agent never follows redirects: a 3xx is an answer like any
other non-2xx, and the dispatcher retries. The response body is read up to BODY_LIMIT
and dropped: a receiver cannot make us hold more.
"""

from __future__ import annotations

import io
import ipaddress
from collections import OrderedDict
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailserver.webhooks.urlcheck import Target

#: Bytes of a receiver's answer we read (and throw away) at most.
BODY_LIMIT = 64 * 1024
#: Pinned agents (with their connection pools) kept; the least recently used goes.
AGENTS = 256


def trust_from(ca_file: str) -> Any:
    """relay.ca_file's roots, or None (the platform's)."""
    if not ca_file:
        return None
    with open(ca_file, "rb") as f:
        pem = f.read()
    marker = b"-----END CERTIFICATE-----"
    certs = [Certificate.loadPEM(block + marker) for block in pem.split(marker)
             if b"-----BEGIN CERTIFICATE-----" in block]
    return trustRootFromCertificates(certs)


@implementer(IAgentEndpointFactory)
class _Pinned:
    def __init__(self, reactor: Any, target: Target, trust: Any, timeout: float) -> None:
        self.reactor = reactor
        self.target = target
        self.trust = trust
        self.timeout = timeout
        self.endpoint: Any = None

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - Twisted's name
        """The same endpoint for every request (the Agent asks on each, pooled or not)."""
        if self.endpoint is None:
            self.endpoint = self._endpoint()
        return self.endpoint

    def _endpoint(self) -> Any:
        address = self.target.address
        kind = TCP6ClientEndpoint if ipaddress.ip_address(address).version == 6 \
            else TCP4ClientEndpoint
        endpoint = kind(self.reactor, address, self.target.port, timeout=self.timeout)
        if self.target.scheme == "https":
            tls = optionsForClientTLS(self.target.host, trustRoot=self.trust)
            return wrapClientTLS(tls, endpoint)
        return endpoint


class _Drain(protocol.Protocol):
    """Reads a response body up to BODY_LIMIT, then hangs up."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.seen = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.seen += len(data)
        transport: Any = self.transport
        if self.seen > BODY_LIMIT and transport is not None:
            transport.stopProducing()  # a TransportProxyProducer: the connection goes

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(None)


class _QuietFactory(_HTTP11ClientFactory):
    """The pool's per-connection factory, without its "Starting factory" log line per
    connection (a line per POST when receivers close connections)."""

    noisy = False


def _pool(reactor: Any, persistent: bool) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietFactory  # noqa: SLF001 - treq quiets it the same way
    return pool


class Sender:
    """POSTs bodies; a pinned Agent (and its keep-alive pool) per (URL host, address)."""

    def __init__(self, reactor: Any, trust: Any, timeout: float,
                 per_host: int = 4) -> None:
        self.reactor = reactor
        self.trust = trust
        self.timeout = timeout
        self.per_host = per_host
        self.agents: OrderedDict[tuple[str, str, int, str], tuple[Agent,
                                                                  HTTPConnectionPool]] = \
            OrderedDict()

    def _agent(self, target: Target) -> Agent:
        key = (target.scheme, target.host, target.port, target.address)
        found = self.agents.get(key)
        if found is not None:
            self.agents.move_to_end(key)
            return found[0]
        pool = _pool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = self.per_host
        pool.cachedConnectionTimeout = 30
        agent = Agent.usingEndpointFactory(self.reactor, _Pinned(self.reactor, target,
                                                                 self.trust, self.timeout),
                                           pool=pool)
        self.agents[key] = (agent, pool)
        while len(self.agents) > AGENTS:
            _, (_, old) = self.agents.popitem(last=False)
            old.closeCachedConnections()
        return agent

    def post(self, target: Target, headers: dict[str, str], body: bytes) -> Deferred[int]:
        """Fires with the HTTP status; errbacks on a connection failure or the timeout
        (webhooks.timeout, over the whole exchange)."""
        return defer.ensureDeferred(self._post(target, headers, body))

    async def _post(self, target: Target, headers: dict[str, str], body: bytes,
                    fresh: bool = False) -> int:
        """`fresh`: on a new connection. A kept-alive connection the receiver closed
        meanwhile (an HTTP/1.0 server, which Twisted's pool still caches, or an idle
        timeout) fails before any answer; that one is tried again at once on a new
        connection (the receiver dedupes by webhook-id should it have seen it)."""
        if fresh:
            agent = Agent.usingEndpointFactory(
                self.reactor, _Pinned(self.reactor, target, self.trust, self.timeout),
                pool=_pool(self.reactor, persistent=False))
        else:
            agent = self._agent(target)
        try:
            return await self._exchange(agent, target, headers, body)
        except (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived) as e:
            if fresh or isinstance(e, ResponseNeverReceived) and any(
                    r.check(defer.CancelledError) for r in e.reasons):
                raise
            return await self._post(target, headers, body, fresh=True)

    async def _exchange(self, agent: Agent, target: Target, headers: dict[str, str],
                        body: bytes) -> int:
        raw = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        producer = FileBodyProducer(io.BytesIO(body))
        d = agent.request(b"POST", target.url.encode("ascii"), raw, producer)
        clock: IReactorTime = self.reactor
        # Cancelled mid-request, the Agent fails with ResponseNeverReceived: say timeout.
        d.addTimeout(self.timeout, clock, onTimeoutCancel=_timed_out)
        response = await d
        drain = _Drain()
        response.deliverBody(drain)
        reading = drain.done
        reading.addTimeout(self.timeout, clock)
        try:
            await reading
        except defer.TimeoutError:
            pass  # the status is what counts; the connection is dropped
        return int(response.code)

    def close(self) -> Deferred[Any]:
        pools = [pool for _, pool in self.agents.values()]
        self.agents.clear()
        return defer.gatherResults([p.closeCachedConnections() for p in pools])


def _timed_out(result: object, timeout: float) -> Failure:
    return Failure(defer.TimeoutError(f"no answer within {timeout:g}s"))
