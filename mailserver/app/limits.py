"""Connection limits shared by every listener: in total and per client address.

A policy wrapper (twisted.protocols.policies) so no protocol needs to count for itself;
each service says how it refuses (SMTP 421, POP3 -ERR, IMAP BYE).
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from mailserver.core import metrics
from mailserver.logs import logger

log = logger(__name__)


class ConnectionCounter:
    """Counts live connections across all listeners."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total_limit = total
        self.per_ip_limit = per_ip
        self.total = 0
        self.by_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        if self.total >= self.total_limit or self.by_ip[ip] >= self.per_ip_limit:
            return False
        self.total += 1
        self.by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


class _Refuse(Protocol):
    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class LimitedFactory(WrappingFactory):
    """Admits a connection only within the shared limits; else sends `refusal`, closes."""

    def __init__(self, wrapped: IProtocolFactory, counter: ConnectionCounter,
                 refusal: bytes, service: str = "") -> None:
        super().__init__(wrapped)
        self.counter = counter
        self.refusal = refusal
        self.service = service  # the metrics' label (core/metrics.py)

    def buildProtocol(  # type: ignore[override]  # a refusal is no ProtocolWrapper
        self, addr: IAddress | None
    ) -> Protocol | None:
        ip = getattr(addr, "host", "unknown")
        if not self.counter.admit(ip):
            log.info("refused connection from {ip}: too many connections", ip=ip)
            metrics.connection_refused(self.service)
            return _Refuse(self.refusal)
        protocol = super().buildProtocol(addr)
        if protocol is None:
            self.counter.release(ip)
            return None
        protocol.limit_ip = ip  # type: ignore[attr-defined]
        metrics.connection_opened(self.service)
        return protocol

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        self.counter.release(p.limit_ip)  # type: ignore[attr-defined]
        metrics.connection_closed(self.service)
