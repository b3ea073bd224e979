"""What every protocol's listener factory is built from: the shared parts of the server.

One ServerContext per process. Protocol packages never build their own directory,
portal or disk executor; they take them from here, so SMTP, POP3 and IMAP share one
user cache, one login throttle and one pool of disk threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import interfaces
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailserver.auth.directory import RecipientDirectory
from mailserver.config import Config
from mailserver.store.delivery import MaildirDelivery
from mailserver.store.diskio import DiskExecutor


@dataclass
class ServerContext:
    config: Config
    directory: RecipientDirectory
    portal: Portal
    #: Local delivery into users' Maildirs (IDeliveryTarget).
    target: MaildirDelivery
    disk: DiskExecutor
    tls: interfaces.IOpenSSLServerConnectionCreator
    #: 0 in the twistd process, N in worker process N (only instance 0 runs the queue
    #: scheduler and other singletons).
    instance: int = 0
    #: The outbound queue (IOutboundQueue), once mailserver.queue is built; None before.
    queue: Any = None


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
