"""Worker processes that share the listening sockets (config key `processes`).

One Python process runs Python on about one core at a time (the GIL), and on a 2-core
machine one process delivered ~620 msgs/s where two reached ~1,200 (measured, README).
So, like Postfix's many smtpd processes, the twistd process listens and then starts
`processes - 1` workers that inherit the listening sockets; every process accepts on
them and the kernel spreads the connections. Each worker builds the same services
(its own disk threads, users cache, sessions) from the same config. That is safe
because everything shared lives on disk and the store is written for several
processes (unique names, link/rename, file locks).

A worker exits when the twistd process is gone: it holds the read end of a pipe whose
write end only the parent has, so even a SIGKILLed parent leaves no orphans.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from mailserver.app.balance import SessionBalancer, mark_absent, sessions_path
from mailserver.app.listeners import accept_one_at_a_time
from mailserver.config import Config
from mailserver.core import metrics
from mailserver.logs import logger

log = logger(__name__)

#: Seconds a worker gets to finish its sessions after SIGTERM before SIGKILL.
STOP_GRACE = 20.0
#: Seconds before a crashed worker is started again.
RESTART_DELAY = 1.0
#: Seconds the twistd process waits for its workers before it accepts connections.
READY_TIMEOUT = 15.0


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, instance: int) -> None:
        self.supervisor = supervisor
        self.instance = instance
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = pid = getattr(self.transport, "pid", None)
        log.info("worker {n} started (pid {pid})", n=self.instance, pid=pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if b"ready" in data:
            self.supervisor.ready(self.instance)

    def processEnded(self, reason: Failure) -> None:
        if self.pid is not None:
            metrics.process_ended(self.pid)
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts, restarts and stops the worker processes of the twistd process."""

    def __init__(self, config: Config, listeners: Sequence[service.Service],
                 balancer: SessionBalancer | None = None) -> None:
        self.config = config
        self.listeners = listeners
        #: Decides with us whether this process accepts (app/balance.py).
        self.balancer = balancer
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.waiting_for: set[int] = set()
        self.resume_call: IDelayedCall | None = None

    def _ports(self) -> dict[str, Any]:
        """The listening ports of this process, by service name."""
        return {listener.service_name: listener.port  # type: ignore[attr-defined]
                for listener in self.listeners if getattr(listener, "port", None) is not None}

    def inherited_fds(self) -> dict[str, int]:
        return {name: port.fileno() for name, port in self._ports().items()}

    def startService(self) -> None:
        """Start the workers; accept nothing ourselves until they are ready.

        Were we to accept at once, a burst of long-lived connections arriving while the
        workers still import their code would all land here, and stay. Meanwhile the
        kernel queues new connections in the listen backlog.
        """
        service.Service.startService(self)
        for port in self._ports().values():
            accept_one_at_a_time(port)
        if self.balancer is not None:
            self.balancer.shared = set(self._ports())  # what the workers inherit
        self._set_accepting(False)
        self.waiting_for = set(range(1, self.config.process_count))
        for instance in sorted(self.waiting_for):
            self._spawn(instance)
        self.resume_call = reactor.callLater(READY_TIMEOUT, self._resume)  # type: ignore[attr-defined]

    def ready(self, instance: int) -> None:
        self.waiting_for.discard(instance)
        if not self.waiting_for:
            self._resume()

    def _resume(self) -> None:
        if self.waiting_for:
            log.warn("workers {ns} not ready after {s} s; accepting anyway",
                     ns=sorted(self.waiting_for), s=READY_TIMEOUT)
            self.waiting_for.clear()
        if self.resume_call is not None and self.resume_call.active():
            self.resume_call.cancel()
        self.resume_call = None
        self._set_accepting(True)

    def _set_accepting(self, on: bool) -> None:
        if self.balancer is not None:
            self.balancer.hold(not on)
            return
        for port in self._ports().values():
            port.startReading() if on else port.stopReading()

    def _spawn(self, instance: int) -> None:
        fds = self.inherited_fds()
        args = [sys.executable, "-m", "mailserver.app.worker", "--instance", str(instance)]
        if self.config.source is not None:
            args += ["--config", str(self.config.source.absolute())]
        ready_fd = max([2, *fds.values()]) + 1  # the worker says "ready" on this pipe
        args += [f"--listener={name}={fd}" for name, fd in sorted(fds.items())]
        args += ["--ready-fd", str(ready_fd)]
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, ready_fd: "r"}
        child_fds.update({fd: fd for fd in fds.values()})
        worker = _Worker(self, instance)
        try:
            reactor.spawnProcess(worker, sys.executable, args, env=dict(os.environ),  # type: ignore[attr-defined]
                                 childFDs=child_fds)
        except OSError as e:
            # E.g. the service user may not run this Python (a venv under a 0700
            # home): serve with the processes there are rather than not at all.
            log.error("worker {n}: cannot start {python}: {why}; serving with fewer "
                      "processes", n=instance, python=sys.executable,
                      why=e.strerror or str(e))
            self.ready(instance)
            return
        self.workers[instance] = worker

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.instance) is worker:
            del self.workers[worker.instance]
            # Its sessions are gone; until it is back, leave it out of the balance.
            mark_absent(sessions_path(self.config.data_dir / "run"), worker.instance)
        if self.stopping:
            return
        log.error("worker {n} ended unexpectedly ({why}); starting it again",
                  n=worker.instance, why=reason.getErrorMessage())
        reactor.callLater(RESTART_DELAY, self._restart, worker.instance)  # type: ignore[attr-defined]

    def _restart(self, instance: int) -> None:
        if not self.stopping and instance not in self.workers:
            self._spawn(instance)

    def signal_workers(self, name: str) -> None:
        """Pass a signal on to every worker (SIGHUP: each reloads itself, reload.py)."""
        for worker in list(self.workers.values()):
            _signal(worker, name)

    def stopService(self) -> defer.Deferred[object]:
        service.Service.stopService(self)
        self.stopping = True
        if self.resume_call is not None and self.resume_call.active():
            self.resume_call.cancel()
        waiting = []
        for worker in list(self.workers.values()):
            _signal(worker, "TERM")
            kill = reactor.callLater(STOP_GRACE, _signal, worker, "KILL")  # type: ignore[attr-defined]
            worker.ended.addBoth(_cancel_call, kill)
            waiting.append(worker.ended)
        return defer.gatherResults(waiting)  # type: ignore[return-value]


def _signal(worker: _Worker, name: str) -> None:
    try:
        worker.transport.signalProcess(name)  # type: ignore[union-attr]
    except Exception:  # already gone: ProcessExitedAlready
        pass


def _cancel_call(result: object, call: IDelayedCall) -> object:
    if call.active():
        call.cancel()
    return result
