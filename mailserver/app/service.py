"""makeService: every configured listener in one reactor, sharing store and users."""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable

from twisted.application import service
from twisted.internet.defer import Deferred

from mailserver.abuse.control import AbuseControl, open_table, table_path
from mailserver.api.sentdb import sent_db
from mailserver.api.states import ApiStates
from mailserver.app.balance import SessionBalancer, sessions_path
from mailserver.app.gauges import QueueGauges
from mailserver.app.limits import ConnectionCounter
from mailserver.app.listeners import ListenerRegistry
from mailserver.app.listenerset import ListenerSet
from mailserver.app.pickup import PickupService
from mailserver.app.reload import Reloader, ReloadTargets
from mailserver.app.tls import SwappableTLS, server_tls_options
from mailserver.app.web import web_resources
from mailserver.app.workers import WorkerSupervisor
from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.hashing import HashingPool
from mailserver.cluster.health import HealthChecker
from mailserver.config import Config
from mailserver.core import metrics
from mailserver.core.context import ListenerFactory, ServerContext
from mailserver.core.diskio import DiskExecutor, make_disk
from mailserver.core.dns import SharedResolver
from mailserver.core.throttle import LoginThrottle
from mailserver.delivery.router import DeliveryRouter
from mailserver.errors import ConfigError
from mailserver.events import EventFanout
from mailserver.http import listener as http_listener
from mailserver.imap import listener as imap_listener
from mailserver.imap.urlauth import SubmitUrls
from mailserver.logs import logger
from mailserver.pop3 import listener as pop3_listener
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.reports import LocalSuccessReports
from mailserver.queue.service import QueueService, open_queue
from mailserver.queue.spool import Spool
from mailserver.queue.states import SpoolStates
from mailserver.senderauth import service as senderauth
from mailserver.senderauth.srs import SRSDirectory, SRSQueue
from mailserver.smtp import listener as smtp_listener
from mailserver.store import sharedfs
from mailserver.store.delivery import MaildirDelivery
from mailserver.store.opener import MaildirOpener
from mailserver.webhooks.setup import Webhooks, open_webhooks

log = logger(__name__)

ListenerMaker = Callable[[ServerContext, str], ListenerFactory | None]

#: Which protocol package builds each listener: `make_listener(context, name)`.
LISTENER_MAKERS: dict[str, ListenerMaker] = {
    "smtp": smtp_listener.make_listener,
    "submission": smtp_listener.make_listener,
    "submissions": smtp_listener.make_listener,
    "pop3": pop3_listener.make_listener,
    "pop3s": pop3_listener.make_listener,
    "imap": imap_listener.make_listener,
    "imaps": imap_listener.make_listener,
    "http": http_listener.make_listener,
    "https": http_listener.make_listener,
}


def make_service(config: Config, inherited: dict[str, int] | None = None,
                 instance: int = 0) -> service.MultiService:
    """Build the whole server; ConfigError for anything the operator must fix.

    The twistd process (instance 0) listens on the configured endpoints and starts the
    worker processes; a worker (instance > 0) adopts the sockets in `inherited`.
    """
    _prepare_process(config, inherited)
    disk = make_disk()
    top = _ServerRoot(disk)
    directory = RecipientDirectory(config)
    spool, queue = open_queue(config, disk)
    local = MaildirDelivery(config.mail_dir, config.hostname, disk,
                            limits_of=directory.quota_limits)
    abuse = _open_abuse(config, instance)
    # The certificate-expiry metric follows every certificate put in force.
    tls = SwappableTLS(server_tls_options(config), watch=metrics.watch_tls)
    router = DeliveryRouter(config, directory, local, queue)
    hashing = HashingPool()  # password checks: one thread per core (auth/hashing.py)
    hashing.setServiceParent(top)
    context = ServerContext(
        config=config, directory=directory,
        portal=make_portal(config, directory, abuse=abuse, threadpool=hashing.pool),
        target=router, disk=disk,
        tls=tls, mailboxes=_mailboxes(config, directory),
        instance=instance, login_throttle=LoginThrottle(control=abuse), abuse=abuse,
    )
    auth, webhooks = _wire_context(context, spool, local, queue, router)
    holders: list[object] = [context, router, directory]
    if context.mx_target is not None:
        holders.append(context.mx_target)  # port 25's router (SRS): new domains are local
    if instance == 0:
        _start_queue_side(top, context, spool, queue, router, auth, webhooks, holders)
    listeners, balancer = _listeners(top, context, abuse, inherited)

    def apply_listeners(new: Config) -> None:
        abuse.reconfigure(new)
        fresh = _fresh_context(context, directory, new)
        listeners.apply(new, lambda name: _build_listener(fresh, name))
        if balancer is not None:
            balancer.sync_ports()

    targets = ReloadTargets(tls=tls, holders=lambda: holders,
                            apply_listeners=apply_listeners)
    Reloader(config, targets, record=instance == 0).setServiceParent(top)
    listeners.start_all(config)
    if instance == 0:
        _start_node_services(top, config, disk, listeners, targets, holders)
    if inherited is None and config.process_count > 1:
        _start_workers(top, config, listeners, balancer, targets, apply_listeners)
    if instance == 0 and not config.users_file.exists():
        _hint_first_user(config)
    return top


