"""makeService: every configured listener in one reactor, sharing store and users."""

from __future__ import annotations

import os

from twisted.application import service

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

log = logger(__name__)

#: Services whose protocol is not built yet (issues 3-5); configured ones are skipped
#: with a warning so an operator's complete config file already works.
NOT_BUILT_YET = ("submission", "submissions", "pop3", "pop3s", "imap", "imaps")


def make_service(config: Config, inherited: dict[str, int] | None = None,
                 instance: int = 0) -> service.MultiService:
    """Build the whole server; ConfigError for anything the operator must fix.

    The twistd process (instance 0) listens on the configured endpoints and starts the
    worker processes; a worker (instance > 0) adopts the sockets in `inherited`.
    """
    from mailserver.auth.directory import RecipientDirectory
    from mailserver.smtp.server import SMTPServerFactory
    from mailserver.store.delivery import MaildirDelivery
    from mailserver.store.diskio import make_disk

    _prepare_data_dir(config)
    top = service.MultiService()
    disk = make_disk()
    disk.setServiceParent(top)
    directory = RecipientDirectory(config)
    target = MaildirDelivery(config.mail_dir, config.hostname, disk)
    tls = server_tls_options(config)
    counter = ConnectionCounter(config.limits.connections, config.limits.connections_per_ip)
    registry = ListenerRegistry(config.data_dir / "run") if inherited is None else None
    listeners: list[service.Service] = []

    for name, description in config.listen.enabled().items():
        if name == "smtp":
            factory = SMTPServerFactory(config, directory, target, tls_options=tls,
                                        instance=instance)
            refusal = f"421 4.7.0 {config.hostname} Error: too many connections\r\n"
            limited = LimitedFactory(factory, counter, refusal.encode())
            listener: service.Service
            if inherited is None:
                assert registry is not None
                listener = ListenerService(name, description, limited, registry,
                                           on_stop=factory.shut_down)
            elif name in inherited:
                listener = AdoptedListenerService(name, inherited[name], limited,
                                                  on_stop=factory.shut_down)
            else:
                continue
            listener.setServiceParent(top)
            listeners.append(listener)
        elif name in NOT_BUILT_YET and instance == 0:
            log.warn("listen.{name}: the {name} service is not built yet; not listening",
                     name=name)
    if inherited is None and config.process_count > 1:
        # Added last, so it starts after the listeners and is stopped first.
        WorkerSupervisor(config, listeners).setServiceParent(top)
    if instance == 0 and not config.users_file.exists():
        log.info("no users yet: add one with `mailserver{cfg} user add alice@{domain}`",
                 cfg=f" --config {config.source}" if config.source else "",
                 domain=(config.domains.local or ("example.org",))[0])
    return top


def _prepare_data_dir(config: Config) -> None:
    try:
        for path in (config.data_dir, config.mail_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError([f"data_dir: cannot create {e.filename}: {e.strerror}"]) from None
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError([f"data_dir: {config.data_dir} is not writable"])
