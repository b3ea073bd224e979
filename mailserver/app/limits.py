"""Connection limits shared by every listener: in total and per client address.

A policy wrapper (twisted.protocols.policies) so no protocol needs to count for itself;
each service says how it refuses (SMTP 421, POP3 -ERR, IMAP BYE).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from mailserver.core import metrics
from mailserver.logs import logger

if TYPE_CHECKING:
    from mailserver.abuse.control import AbuseControl
    from mailserver.app.balance import SessionBalancer

log = logger(__name__)


class ConnectionCounter:
    """Counts live connections across all listeners.

    The total is this process's (its memory and file descriptors); with an abuse
    control the per-address limits (concurrent, per minute, refused networks) are
    counted across all worker processes in the shared table.
    """

    def __init__(self, total: int, per_ip: int, control: AbuseControl | None = None
                 ) -> None:
        self.total_limit = total
        self.per_ip_limit = per_ip
        self.control = control
        self.total = 0
        self.by_ip: Counter[str] = Counter()
        #: With worker processes: told every change of `total` (app/balance.py).
        self.balancer: SessionBalancer | None = None

    def admit(self, ip: str, service: str = "-") -> bool:
        if self.total >= self.total_limit:
            log.info("refused connection from {ip}: too many connections", ip=ip)
            return False
        if self.control is not None:
            if self.control.connection_opened(service, ip, self.per_ip_limit) is not None:
                return False
        elif self.by_ip[ip] >= self.per_ip_limit:
            log.info("refused connection from {ip}: too many connections", ip=ip)
            return False
        self.total += 1
        self.by_ip[ip] += 1
        if self.balancer is not None:
            self.balancer.changed(self.total)
        return True

    def release(self, ip: str) -> None:
        if self.control is not None:
            self.control.connection_closed(ip)
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
        if self.balancer is not None:
            self.balancer.changed(self.total)


class _Refuse(Protocol):
    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class LimitedFactory(WrappingFactory):
    """Admits a connection only within the shared limits; else sends `refusal`, closes."""

    def __init__(self, wrapped: IProtocolFactory, counter: ConnectionCounter,
                 refusal: bytes, service: str = "-") -> None:
        super().__init__(wrapped)
        self.counter = counter
        self.refusal = refusal
        self.service = service  # for logs and the metrics' label (core/metrics.py)

    def buildProtocol(  # type: ignore[override]  # a refusal is no ProtocolWrapper
        self, addr: IAddress | None
    ) -> Protocol | None:
        ip = getattr(addr, "host", "unknown")
        if not self.counter.admit(ip, self.service):
            metrics.connection_refused(self.service)
            return _Refuse(self.refusal)
        protocol = super().buildProtocol(addr)
        if protocol is None:
            self.counter.release(ip)
            return None
        protocol.limit_ip = ip  # type: ignore[attr-defined]
        metrics.connection_opened(self.service)
        return protocol

    def move(self, protocol: ProtocolWrapper, ip: str) -> bool:
        """A trusted proxy's XCLIENT named the real client (smtp/xclient.py): count the
        connection against `ip` instead of the proxy. False, and the count unchanged,
        if `ip`'s limits refuse it."""
        old = protocol.limit_ip  # type: ignore[attr-defined]
        if ip == old:
            return True
        if not self.counter.admit(ip, self.service):
            metrics.connection_refused(self.service)
            return False
        self.counter.release(old)
        protocol.limit_ip = ip  # type: ignore[attr-defined]
        return True

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        self.counter.release(p.limit_ip)  # type: ignore[attr-defined]
        metrics.connection_closed(self.service)
