"""What every protocol's listener factory is built from: the shared parts of the server.

One ServerContext per process, built by app/service.py and nowhere else (built again
by a reload, from the new config and the same shared parts). Protocol
packages never build their own directory, portal, throttle or disk executor; they take
them from here, so SMTP, POP3 and IMAP share one user cache, one login throttle and one
pool of disk threads. Every field is typed by the seam it offers (interfaces.py, cred,
Twisted), never by the class app/ happens to plug in, so a protocol cannot reach past it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from twisted.cred.portal import Portal
from twisted.internet import interfaces
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailserver.abuse.control import AbuseControl
from mailserver.config import Config
from mailserver.core.connection import S, SessionFactory
from mailserver.core.diskio import DiskExecutor
from mailserver.core.dns import SharedResolver
from mailserver.core.throttle import LoginThrottle
from mailserver.events import IDeliveryEvents, IWebhookRegistry
from mailserver.interfaces import (
    IDeliveryRouter,
    IMailboxOpener,
    IMessageHook,
    IQueueStates,
    IRecipientDirectory,
    ISubmitUrls,
)


@dataclass
class ServerContext:
    config: Config
    directory: IRecipientDirectory
    portal: Portal
    #: Where every message goes: local mailboxes and the relay queue behind one target
    #: (delivery/router.py). Every process can queue; only instance 0 relays.
    target: IDeliveryRouter
    disk: DiskExecutor
    tls: interfaces.IOpenSSLServerConnectionCreator
    #: Users' mail as POP3 (a locked INBOX snapshot) and IMAP (every folder) open it.
    mailboxes: IMailboxOpener
    #: Failed logins per client address, shared by every protocol of this process, so a
    #: guesser gains nothing by switching from IMAP to POP3 to submission.
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    #: The abuse control (mailserver/abuse/): counters shared by every process.
    abuse: AbuseControl | None = None
    #: 0 in the twistd process, N in worker process N (only instance 0 runs the queue
    #: scheduler and other singletons).
    instance: int = 0
    #: The one DNS resolver every lookup goes through ([dns], shared TTL cache).
    resolver: SharedResolver | None = None
    #: Listener name -> the hook wrapping each message it receives (senderauth's checks
    #: on "smtp", DKIM signing on "submission"/"submissions"); absent: none.
    message_hooks: Mapping[str, IMessageHook] = field(default_factory=dict)
    #: The `smtp` listener's delivery target when it differs from `target` (SRS: a
    #: router whose forwarded copies get an SRS0 sender and which resolves bounces to
    #: SRS0 addresses); None: `target`. Submission always uses `target`.
    mx_target: IDeliveryRouter | None = None
    #: BURL's way to our IMAP store (RFC 4468; imap/urlauth.SubmitUrls); None: no BURL.
    submit_urls: ISubmitUrls | None = None
    #: Path prefix -> twisted.web resource the http/https site hands those paths to
    #: (b"/api/": the JSON API; b"/nginx-auth": the cluster's auth endpoint). Built by
    #: app/web.py; a resource's `max_body` attribute, if any, raises the site's body cap
    #: for its prefix.
    web_resources: Mapping[bytes, Any] = field(default_factory=dict)
    #: Where delivery outcomes and arrivals are published (events.IDeliveryEvents: the
    #: webhook spool, the API's message states); None: nobody listens.
    events: IDeliveryEvents | None = None
    #: The relay queue's per-recipient state of a message (GET /api/v1/queue/ID);
    #: None: no queue in this server.
    queue_states: IQueueStates | None = None
    #: Users' webhook registrations, for the API's /webhooks routes (webhooks/registry.py);
    #: None: no webhooks.
    webhooks: IWebhookRegistry | None = None


@dataclass
class ListenerFactory:
    """What a protocol package hands back for one configured listener."""

    factory: IProtocolFactory
    #: Bytes sent to a connection refused by the connection limits, then closed.
    refusal: bytes
    #: Called when the server stops: tell every session goodbye (421, * BYE, -ERR).
    on_stop: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def implicit_tls(context: ServerContext, factory: Factory[Any]) -> TLSMemoryBIOFactory:
    """Wrap a protocol factory for an implicit-TLS port (RFC 8314: 465, 993, 995).

    The session sees an already-encrypted transport; it should treat TLS as active
    from the first byte (ISSLTransport.providedBy(transport) is True).
    """
    return TLSMemoryBIOFactory(context.tls, False, factory)


class MailboxFactory(SessionFactory[S]):
    """The factory of a POP3 or IMAP listener, as mailbox_listener builds it: config,
    portal, disk threads (the context's read pool), the way to users' mail, TLS and the
    login throttle, shared by its sessions."""

    #: The listener's name when none is given ("pop3", "imap").
    default_name: ClassVar[str]

    def __init__(self, config: Config, portal: Portal, disk: DiskExecutor,
                 mailboxes: IMailboxOpener,
                 tls_options: interfaces.IOpenSSLServerConnectionCreator | None = None,
                 implicit_tls: bool = False, name: str | None = None, instance: int = 0,
                 login_throttle: LoginThrottle | None = None,
                 directory: IRecipientDirectory | None = None) -> None:
        super().__init__(name or self.default_name, instance)
        #: Who is a user here (IMAP URLFETCH of another user's URLAUTH URL, RFC 4467).
        self.directory = directory
        self.config = config
        self.portal = portal
        self.disk = disk
        self.mailboxes = mailboxes
        self.login_throttle = login_throttle or LoginThrottle()
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls


def mailbox_listener(context: ServerContext, name: str, ports: tuple[str, str],
                     factory_class: type[MailboxFactory[Any]], refusal: bytes,
                     ) -> ListenerFactory | None:
    """POP3's and IMAP's pair of listeners: `ports[0]` in the clear (STLS/STARTTLS
    offered), `ports[1]` with implicit TLS (RFC 8314). None for another name."""
    if name not in ports:
        return None
    secure = name == ports[1]
    # Mailbox reads get the disk's read pool: a heavy SEARCH never queues ahead of a
    # delivery's fsync (decision 0011).
    factory = factory_class(context.config, context.portal, context.disk.reads,
                            context.mailboxes, tls_options=context.tls,
                            implicit_tls=secure, name=name, instance=context.instance,
                            login_throttle=context.login_throttle,
                            directory=context.directory)
    wrapped: Any = implicit_tls(context, factory) if secure else factory
    return ListenerFactory(wrapped, refusal, on_stop=factory.shut_down)
