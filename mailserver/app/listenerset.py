"""The listeners of one process, by service name, and how a reload changes them.

At start-up every configured listener is built (a protocol factory behind the shared
connection limits) and becomes a child service of the server. On reload, `apply` opens
the listeners the new config adds, stops listening on the ones it removes and moves the
ones whose endpoint changed; every listener kept gets a protocol factory built anew
from the new config (its limits, policies, sending limits, blocklists, web site), which
takes the connections accepted from then on. A session keeps the factory it was made
by; a replaced factory is kept only while it still has sessions, so the shutdown can
tell them goodbye. A removed listener only stops accepting: its sessions are not told
goodbye (that is for shutdown), they end when their clients leave. A listener that
cannot listen (port in use) is one error line; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.application import service

from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.app.listeners import (
    AdoptedListenerService,
    ListenerRegistry,
    ListenError,
    ListenerService,
)
from mailserver.app.proxyproto import ProxyProtocolFactory
from mailserver.config import Config
from mailserver.core.context import ListenerFactory
from mailserver.core.peer import Networks
from mailserver.errors import ConfigError
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
        #: What each listener's LimitedFactory hands connections to now ...
        self.current: dict[str, ListenerFactory] = {}
        self.limited: dict[str, LimitedFactory] = {}
        #: The outermost factory of each listener: PROXY headers (app/proxyproto.py).
        self.proxied: dict[str, ProxyProtocolFactory] = {}
        self.config: Config | None = None
        #: ... and the factories a reload replaced that still have sessions.
        self.retired: dict[str, list[ListenerFactory]] = {}

    @property
    def services(self) -> list[service.Service]:
        return list(self.by_name.values())

    def listening_ports(self) -> dict[str, int]:
        """Service name -> the port it really listens on (autoconfig describes these)."""
        found = {}
        for name, listener in self.by_name.items():
            port = getattr(listener, "port", None)
            if port is not None:
                found[name] = getattr(port.getHost(), "port", 0)
        return found

    def start_all(self, config: Config) -> None:
        """At start-up: every configured listener (the parent starts them)."""
        self.config = config
        for name, description in config.listen.enabled().items():
            listener = self._make(name, description)
            if listener is not None:
                listener.setServiceParent(self.parent)

    def _make(self, name: str, description: str) -> service.Service | None:
        built = self.build(name)
        if built is None:
            return None
        limited = LimitedFactory(built.factory, self.counter, built.refusal, service=name)
        outer = ProxyProtocolFactory(limited, name, Networks(), expect_header=False)
        self._proxy_policy(outer)
        on_stop = partial(self._say_goodbye, name)
        listener: service.Service
        if self.inherited is None:
            assert self.registry is not None
            listener = ListenerService(name, description, outer, self.registry,
                                       on_stop=on_stop)
        elif name in self.inherited:
            listener = AdoptedListenerService(name, self.inherited[name], outer,
                                              on_stop=on_stop)
        else:
            return None
        self.by_name[name] = listener
        self.descriptions[name] = description
        self.limited[name] = limited
        self.proxied[name] = outer
        self.current[name] = built
        self._wire(built)
        return listener

    def _proxy_policy(self, outer: ProxyProtocolFactory) -> None:
        """Who may send a PROXY header to this listener, and whether they must
        (cluster.trusted_proxies, cluster.proxy_protocol); a reload applies it anew."""
        if self.config is None:
            return
        cluster = self.config.cluster
        outer.trusted = Networks(cluster.trusted_proxies)
        outer.expect_header = outer.service in cluster.proxy_protocol

    def _wire(self, built: ListenerFactory) -> None:
        if "site" in built.extra:  # the web site (http/listener.py) lists our ports
            built.extra["site"].listening = self.listening_ports

    def _say_goodbye(self, name: str) -> None:
        """The server stops: the sessions of every factory of this listener, the current
        one and those a reload replaced, say goodbye (421, * BYE, -ERR)."""
        for built in [*self.retired.pop(name, []), self.current[name]]:
            if built.on_stop is not None:
                built.on_stop()

    def apply(self, config: Config, build: Build | None = None) -> None:
        """A reload: new limits; listeners added, removed or moved; the kept ones get
        factories made by `build` (the new config's) for the connections to come."""
        if build is not None:
            self.build = build
        self.config = config
        self.counter.total_limit = config.limits.connections
        self.counter.per_ip_limit = config.limits.connections_per_ip
        wanted = config.listen.enabled()
        for name in list(self.by_name):
            if wanted.get(name) != self.descriptions[name]:
                self._remove(name)
            else:
                self._refresh(name)
        if self.inherited is not None:
            # A worker closes its copy of a removed or moved socket (else the port
            # would stay open in it) but cannot open new ones: see reload.py.
            return
        for name, description in wanted.items():
            if name not in self.by_name:
                self._add(name, description)

    def _refresh(self, name: str) -> None:
        built = self._build_again(name)
        if built is None:
            return
        old, limited = self.current[name], self.limited[name]
        old_protocol, new_protocol = _protocol_factory(old), _protocol_factory(built)
        if hasattr(old_protocol, "sessions_started"):
            # Session ids ("smtp-12") go on counting: the log never shows one twice.
            new_protocol.sessions_started = old_protocol.sessions_started  # type: ignore[attr-defined]
        if limited.numPorts:  # listening: start the new factory, as the port did the old
            built.factory.doStart()
            old.factory.doStop()
        limited.wrappedFactory = built.factory
        limited.refusal = built.refusal
        self._proxy_policy(self.proxied[name])
        self.current[name] = built
        self._wire(built)
        self.retired[name] = [b for b in [*self.retired.get(name, []), old]
                              if _has_sessions(b)]

    def _build_again(self, name: str) -> ListenerFactory | None:
        try:
            return self.build(name)
        except ConfigError as e:  # e.g. http.metrics_token_file emptied meanwhile
            for problem in e.problems:
                log.error("reload: {problem}; listen.{name} goes on as before",
                          problem=problem, name=name)
            return None

    def _remove(self, name: str) -> None:
        listener = self.by_name.pop(name)
        self.descriptions.pop(name)
        self.current.pop(name)
        self.limited.pop(name)
        self.proxied.pop(name)
        self.retired.pop(name, None)
        # Stop accepting, but leave the sessions alone: no on_stop, no goodbye.
        listener.on_stop = None  # type: ignore[attr-defined]
        listener.disownServiceParent()
        if self.registry is not None:
            self.registry.remove(name)
        log.info("reload: {service} no longer listening", service=name)

    def _add(self, name: str, description: str) -> None:
        try:
            listener = self._make(name, description)
        except ConfigError as e:
            for problem in e.problems:
                log.error("reload: {problem}; listen.{name} not opened", problem=problem,
                          name=name)
            return
        if listener is None:
            return
        try:
            listener.setServiceParent(self.parent)  # listens and starts: parent runs
        except ListenError as e:
            listener.on_stop = None  # type: ignore[attr-defined]
            listener.disownServiceParent()
            del self.by_name[name], self.descriptions[name]
            del self.current[name], self.limited[name], self.proxied[name]
            log.error("reload: {problem}", problem=str(e))


def _protocol_factory(built: ListenerFactory) -> object:
    """The protocol's own factory under an implicit-TLS wrapper."""
    return getattr(built.factory, "wrappedFactory", built.factory)


def _has_sessions(built: ListenerFactory) -> bool:
    """Whether a replaced factory still has sessions to tell goodbye at shutdown."""
    return built.on_stop is not None and bool(
        getattr(_protocol_factory(built), "sessions", True))
