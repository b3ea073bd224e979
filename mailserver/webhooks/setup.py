"""The webhooks' parts for one process, as app/service.py wires them."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import reactor

from mailserver.config import Config
from mailserver.core.diskio import DiskExecutor
from mailserver.core.dns import SharedResolver
from mailserver.errors import ConfigError
from mailserver.webhooks.dispatcher import Checker, Dispatcher
from mailserver.webhooks.hooks import HookStore
from mailserver.webhooks.publisher import WebhookPublisher
from mailserver.webhooks.registry import Registry
from mailserver.webhooks.sender import Sender, trust_from
from mailserver.webhooks.spool import WebhookSpool
from mailserver.webhooks.urlcheck import (
    Target,
    dns_lookup,
    networks,
    own_listeners,
    resolve_and_check,
)


@dataclass
class Webhooks:
    publisher: WebhookPublisher
    registry: Registry
    #: Instance 0 only.
    dispatcher: Dispatcher | None


def checker(config: Config, resolver: SharedResolver) -> Checker:
    """url -> Target or Refused, with this config's allow-list and our listeners."""
    lookup = dns_lookup(resolver.resolver(float(config.webhooks.timeout)))
    allowed = networks(config.webhooks.allowed_networks)

    def check(url: str) -> Target:
        return resolve_and_check(url, lookup, allowed, own_listeners(config.data_dir))

    return check


def open_webhooks(config: Config, disk: DiskExecutor, resolver: SharedResolver,
                  instance: int) -> Webhooks:
    """The spool (directories made: start-up, blocking), the hooks, and in instance 0
    the dispatcher; ConfigError naming the path if data_dir/webhooks is unusable."""
    root = config.data_dir / "webhooks"
    spool = WebhookSpool(root)
    try:
        spool.ensure_dirs()
        trust = trust_from(config.relay.ca_file)
    except OSError as e:
        raise ConfigError([f"webhooks: cannot use {e.filename or root}: "
                           f"{e.strerror}"]) from None
    store = HookStore(root, config)
    check = checker(config, resolver)
    publisher = WebhookPublisher(config, store, spool)
    dispatcher = None
    if instance == 0:
        sender = Sender(reactor, trust, float(config.webhooks.timeout),
                        per_host=config.webhooks.concurrency)
        dispatcher = Dispatcher(config, spool, store, disk, check, sender)
        publisher.written = dispatcher.take_from_thread
    return Webhooks(publisher, Registry(store, check), dispatcher)


__all__ = ["Webhooks", "open_webhooks"]
