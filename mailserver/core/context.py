"""What every protocol's listener factory is built from: the shared parts of the server.

One ServerContext per process, built by app/service.py and nowhere else. Protocol
packages never build their own directory, portal, throttle or disk executor; they take
them from here, so SMTP, POP3 and IMAP share one user cache, one login throttle and one
pool of disk threads. Every field is typed by the seam it offers (interfaces.py, cred,
Twisted), never by the class app/ happens to plug in, so a protocol cannot reach past it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.cred.portal import Portal
from twisted.internet import interfaces
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailserver.config import Config
from mailserver.core.diskio import DiskExecutor
from mailserver.core.throttle import FailureThrottle
from mailserver.interfaces import IDeliveryTarget, IOutboundQueue, IRecipientDirectory

if TYPE_CHECKING:
    from mailserver.core.dns import SharedResolver
    from mailserver.senderauth.service import SenderAuth


@dataclass
class ServerContext:
    config: Config
    directory: IRecipientDirectory
    portal: Portal
    #: Local delivery into users' Maildirs.
    target: IDeliveryTarget
    disk: DiskExecutor
    tls: interfaces.IOpenSSLServerConnectionCreator
    #: The outbound queue: every process can queue; only instance 0 delivers.
    queue: IOutboundQueue | None = None
    #: Failed logins per client address, shared by every protocol of this process, so a
    #: guesser gains nothing by switching from IMAP to POP3 to submission.
    login_throttle: FailureThrottle = field(default_factory=FailureThrottle)
    #: 0 in the twistd process, N in worker process N (only instance 0 runs the queue
    #: scheduler and other singletons).
    instance: int = 0
    #: Sender authentication (senderauth/): inbound checks, DKIM signer, SRS and the
    #: hooks the SMTP listeners wrap messages with.
    senderauth: SenderAuth | None = None
    #: The one DNS resolver every lookup goes through ([dns], shared TTL cache).
    resolver: SharedResolver | None = None


@dataclass
class ListenerFactory:
    """What a protocol package hands back for one configured listener."""

    factory: IProtocolFactory
    #: Bytes sent to a connection refused by the connection limits, then closed.
    refusal: bytes
    #: Called when the server stops: tell every session goodbye (421, * BYE, -ERR).
    on_stop: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def implicit_tls(context: ServerContext, factory: Factory) -> TLSMemoryBIOFactory:
    """Wrap a protocol factory for an implicit-TLS port (RFC 8314: 465, 993, 995).

    The session sees an already-encrypted transport; it should treat TLS as active
    from the first byte (ISSLTransport.providedBy(transport) is True).
    """
    return TLSMemoryBIOFactory(context.tls, False, factory)
