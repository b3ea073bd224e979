"""makeService: every configured listener in one reactor, sharing store and users."""

from __future__ import annotations

import gc
import importlib
import os
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred

from mailserver.app.context import ListenerFactory, ServerContext
from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.app.listeners import (
    AdoptedListenerService,
    ListenerRegistry,
    ListenerService,
)
from mailserver.app.tls import server_tls_options
from mailserver.app.workers import WorkerSupervisor
from mailserver.config import Config
from mailserver.errors import ConfigError
from mailserver.logs import logger
from mailserver.store.diskio import DiskExecutor

log = logger(__name__)

#: Which module builds each listener: `make_listener(context, name) -> ListenerFactory`.
#: Imported only when the service is configured. A module that does not exist yet is
#: logged as "not built yet" and skipped, so a complete config file always works.
PROTOCOL_MODULES = {
    "smtp": "mailserver.smtp.listener",
    "submission": "mailserver.smtp.listener",
    "submissions": "mailserver.smtp.listener",
    "pop3": "mailserver.pop3.listener",
    "pop3s": "mailserver.pop3.listener",
    "imap": "mailserver.imap.listener",
    "imaps": "mailserver.imap.listener",
}


def make_service(config: Config, inherited: dict[str, int] | None = None,
                 instance: int = 0) -> service.MultiService:
    """Build the whole server; ConfigError for anything the operator must fix.

    The twistd process (instance 0) listens on the configured endpoints and starts the
    worker processes; a worker (instance > 0) adopts the sockets in `inherited`.
    """
    from mailserver.auth.checker import make_portal
    from mailserver.auth.directory import RecipientDirectory
    from mailserver.store.delivery import MaildirDelivery
    from mailserver.store.diskio import make_disk

    _prepare_data_dir(config)
    # An IMAP folder of 100k messages is 100k long-lived objects per index; with the
    # default thresholds every young collection walks them (FETCH 1:* over 100k took
    # 106-195 ms instead of 13 ms). Collect less often; nothing here relies on cycles
    # being freed promptly.
    gc.set_threshold(20_000, 20, 100)
    disk = make_disk()
    top = _ServerRoot(disk)
    directory = RecipientDirectory(config)
    context = ServerContext(
        config=config, directory=directory, portal=make_portal(config, directory),
        target=MaildirDelivery(config.mail_dir, config.hostname, disk), disk=disk,
        tls=server_tls_options(config), instance=instance,
    )
    _add_queue(context, top)
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
    module_name = PROTOCOL_MODULES.get(name)
    module = _optional_module(module_name) if module_name else None
    built: ListenerFactory | None = module.make_listener(context, name) if module else None
    if built is None and context.instance == 0:
        log.warn("listen.{name}: the {name} service is not built yet; not listening",
                 name=name)
    return built


def _add_queue(context: ServerContext, top: service.MultiService) -> None:
    """The outbound queue: every process can queue; the scheduler runs in instance 0."""
    module = _optional_module("mailserver.queue.service")
    if module is not None:
        module.add_queue(context, top)


def _optional_module(name: str) -> Any:
    """The module, or None while it is not written yet (a missing package, not a
    broken import inside an existing one, which must fail loudly)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            return None
        raise


def _prepare_data_dir(config: Config) -> None:
    try:
        for path in (config.data_dir, config.mail_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot create {e.filename}: {e.strerror}"]) from None
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError([f"data_dir: {config.data_dir} is not writable"])