def _prepare_process(config: Config, inherited: dict[str, int] | None) -> None:
    """What must hold before anything is built: data_dir and the mail store usable, the
    shared-filesystem mode set, the metrics file open, the collector tuned."""
    _prepare_data_dir(config)
    problems = sharedfs.check_local(config)
    if problems:
        raise ConfigError(problems)
    sharedfs.configure_from(config)  # cluster mode: dotlocks, node-local caches (0039)
    # Before any metric is made: every process counts into run/metrics (core/metrics.py).
    metrics.configure(config.data_dir / "run" / "metrics", fresh=inherited is None)
    # An IMAP folder of 100k messages is 100k long-lived objects per index; with the
    # default thresholds every young collection walks them (FETCH 1:* over 100k took
    # 106-195 ms instead of 13 ms). Collect less often; nothing here relies on cycles
    # being freed promptly.
    gc.set_threshold(20_000, 20, 100)


def _wire_context(context: ServerContext, spool: Spool, local: MaildirDelivery,
                  queue: OutboundQueue, router: DeliveryRouter,
                  ) -> tuple[senderauth.SenderAuth, Webhooks]:
    """What the context gets beside its fields: BURL's URLs, the queue's states, sender
    authentication and its hooks, the delivery events, the web resources, and the
    success reports of local copies."""
    directory, disk = context.directory, context.disk
    context.submit_urls = SubmitUrls(directory, context.mailboxes, disk.reads)  # BURL
    # The API's record of what became of the messages it sent (GET /api/v1/queue/ID).
    context.queue_states = SpoolStates(spool)
    auth = _sender_auth(context, local, queue)
    webhooks = _events(context, router)
    context.web_resources = web_resources(context)
    # Success reports of the copies the sessions deliver locally (RFC 3461 NOTIFY=SUCCESS).
    reports = LocalSuccessReports(queue, auth.signer.sign_dsn if auth.signer else None)
    router.reporter = reports
    if isinstance(context.mx_target, DeliveryRouter):
        context.mx_target.reporter = reports
    return auth, webhooks


def _fresh_context(context: ServerContext, directory: RecipientDirectory,
                   new: Config) -> ServerContext:
    """A reload's context: the new config and what is made from it alone; the
    directory, portal, routers, disk threads, TLS, throttle, abuse table, resolver
    and message hooks are the same objects (built once, some with blocking work)."""
    fresh = dataclasses.replace(context, config=new, mailboxes=_mailboxes(new, directory))
    fresh.web_resources = web_resources(fresh)
    return fresh


def _listeners(top: service.MultiService, context: ServerContext, abuse: AbuseControl,
               inherited: dict[str, int] | None,
               ) -> tuple[ListenerSet, SessionBalancer | None]:
    """The listeners under the connection limits (a worker adopts the sockets in
    `inherited`) and, with worker processes, the balancer between them."""
    config, instance = context.config, context.instance
    counter = ConnectionCounter(config.limits.connections, config.limits.connections_per_ip,
                                control=abuse)
    registry = ListenerRegistry(config.data_dir / "run") if inherited is None else None
    listeners = ListenerSet(top, lambda name: _build_listener(context, name), counter,
                            registry, inherited)
    balancer = _balancer(config, instance, inherited, listeners)
    if balancer is not None:
        balancer.setServiceParent(top)
        counter.balancer = balancer
    return listeners, balancer


