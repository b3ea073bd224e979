"""makeService: every configured listener in one reactor, sharing store and users."""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable

from twisted.application import service
from twisted.internet.defer import Deferred

from mailserver.abuse.control import AbuseControl, open_table, table_path
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
from mailserver.http import listener as http_listener
from mailserver.imap import listener as imap_listener
from mailserver.imap.urlauth import SubmitUrls
from mailserver.logs import logger
from mailserver.pop3 import listener as pop3_listener
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.reports import LocalSuccessReports
from mailserver.queue.service import QueueService, open_queue
from mailserver.senderauth import service as senderauth
from mailserver.senderauth.srs import SRSDirectory, SRSQueue
from mailserver.smtp import listener as smtp_listener
from mailserver.store import sharedfs
from mailserver.store.delivery import MaildirDelivery
from mailserver.store.opener import MaildirOpener

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
    context.submit_urls = SubmitUrls(directory, context.mailboxes, disk.reads)  # BURL
    auth = _sender_auth(context, local, queue)
    context.web_resources = web_resources(context)
    # Success reports of the copies the sessions deliver locally (RFC 3461 NOTIFY=SUCCESS).
    reports = LocalSuccessReports(queue, auth.signer.sign_dsn if auth.signer else None)
    router.reporter = reports
    if isinstance(context.mx_target, DeliveryRouter):
        context.mx_target.reporter = reports

    def fresh_context(new: Config) -> ServerContext:
        """A reload's context: the new config and what is made from it alone; the
        directory, portal, routers, disk threads, TLS, throttle, abuse table, resolver
        and message hooks are the same objects (built once, some with blocking work)."""
        fresh = dataclasses.replace(context, config=new, mailboxes=_mailboxes(new, directory))
        fresh.web_resources = web_resources(fresh)
        return fresh

    holders: list[object] = [context, router, directory]
    if context.mx_target is not None:
        holders.append(context.mx_target)  # port 25's router (SRS): new domains are local
    if instance == 0:
        queue_service = QueueService(context, spool, queue)
        if auth.signer is not None:
            # Our DSNs and delay notices leave DKIM-signed (senderauth/signing.py).
            queue_service.scheduler.sign_dsn = auth.signer.sign_dsn
        queue_service.setServiceParent(top)
        QueueGauges(spool, disk).setServiceParent(top)
        # `mailserver sendmail`'s messages, DKIM-signed as submitted ones are.
        pickup = PickupService(config, router, auth.signing)
        pickup.setServiceParent(top)
        holders.append(pickup)
    counter = ConnectionCounter(config.limits.connections, config.limits.connections_per_ip,
                                control=abuse)
    registry = ListenerRegistry(config.data_dir / "run") if inherited is None else None
    listeners = ListenerSet(top, lambda name: _build_listener(context, name), counter,
                            registry, inherited)
    balancer = _balancer(config, instance, inherited, listeners)
    if balancer is not None:
        balancer.setServiceParent(top)
        counter.balancer = balancer

    def apply_listeners(new: Config) -> None:
        abuse.reconfigure(new)
        fresh = fresh_context(new)
        listeners.apply(new, lambda name: _build_listener(fresh, name))
        if balancer is not None:
            balancer.sync_ports()

    targets = ReloadTargets(tls=tls, holders=lambda: holders,
                            apply_listeners=apply_listeners)
    Reloader(config, targets, record=instance == 0).setServiceParent(top)
    listeners.start_all(config)
    if instance == 0:  # after the listeners (their ports); idle without [cluster]
        checker = HealthChecker(config, disk, listeners.listening_ports)
        checker.setServiceParent(top)
        holders.append(checker)  # a reload's nodes and interval
    if instance == 0:
        from mailserver.app.acme import AcmeService

        # Always there, idle without [acme]: a reload that adds [acme] starts it.
        AcmeService(config, reload=targets).setServiceParent(top)
    if inherited is None and config.process_count > 1:
        # Added last, so it starts after the listeners and is stopped first.
        supervisor = WorkerSupervisor(config, listeners.services, balancer)
        supervisor.setServiceParent(top)
        targets.forward = lambda: supervisor.signal_workers("HUP")

        def apply_and_hand_over(new: Config) -> None:
            apply_listeners(new)
            supervisor.listeners = listeners.services  # what a restarted worker inherits

        targets.apply_listeners = apply_and_hand_over
    if instance == 0 and not config.users_file.exists():
        log.info("no users yet: add one with `mailserver{cfg} user add alice@{domain}`",
                 cfg=f" --config {config.source}" if config.source else "",
                 domain=(config.domains.local or ("example.org",))[0])
    return top


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
    return AbuseControl(config, table, instance)


def _prepare_data_dir(config: Config) -> None:
    try:
        for path in (config.data_dir, config.mail_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot create {e.filename}: {e.strerror}"]) from None
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError([f"data_dir: {config.data_dir} is not writable"])
