"""makeService: every configured listener in one reactor, sharing store and users."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

from twisted.application import service
from twisted.internet.defer import Deferred

from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.app.listeners import (
    AdoptedListenerService,
    ListenerRegistry,
    ListenerService,
)
from mailserver.app.tls import server_tls_options
from mailserver.app.workers import WorkerSupervisor
from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.config import Config
from mailserver.core.context import ListenerFactory, ServerContext
from mailserver.core.diskio import DiskExecutor, make_disk
from mailserver.core.dns import SharedResolver
from mailserver.errors import ConfigError
from mailserver.imap import listener as imap_listener
from mailserver.logs import logger
from mailserver.pop3 import listener as pop3_listener
from mailserver.queue.service import QueueService, open_queue
from mailserver.senderauth import service as senderauth
from mailserver.smtp import listener as smtp_listener
from mailserver.store.delivery import MaildirDelivery

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
}


def make_service(config: Config, inherited: dict[str, int] | None = None,
                 instance: int = 0) -> service.MultiService:
    """Build the whole server; ConfigError for anything the operator must fix.

    The twistd process (instance 0) listens on the configured endpoints and starts the
    worker processes; a worker (instance > 0) adopts the sockets in `inherited`.
    """
    _prepare_data_dir(config)
    # An IMAP folder of 100k messages is 100k long-lived objects per index; with the
    # default thresholds every young collection walks them (FETCH 1:* over 100k took
    # 106-195 ms instead of 13 ms). Collect less often; nothing here relies on cycles
    # being freed promptly.
    gc.set_threshold(20_000, 20, 100)
    disk = make_disk()
    top = _ServerRoot(disk)
    directory = RecipientDirectory(config)
    spool, queue = open_queue(config, disk)
    context = ServerContext(
        config=config, directory=directory, portal=make_portal(config, directory),
        target=MaildirDelivery(config.mail_dir, config.hostname, disk), disk=disk,
        tls=server_tls_options(config), queue=queue, instance=instance,
    )
    context.resolver = SharedResolver.from_config(config)
    context.senderauth = senderauth.build(config, context.resolver, disk, instance)
    if instance == 0:
        QueueService(context, spool, queue).setServiceParent(top)
    counter = ConnectionCounter(config.limits.connections, config.limits.connections_per_ip)
    registry = ListenerRegistry(config.data_dir / "run") if inherited is None else None
    listeners: list[service.Service] = []

    for name, description in config.listen.enabled().items():
        built = _build_listener(context, name)
        if built is None:
            continue
        limited = LimitedFactory(built.factory, counter, built.refusal)
        listener: service.Service
        if inherited is None:
            assert registry is not None
            listener = ListenerService(name, description, limited, registry,
                                       on_stop=built.on_stop)
        elif name in inherited:
            listener = AdoptedListenerService(name, inherited[name], limited,
                                              on_stop=built.on_stop)
        else:
            continue
        listener.setServiceParent(top)
        listeners.append(listener)
    if inherited is None and config.process_count > 1:
        # Added last, so it starts after the listeners and is stopped first.
        WorkerSupervisor(config, listeners).setServiceParent(top)
    if instance == 0 and not config.users_file.exists():
        log.info("no users yet: add one with `mailserver{cfg} user add alice@{domain}`",
                 cfg=f" --config {config.source}" if config.source else "",
                 domain=(config.domains.local or ("example.org",))[0])
    return top


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


def _build_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    maker = LISTENER_MAKERS.get(name)
    built = maker(context, name) if maker else None
    if built is None and context.instance == 0:
        log.warn("listen.{name}: there is no {name} service; not listening", name=name)
    return built


def _prepare_data_dir(config: Config) -> None:
    try:
        for path in (config.data_dir, config.mail_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot create {e.filename}: {e.strerror}"]) from None
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError([f"data_dir: {config.data_dir} is not writable"])
