"""Node health: instance 0 checks every node; every process reads what it found.

Instance 0 (the twistd process) connects to every node's `cluster.health_service`
port (by default IMAP's, else submission's, ...) every `cluster.health_interval` seconds, all nodes at once, each connect bounded
by the interval (at most 5 s). A node is down after `cluster.health_failures` failed
checks in a row and up again after one success: a node that flaps stays out until it
answers, and a single lost SYN does not move its users. Every node starts up, so a
freshly started cluster serves at once.

The findings go to data_dir/run/cluster-health.json, written whole to a temporary
file and renamed over the old one (a reader sees the old or the new file, never half
of one), in a disk thread. The worker processes (and `mailserver cluster status`)
read that file; a process's HealthView reads it again, in a disk thread, when its
copy is older than a second, so a flip reaches every worker within a second of being
written. A connect to the port, not a protocol exchange: it proves the process
accepts connections, which is what nginx will do next; a node that accepts and then
hangs is caught by nginx's proxy_timeout, not here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.task import LoopingCall

from mailserver.cluster.nodes import service_port
from mailserver.config import Config
from mailserver.config_sections import HEALTH_SERVICES
from mailserver.core.diskio import DiskExecutor
from mailserver.logs import logger

log = logger(__name__)

#: Longest a connect may take before it counts as a failure.
MAX_CONNECT_TIMEOUT = 5.0
#: Seconds a process trusts its copy of the health file before reading it again.
VIEW_MAX_AGE = 1.0


def state_path(config: Config) -> Path:
    return config.data_dir / "run" / "cluster-health.json"


@dataclass(frozen=True)
class NodeHealth:
    """One node as the checks last saw it (times are Unix seconds)."""

    name: str
    address: str
    up: bool
    #: When it last went up or down (or when the checks started).
    since: float
    #: When the last check finished; 0: not checked yet.
    last_check: float = 0.0
    #: Failed checks in a row.
    failures: int = 0
    #: Why the last check failed ("" after a success).
    error: str = ""

    def after(self, ok: bool, error: str, now: float, threshold: int) -> NodeHealth:
        """This node after one more check."""
        if ok:
            return replace(self, up=True, since=self.since if self.up else now,
                           last_check=now, failures=0, error="")
        failures = self.failures + 1
        down = not self.up or failures >= threshold
        return replace(self, up=not down, since=now if self.up and down else self.since,
                       last_check=now, failures=failures, error=error[:200])


def health_service(config: Config) -> str | None:
    """The listener the checks connect to: cluster.health_service, or the first of
    HEALTH_SERVICES this node listens on; None when it listens on none."""
    if config.cluster.health_service:
        return config.cluster.health_service
    enabled = config.listen.enabled()
    return next((name for name in HEALTH_SERVICES if name in enabled), None)


def initial_state(config: Config, now: float) -> dict[str, NodeHealth]:
    return {name: NodeHealth(name, address, True, now)
            for name, address in config.cluster.nodes.items()}


def write_state(path: Path, nodes: Mapping[str, NodeHealth]) -> None:
    """Replace the health file atomically (blocking: a disk thread's job)."""
    data = {"nodes": [asdict(n) for n in nodes.values()]}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, NodeHealth] | None:
    """The health file's nodes; None when there is none or it is unreadable
    (blocking: a disk thread's job, or the admin command's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {n["name"]: NodeHealth(**n) for n in data["nodes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


class HealthView:
    """Which nodes are down, as this process last read the health file."""

    def __init__(self, path: Path, disk: DiskExecutor, clock: Any = None) -> None:
        self.path = path
        self.disk = disk
        self._clock = clock
        self._read_at: float | None = None
        self._nodes: dict[str, NodeHealth] = {}

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return float(self._clock.seconds())

    async def down(self) -> frozenset[str]:
        """Names of the nodes marked down (none before the first check is written)."""
        now = self._now()
        if self._read_at is None or now - self._read_at >= VIEW_MAX_AGE:
            found = await self.disk.run(read_state, self.path)
            self._nodes = found or {}
            self._read_at = now
        return frozenset(name for name, node in self._nodes.items() if not node.up)


Connect = Callable[[str, int, float], "defer.Deferred[None]"]


def tcp_connect(address: str, port: int, timeout: float) -> defer.Deferred[None]:
    """Open a TCP connection to address:port and close it at once (fires None, or
    fails with the connect's error)."""
    from twisted.internet import reactor

    kind = endpoints.TCP6ClientEndpoint if ipaddress.ip_address(address).version == 6 \
        else endpoints.TCP4ClientEndpoint
    endpoint = kind(reactor, address, port, timeout=timeout)
    d = endpoint.connect(_QuietFactory())

    def close(proto: Any) -> None:
        proto.transport.abortConnection()  # no goodbye: the port answered

    return d.addCallback(close)


class _QuietFactory(protocol.Factory):
    """A factory that does not log "Starting factory" twice per check and node."""

    noisy = False
    protocol = protocol.Protocol


class HealthChecker(Service):
    """Instance 0's checks of every node (module docstring). Always there in instance
    0, idle while cluster.nodes is empty, so a reload that adds [cluster] starts it."""

    def __init__(self, config: Config, disk: DiskExecutor,
                 listening: Callable[[], dict[str, int]],
                 connect: Connect = tcp_connect, clock: Any = None) -> None:
        self.nodes: dict[str, NodeHealth] = {}
        self._loop: LoopingCall | None = None
        self._config = config
        self.disk = disk
        self.listening = listening
        self.connect = connect
        self._clock = clock
        self.path = state_path(config)
        #: The listener the last round could not find a port for (warned once).
        self._no_port: str | None = None

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, new: Config) -> None:
        """A reload (app/reload.py sets `config` on its holders): nodes added start up,
        nodes removed are forgotten, a node whose address changed starts afresh; a new
        interval takes effect from the next round."""
        old, self._config = self._config, new
        fresh = initial_state(new, self._now())
        self.nodes = {name: self.nodes[name] if name in self.nodes
                      and self.nodes[name].address == node.address else node
                      for name, node in fresh.items()}
        if self._loop is not None and self._loop.running and \
                new.cluster.health_interval != old.cluster.health_interval:
            self._loop.stop()
            self._new_loop().start(new.cluster.health_interval, now=False)

    def _new_loop(self) -> LoopingCall:
        self._loop = LoopingCall(self.check_all)
        if self._clock is not None:
            self._loop.clock = self._clock
        return self._loop

    def _now(self) -> float:
        return time.time() if self._clock is None else float(self._clock.seconds())

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.nodes = initial_state(self.config, self._now())
        self._new_loop()
        if not self.nodes:
            self._start_loop()  # idle rounds, until a reload brings nodes
            return
        # A file left by the previous run must not outlive it: every node starts up,
        # written before the first round (disk jobs are not ordered among themselves).
        d = self.disk.run(write_state, self.path, dict(self.nodes))
        d.addErrback(lambda f: log.error("cluster: cannot write {path}: {e}",
                                         path=str(self.path), e=f.value))
        d.addCallback(lambda _: self._start_loop())

    def _start_loop(self) -> None:
        if self._loop is None or not self.running:
            return
        self._loop.start(self.config.cluster.health_interval, now=True).addErrback(
            lambda f: log.failure("cluster health checks stopped", f))

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    async def _check(self, node: NodeHealth, port: int, timeout: float) -> tuple[bool, str]:
        try:
            await self.connect(node.address, port, timeout)
        except Exception as e:  # noqa: BLE001 - any failure to connect is "down"
            return False, f"{type(e).__name__}: {e}"
        return True, ""

    def check_all(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._check_all())

    async def _check_all(self) -> None:
        """One round: every node at once; then the file, in a disk thread."""
        cluster = self.config.cluster
        if not self.nodes:
            return  # no [cluster] (yet)
        name = health_service(self.config)
        port = service_port(name, self.config.listen.enabled(), self.listening()) \
            if name else None
        if port is None:
            if self._no_port != name:
                log.warn("cluster.health_service: listen.{name} has no TCP port; no "
                         "health checks, every node counts as up", name=name or "imap")
            self._no_port = name
            return
        self._no_port = None
        timeout = min(float(cluster.health_interval), MAX_CONNECT_TIMEOUT)
        nodes = list(self.nodes.values())
        results = await defer.gatherResults(
            [defer.ensureDeferred(self._check(n, port, timeout)) for n in nodes])
        now = self._now()
        for node, (ok, error) in zip(nodes, results, strict=True):
            if self.nodes.get(node.name) != node:
                continue  # a reload during the round removed or re-addressed it
            new = node.after(ok, error, now, cluster.health_failures)
            if new.up != node.up:
                log.warn("cluster: node {name} ({address}) is {state}{why}", name=node.name,
                         address=node.address, state="up" if new.up else "down",
                         why="" if new.up else f": {error}")
            self.nodes[node.name] = new
        try:
            await self.disk.run(write_state, self.path, dict(self.nodes))
        except OSError as e:
            log.error("cluster: cannot write {path}: {e}", path=str(self.path), e=e)
