"""Sending: per-destination job queues, connection caps, and the local "destination".

Recipients of one message at one domain form one Job (one SMTP transaction). Jobs for a
domain wait in its Destination; each open connection to that domain takes jobs one
after another (so a burst of messages to one domain shares a few connections, as
Postfix's connection cache does). At most `per_destination` connections per domain
and `total` overall (Postfix's destination concurrency and process limits).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred

from mailserver.logs import logger
from mailserver.queue.client import (
    ClientSettings,
    Message,
    Outcome,
    SMTPClientError,
    SMTPConnection,
)
from mailserver.queue.envelope import DELIVERED, FAILED, PENDING
from mailserver.queue.outtls import REQUIRETLS, TLS_OPTIONAL, OutboundTls, Plan, TlsRefused
from mailserver.queue.routing import Hop, RouteError, Router

log = logger(__name__)


@dataclass
class Job:
    queue_id: str
    message: Message
    done: Deferred[dict[str, Outcome]] = field(default_factory=Deferred)
    #: Sent again once already after a cached connection turned out closed (once only:
    #: a peer that drops every connection at MAIL FROM gets the usual deferral).
    resent: bool = False

    def finish(self, outcomes: dict[str, Outcome]) -> None:
        if not self.done.called:
            self.done.callback(outcomes)

    def finish_all(self, state: str, status: str, text: str, remote: str = "") -> None:
        self.finish({r: Outcome(state, status, text, remote) for r in self.message.recipients})


#: Seconds an open connection waits for another message to the same destination
#: before QUIT (Postfix's smtp_connection_cache_time_limit is 2 s).
LINGER = 2.0


@dataclass
class Destination:
    domain: str
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0
    #: Open connections waiting for a job: fire with True (work) or False (close).
    idle: list[Deferred[bool]] = field(default_factory=list)
    #: "", REQUIRETLS or TLS_OPTIONAL (queue/outtls.py): messages with other TLS
    #: needs than the domain's policy never share a connection with the rest.
    mode: str = ""

    @property
    def key(self) -> str:
        return f"{self.domain} {self.mode}" if self.mode else self.domain

    def wake(self, work: bool) -> bool:
        if not self.idle:
            return False
        self.idle.pop(0).callback(work)
        return True


class Dispatcher:
    """Owns the destinations and the connection caps."""

    def __init__(self, router: Router, settings: ClientSettings, total: int,
                 per_destination: int, tls: OutboundTls | None = None) -> None:
        self.router = router
        #: MTA-STS, DANE, REQUIRETLS checks and TLS-RPT records; None: opportunistic.
        self.tls = tls
        self.settings = settings
        self.total = total
        self.per_destination = per_destination
        self.active = 0
        self.destinations: dict[str, Destination] = {}
        self.connections: set[SMTPConnection] = set()
        self.stopping = False

    def submit(self, domain: str, job: Job) -> None:
        mode = REQUIRETLS if job.message.requiretls else \
            TLS_OPTIONAL if job.message.tls_optional else ""
        dest = Destination(domain, mode=mode)
        dest = self.destinations.setdefault(dest.key, dest)
        dest.jobs.append(job)
        if not dest.wake(True):  # an idle connection takes it, else maybe a new one
            self._dispatch()

    def _dispatch(self) -> None:
        starved = False
        for dest in list(self.destinations.values()):
            while (dest.jobs and len(dest.jobs) > dest.active - len(dest.idle)
                   and not self.stopping and dest.active < self.per_destination):
                if self.active >= self.total:
                    starved = True
                    break
                dest.active += 1
                self.active += 1
                defer.ensureDeferred(self._connection(dest))
            if not dest.jobs and not dest.active:
                del self.destinations[dest.key]
        if starved:  # idle connections give their slots to destinations with work
            for dest in list(self.destinations.values()):
                while not dest.jobs and dest.wake(False):
                    pass

    async def _connection(self, dest: Destination) -> None:
        try:
            await self._serve(dest)
        except Exception as e:  # a bug: never leave jobs hanging
            log.failure("queue: delivery to {domain} crashed", domain=dest.domain)
            for job in _take_all(dest):
                job.finish_all(PENDING, "4.3.0", f"local error: {e}")
        finally:
            dest.active -= 1
            self.active -= 1
            self._dispatch()

    async def _serve(self, dest: Destination) -> None:
        """Route `dest`, open a connection to the first of its hops that takes one, and
        send its jobs over it while it is usable."""
        routed = await self._route(dest)
        if routed is None:
            return
        hops, plan = routed
        conn, last, tls = await self._open(dest, hops, plan)
        if conn is None:
            self._unconnected(dest, last)
            return
        await self._send_jobs(dest, conn, tls)

    async def _route(self, dest: Destination) -> tuple[list[Hop], Plan | None] | None:
        """The hops of `dest` and its TLS plan; None when routing refused (its jobs are
        finished with the refusal)."""
        plan: Plan | None = None
        try:
            hops = await threads.deferToThread(self.router.route, dest.domain)
            if self.tls is not None:
                plan = await self.tls.plan(dest.domain, hops, dest.mode,
                                           bool(self.router.smarthost))
                hops = plan.hops
        except RouteError as e:
            state = FAILED if e.permanent else PENDING
            for job in _take_all(dest):
                job.finish_all(state, e.status, e.text)
            return None
        return hops, plan

    async def _open(self, dest: Destination, hops: list[Hop], plan: Plan | None,
                    ) -> tuple[SMTPConnection | None, SMTPClientError | None, str]:
        """The first hop that answers and passes the TLS plan, with the TLS it got; or
        None and the last hop's error."""
        conn: SMTPConnection | None = None
        last: SMTPClientError | None = None
        tls = ""
        for hop in hops:  # RFC 5321 5.1: every MX, every address, before giving up
            if self.stopping:
                break
            try:
                needs = await self.tls.needs(plan, hop) if self.tls and plan else None
            except TlsRefused as e:
                log.info("queue: {domain}: {error}", domain=dest.domain, error=e.text)
                last = SMTPClientError(e.text, status=e.status)
                continue
            candidate = SMTPConnection(hop, self.settings, require_tls=bool(
                plan and needs and plan.require_tls(needs)))
            self.connections.add(candidate)
            try:
                await candidate.open()
                if self.tls is not None and plan is not None and needs is not None:
                    try:
                        tls = self.tls.check(plan, needs, candidate)
                    except TlsRefused as e:
                        raise SMTPClientError(e.text, status=e.status) from None
                conn = candidate
                break
            except SMTPClientError as e:
                log.info("queue: {domain}: {error}", domain=dest.domain, error=e.text)
                last = e
                candidate.abort()
                self.connections.discard(candidate)
        return conn, last, tls

    def _unconnected(self, dest: Destination, last: SMTPClientError | None) -> None:
        """No hop took a connection: every job of `dest` is finished with why."""
        for job in _take_all(dest):
            if last is None or self.stopping:
                job.finish({r: Outcome(PENDING, "4.3.2", "server stopping",
                                       attempted=False) for r in job.message.recipients})
            elif last.status in ("4.7.5", "5.7.30"):  # TLS policy (outtls.py)
                job.finish_all(FAILED if last.status == "5.7.30" else PENDING,
                               last.status, last.text)
            else:  # the greeting's own 4xx status when it gave one
                status = last.status if last.status.startswith("4.") and last.code \
                    else "4.4.1"
                job.finish_all(PENDING, status, last.text)

    async def _send_jobs(self, dest: Destination, conn: SMTPConnection, tls: str) -> None:
        """Send the jobs of `dest` over `conn`, one after another (lingering a while for
        more), until it is unusable or the server stops; then close it."""
        try:
            while conn.usable and not self.stopping:
                if not dest.jobs and not await self._linger(dest):
                    break
                if not conn.alive:  # the peer closed it while idle: the job stays queued
                    break
                if dest.jobs:
                    job = dest.jobs.popleft()
                    try:
                        outcomes = await conn.send(job.message)
                    except Exception as e:
                        # A bug in the client: this job is out of dest.jobs, so only
                        # here can it be finished; unfinished, its round (and so its
                        # queue entry) would wait for ever. Retried like a 4xx.
                        job.finish_all(PENDING, "4.3.0", f"local error: {e!r}")
                        raise
                    if conn.stale and not job.resent and not self.stopping:
                        # Closed by the peer as we reused it: not an attempt; first in
                        # line for the new connection that _dispatch opens next.
                        log.info("queue {id}: {hop} closed the cached connection; sending "
                                 "on a new one", id=job.queue_id, hop=str(conn.hop))
                        job.resent = True
                        dest.jobs.appendleft(job)
                        break
                    for outcome in outcomes.values():
                        outcome.tls = tls
                    job.finish(outcomes)
        finally:
            await conn.close()
            self.connections.discard(conn)

    async def _linger(self, dest: Destination) -> bool:
        """Keep an idle connection for LINGER seconds; True if a job came meanwhile."""
        waiter: Deferred[bool] = Deferred()
        dest.idle.append(waiter)
        waiter.addTimeout(LINGER, reactor)
        try:
            return await waiter
        except defer.TimeoutError:
            return False
        finally:
            if waiter in dest.idle:
                dest.idle.remove(waiter)

    def stop(self) -> None:
        """Abort open connections (their recipients are retried after the restart) and
        hand back jobs still waiting, unattempted, so every round can end."""
        self.stopping = True
        for dest in list(self.destinations.values()):
            while dest.wake(False):
                pass
        for conn in list(self.connections):
            conn.abort()
        for dest in list(self.destinations.values()):
            for job in _take_all(dest):
                job.finish({r: Outcome(PENDING, "4.3.2", "server stopping", attempted=False)
                            for r in job.message.recipients})


def _take_all(dest: Destination) -> list[Job]:
    jobs = list(dest.jobs)
    dest.jobs.clear()
    return jobs


LocalDeliver = Callable[[str, list[str], bytes], Deferred[dict[str, Outcome]]]

__all__ = ["DELIVERED", "Dispatcher", "Job", "LocalDeliver"]
