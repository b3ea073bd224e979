"""Listening on configured endpoints, with operator-readable failures.

A port in use or a permission problem is one line naming the config key
(`listen.smtp: cannot listen on tcp:25: address already in use`), not a traceback.
Where each service really listens is written to data_dir/run/listeners.json, so tests
and scripts can use port 0 and still find the server.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from twisted.application import service
from twisted.internet import endpoints, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.python.failure import Failure

from mailserver.core.running import hold_running_lock
from mailserver.logs import logger

log = logger(__name__)


class ListenError(Exception):
    """One line for the operator."""


class _PortService(service.Service):
    """A listening port serving one factory; stopping it stops listening and tells the
    sessions (`on_stop`) that the server is going away."""

    def __init__(self, name: str, factory: IProtocolFactory,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.setName(name)
        self.service_name = name
        self.factory = factory
        self.on_stop = on_stop
        self.port: IListeningPort | None = None

    def stopService(self) -> object:
        service.Service.stopService(self)
        result = None
        if self.port is not None:
            port, self.port = self.port, None
            result = port.stopListening()
        if self.on_stop is not None:
            self.on_stop()
        return result


class ListenerService(_PortService):
    """Listens in privilegedStartService (so ports < 1024 work before dropping root)."""

    def __init__(self, name: str, description: str, factory: IProtocolFactory,
                 registry: ListenerRegistry,
                 on_stop: Callable[[], None] | None = None) -> None:
        super().__init__(name, factory, on_stop)
        self.description = description
        self.registry = registry

    def privilegedStartService(self) -> None:
        endpoint = endpoints.serverFromString(reactor, self.description)
        outcome: list[object] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:  # pragma: no cover - stream endpoints we support listen at once
            raise ListenError(f"listen.{self.service_name}: {self.description} did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            reason = result.value
            if isinstance(reason, CannotListenError) and reason.socketError is not None:
                why = getattr(reason.socketError, "strerror", None) or str(reason.socketError)
            else:
                why = str(reason)
            raise ListenError(f"listen.{self.service_name}: cannot listen on {self.description}: "
                              f"{why.lower()}")
        self.port = result  # type: ignore[assignment]
        host = self.port.getHost()  # type: ignore[union-attr]
        self.registry.add(self.service_name, getattr(host, "host", "?"), getattr(host, "port", 0))
        log.info("{service} listening on {host}:{port}", service=self.service_name,
                 host=getattr(host, "host", "?"), port=getattr(host, "port", 0))
        service.Service.privilegedStartService(self)


def accept_one_at_a_time(port: object) -> None:
    """Make a listening port accept one connection per wake-up, not a burst.

    With worker processes every process polls the same listening socket. Twisted's
    Port.doRead accepts up to `numberAccepts` connections at a time (100, growing by
    20), so a burst of clients all landed in whichever process woke first: 20 of 20
    POP3 sessions in one worker, the other idle. One accept per wake-up lets a busy
    process leave the next connection to an idle one. Only used with processes > 1:
    a lone process loses nothing by accepting in bursts.
    """
    read = port.doRead  # type: ignore[attr-defined]

    def do_read() -> object:
        port.numberAccepts = 1  # type: ignore[attr-defined]
        return read()

    port.doRead = do_read  # type: ignore[attr-defined]


class ListenerRegistry:
    """Writes data_dir/run/listeners.json: {"smtp": ["127.0.0.1", 2525], ...}, and
    holds data_dir/run/server.lock for the process's life (core/running.py: how the
    admin tool knows a server is running)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "listeners.json"
        self.listeners: dict[str, tuple[str, int]] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        self.running_lock = hold_running_lock(run_dir)
        if self.path.exists():
            self.path.unlink()

    def add(self, name: str, host: str, port: int) -> None:
        self.listeners[name] = (host, port)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.listeners, indent=1))
        os.replace(tmp, self.path)


class AdoptedListenerService(_PortService):
    """A worker's side of a listener: the socket the twistd process made (workers.py)."""

    def __init__(self, name: str, fd: int, factory: IProtocolFactory,
                 on_stop: Callable[[], None] | None = None) -> None:
        super().__init__(name, factory, on_stop)
        self.fd = fd

    def startService(self) -> None:
        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        self.port = reactor.adoptStreamPort(self.fd, family, self.factory)  # type: ignore[attr-defined]
        accept_one_at_a_time(self.port)
        os.close(self.fd)  # adoptStreamPort keeps its own duplicate
        log.info("{service} accepting on the inherited socket", service=self.service_name)
        service.Service.startService(self)