def _start_queue_side(top: service.MultiService, context: ServerContext, spool: Spool,
                      queue: OutboundQueue, router: DeliveryRouter,
                      auth: senderauth.SenderAuth, webhooks: Webhooks,
                      holders: list[object]) -> None:
    """The twistd process's own services before the listeners: the relay queue, the
    webhook sender, the queue gauges and the pickup of `mailserver sendmail`."""
    config, disk = context.config, context.disk
    queue_service = QueueService(context, spool, queue)
    if auth.signer is not None:
        # Our DSNs and delay notices leave DKIM-signed (senderauth/signing.py).
        queue_service.scheduler.sign_dsn = auth.signer.sign_dsn
    queue_service.scheduler.events = context.events  # delivered, deferred, failed...
    queue_service.setServiceParent(top)
    if webhooks.dispatcher is not None:
        webhooks.dispatcher.setServiceParent(top)
    QueueGauges(spool, disk).setServiceParent(top)
    # `mailserver sendmail`'s messages, DKIM-signed as submitted ones are.
    pickup = PickupService(config, router, auth.signing)
    pickup.setServiceParent(top)
    holders.append(pickup)


def _start_node_services(top: service.MultiService, config: Config, disk: DiskExecutor,
                         listeners: ListenerSet, targets: ReloadTargets,
                         holders: list[object]) -> None:
    """The twistd process's services after the listeners (the health checks need their
    ports): the cluster's health checks, idle without [cluster], and ACME."""
    checker = HealthChecker(config, disk, listeners.listening_ports)
    checker.setServiceParent(top)
    holders.append(checker)  # a reload's nodes and interval
    from mailserver.app.acme import AcmeService

    # Always there, idle without [acme]: a reload that adds [acme] starts it.
    AcmeService(config, reload=targets).setServiceParent(top)


def _start_workers(top: service.MultiService, config: Config, listeners: ListenerSet,
                   balancer: SessionBalancer | None, targets: ReloadTargets,
                   apply_listeners: Callable[[Config], None]) -> None:
    """The worker processes' supervisor (the twistd process, with processes > 1); a
    reload is forwarded to the workers and hands them the new listeners."""
    # Added last, so it starts after the listeners and is stopped first.
    supervisor = WorkerSupervisor(config, listeners.services, balancer)
    supervisor.setServiceParent(top)
    targets.forward = lambda: supervisor.signal_workers("HUP")

    def apply_and_hand_over(new: Config) -> None:
        apply_listeners(new)
        supervisor.listeners = listeners.services  # what a restarted worker inherits

    targets.apply_listeners = apply_and_hand_over


def _hint_first_user(config: Config) -> None:
    """A fresh install has no users: the log says how to add the first."""
    log.info("no users yet: add one with `mailserver{cfg} user add alice@{domain}`",
             cfg=f" --config {config.source}" if config.source else "",
             domain=(config.domains.local or ("example.org",))[0])


def _balancer(config: Config, instance: int, inherited: dict[str, int] | None,
              listeners: ListenerSet) -> SessionBalancer | None:
    """With worker processes, each one's live sessions in data_dir/run/sessions, so the
    busier ones leave new connections to the others (app/balance.py)."""
    if config.process_count <= 1:
        return None

    def ports() -> list[tuple[str, object]]:
        return [(listener.service_name, port)  # type: ignore[attr-defined]
                for listener in listeners.services
                if (port := getattr(listener, "port", None)) is not None]

    try:
        return SessionBalancer(sessions_path(config.data_dir / "run"), instance, ports,
                               fresh=inherited is None)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot open {e.filename or 'run/sessions'}: "
                           f"{e.strerror}"]) from None


