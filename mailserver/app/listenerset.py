"""The listeners of one process, by service name, and how a reload changes them.

At start-up every configured listener is built (a protocol factory behind the shared
connection limits) and becomes a child service of the server. On reload, `apply` opens
the listeners the new config adds, stops listening on the ones it removes and moves the
ones whose endpoint changed. A removed listener only stops accepting: its sessions are
not told goodbye (that is for shutdown), they end when their clients leave. A listener
that cannot listen (port in use) is one error line; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application import service

from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.app.listeners import (
    AdoptedListenerService,
    ListenerRegistry,
    ListenError,
    ListenerService,
)
from mailserver.config import Config
from mailserver.core.context import ListenerFactory
from mailserver.logs import logger

log = logger(__name__)

Build = Callable[[str], ListenerFactory | None]


class ListenerSet:
    """Builds, holds and re-targets this process's listeners."""

    def __init__(self, parent: service.MultiService, build: Build,
                 counter: ConnectionCounter, registry: ListenerRegistry | None,
                 inherited: dict[str, int] | None) -> None:
        self.parent = parent
        self.build = build
        self.counter = counter
        self.registry = registry
        self.inherited = inherited
        self.by_name: dict[str, service.Service] = {}
        self.descriptions: dict[str, str] = {}
        #: The protocol factories, for the reload to hand them the new config.
        self.factories: list[object] = []

    @property
    def services(self) -> list[service.Service]:
        return list(self.by_name.values())

    def start_all(self, config: Config) -> None:
        """At start-up: every configured listener (the parent starts them)."""
        for name, description in config.listen.enabled().items():
            listener = self._make(name, description)
            if listener is not None:
                listener.setServiceParent(self.parent)

    def _make(self, name: str, description: str) -> service.Service | None:
        built = self.build(name)
        if built is None:
            return None
        limited = LimitedFactory(built.factory, self.counter, built.refusal)
        listener: service.Service
        if self.inherited is None:
            assert self.registry is not None
            listener = ListenerService(name, description, limited, self.registry,
                                       on_stop=built.on_stop)
        elif name in self.inherited:
            listener = AdoptedListenerService(name, self.inherited[name], limited,
                                              on_stop=built.on_stop)
        else:
            return None
        self.by_name[name] = listener
        self.descriptions[name] = description
        self.factories.append(_protocol_factory(built.factory))
        return listener

    def apply(self, config: Config) -> None:
        """A reload: new limits; listeners added, removed or moved (twistd process)."""
        self.counter.total_limit = config.limits.connections
        self.counter.per_ip_limit = config.limits.connections_per_ip
        wanted = config.listen.enabled()
        for name in list(self.by_name):
            if wanted.get(name) != self.descriptions[name]:
                self._remove(name)
        if self.inherited is not None:
            # A worker closes its copy of a removed or moved socket (else the port
            # would stay open in it) but cannot open new ones: see reload.py.
            return
        for name, description in wanted.items():
            if name not in self.by_name:
                self._add(name, description)

    def _remove(self, name: str) -> None:
        listener = self.by_name.pop(name)
        self.descriptions.pop(name)
        # Stop accepting, but leave the sessions alone: no on_stop, no goodbye.
        listener.on_stop = None  # type: ignore[attr-defined]
        listener.disownServiceParent()
        if self.registry is not None:
            self.registry.remove(name)
        log.info("reload: {service} no longer listening", service=name)

    def _add(self, name: str, description: str) -> None:
        listener = self._make(name, description)
        if listener is None:
            return
        try:
            listener.setServiceParent(self.parent)  # listens and starts: parent runs
        except ListenError as e:
            listener.on_stop = None  # type: ignore[attr-defined]
            listener.disownServiceParent()
            del self.by_name[name]
            del self.descriptions[name]
            log.error("reload: {problem}", problem=str(e))


def _protocol_factory(factory: object) -> object:
    """The protocol's own factory under an implicit-TLS wrapper (it holds `config`)."""
    return getattr(factory, "wrappedFactory", factory)