def _sender_auth(context: ServerContext, local: MaildirDelivery,
                 queue: OutboundQueue) -> senderauth.SenderAuth:
    """The shared resolver, sender authentication (senderauth/), the message hooks of
    the SMTP listeners and, with SRS, port 25's own router: the same local delivery
    and queue seen through SRSDirectory and SRSQueue (forwarded copies leave with an
    SRS0 sender; a bounce to one is resolved to the original sender and relayed)."""
    config = context.config
    context.resolver = SharedResolver.from_config(config)
    auth = senderauth.build(config, context.resolver, context.disk, context.instance)
    if auth.inbound is not None and isinstance(auth.inbound.junk, MaildirDelivery):
        auth.inbound.junk.limits_of = local.limits_of  # quarantined mail counts too
    context.message_hooks = {name: hook for name in LISTENER_MAKERS
                             if (hook := auth.hook_for(name)) is not None}
    if auth.srs is not None:
        context.mx_target = DeliveryRouter(
            config, SRSDirectory(context.directory, auth.srs), local,
            SRSQueue(queue, auth.srs))
    return auth


def _events(context: ServerContext, router: DeliveryRouter) -> Webhooks:
    """Where delivery events go (events.py): one fan-out per process, in
    ServerContext.events, which the queue's scheduler and the routers' local deliveries
    publish to. A listener is one `fanout.add(...)` line here."""
    fanout = EventFanout()
    webhooks = open_webhooks(context.config, context.disk, context.resolver or
                             SharedResolver.from_config(context.config), context.instance)
    fanout.add(webhooks.publisher)  # the webhook spool (webhooks/publisher.py)
    # The API's record of what became of the messages it sent (GET /api/v1/queue/ID).
    fanout.add(ApiStates(sent_db(context.config.data_dir)))
    context.events = fanout
    context.webhooks = webhooks.registry
    disk = context.disk

    def publish(events: object) -> Deferred[None]:
        return disk.run(fanout.publish, events)

    router.publish = publish
    if isinstance(context.mx_target, DeliveryRouter):
        context.mx_target.publish = publish
    return webhooks


class _ServerRoot(service.MultiService):
    """The whole server: every child service, and the disk threads under them all.

    MultiService stops its children all at once; the disk threads must outlive them,
    because stopping services still use them (the queue finishing a round, a session
    committing the message it has already received). So the DiskExecutor is started
    first and stopped only after every child has finished stopping.
    """

    def __init__(self, disk: DiskExecutor) -> None:
        super().__init__()
        self.disk = disk

    def startService(self) -> None:
        self.disk.startService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()

        def stop_disk(result: object) -> object:
            self.disk.stopService()
            return result

        return stopped.addBoth(stop_disk)


def _mailboxes(config: Config, directory: RecipientDirectory) -> MaildirOpener:
    return MaildirOpener(config.mail_dir, config.limits.folders_per_user,
                         config.pop3.uidl_format, limits_of=directory.quota_limits)


def _build_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    maker = LISTENER_MAKERS.get(name)
    built = maker(context, name) if maker else None
    if built is None and context.instance == 0:
        log.warn("listen.{name}: there is no {name} service; not listening", name=name)
    return built


def _open_abuse(config: Config, instance: int) -> AbuseControl:
    """The shared abuse table (docs/decisions/0012). The twistd process starts first,
    before any worker: no connection is open anywhere, so every gauge is zeroed; a
    worker (re)starting zeroes its own column (a crashed one's connections are gone)."""
    try:
        table = open_table(config)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot open {e.filename or table_path(config)}: "
                           f"{e.strerror}"]) from None
    table.reset_gauges(None if instance == 0 else instance)
    control = AbuseControl(config, table, instance)
    from twisted.internet import reactor

    control.call_later = reactor.callLater  # type: ignore[attr-defined]
    # The API's counts admitted in memory reach the table before the process ends.
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", control.flush_api_counts)
    return control


def _prepare_data_dir(config: Config) -> None:
    try:
        for path in (config.data_dir, config.mail_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot create {e.filename}: {e.strerror}"]) from None
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError([f"data_dir: {config.data_dir} is not writable"])
