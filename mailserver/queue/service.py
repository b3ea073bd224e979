"""The queue's services, wired by app/service.py: `open_queue` in every process.

Every process gets an OutboundQueue (it only writes files) for its context. Process 0
also runs the QueueService: recovery at start, the Scheduler, and a SpoolWatcher that
notices entries released by worker processes (inotify on queue/envelopes/, plus a slow
poll as a safety net) and the flush trigger file of `mailserver queue flush`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath

from mailserver.config import Config
from mailserver.core.context import ServerContext
from mailserver.core.diskio import DiskExecutor
from mailserver.interfaces import (
    DeliveryEnvelope,
    IDeliveryTarget,
    IRecipientDirectory,
    MailboxId,
)
from mailserver.logs import logger
from mailserver.queue.client import ClientSettings, Outcome
from mailserver.queue.destinations import Dispatcher
from mailserver.queue.envelope import DELIVERED, FAILED, PENDING, is_queue_id
from mailserver.queue.mtasts_fetch import REFRESH_EVERY
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.outtls_setup import outbound_tls_from, tls_reporter_from
from mailserver.queue.routing import Router, Self, make_resolver, self_from
from mailserver.queue.scheduler import Policy, Scheduler
from mailserver.queue.spool import Spool

log = logger(__name__)

#: Seconds between two looks at the spool directory when inotify is there (a safety
#: net) and when it is not (then this is how fast worker-queued mail is noticed).
POLL_WITH_INOTIFY = 30.0
POLL_WITHOUT_INOTIFY = 1.0


def open_queue(config: Config, disk: DiskExecutor) -> tuple[Spool, OutboundQueue]:
    """The spool directories (created if missing) and the queue that writes into them."""
    spool = Spool(config.queue_dir)
    spool.ensure_dirs()
    return spool, OutboundQueue(spool, disk)


def policy_from(config: Config) -> Policy:
    r = config.relay
    return Policy(retry_initial=r.retry_initial, retry_max=r.retry_max,
                  queue_lifetime=r.queue_lifetime, delay_warning=r.delay_warning)


def settings_from(config: Config) -> ClientSettings:
    r = config.relay
    auth = None
    if r.smarthost and r.smarthost_user:
        password = Path(r.smarthost_password_file).read_text().splitlines()[0]
        auth = (r.smarthost_user, password)
    return ClientSettings(helo_name=config.hostname, connect_timeout=r.connect_timeout,
                          command_timeout=r.command_timeout, auth=auth,
                          source_address=r.source_address)


def whoami_from(config: Config) -> Any:
    """Self for loop detection: our host name and the addresses in listeners.json."""
    path = config.data_dir / "run" / "listeners.json"
    cache: dict[str, tuple[float, Self]] = {}

    def whoami() -> Self:
        """Re-read only when listeners.json changed (called from resolver threads)."""
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        cached = cache.get("me")
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            hosts = [host for host, _port in json.loads(path.read_text()).values()]
        except (OSError, ValueError, TypeError):
            hosts = []
        me = self_from(config.hostname, hosts)
        cache["me"] = (mtime, me)
        return me

    return whoami


class QueueService(Service):
    def __init__(self, context: ServerContext, spool: Spool, queue: OutboundQueue) -> None:
        config = context.config
        self.context = context
        self.spool = spool
        self.queue = queue
        # The process's one resolver (core/dns.py: [dns], shared cache), with the
        # queue's own per-lookup time limit.
        resolver = (context.resolver.resolver(config.relay.dns_timeout)
                    if context.resolver is not None
                    else make_resolver(config.relay.nameservers, config.relay.dns_timeout))
        router = Router(resolver,
                        config.relay.port, whoami_from(config), config.relay.smarthost)
        self.dispatcher = Dispatcher(router, settings_from(config),
                                     config.relay.connections_total,
                                     config.relay.connections_per_destination,
                                     outbound_tls_from(context))
        self.scheduler = Scheduler(
            spool, context.disk, queue, self.dispatcher, policy_from(config),
            config.hostname, config.is_local_domain,
            LocalDeliverer(context.directory, context.target).deliver)
        self.watcher = SpoolWatcher(spool, self.scheduler)
        queue.notify = self.scheduler.notify
        self.reporter = tls_reporter_from(context, queue, lambda: self.scheduler.sign_dsn)
        #: Cached MTA-STS policies looked at again before they end (mtasts_fetch.py).
        self.refresher: task.LoopingCall | None = None

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        d = self.context.disk.run(self.spool.recover)
        d.addCallback(self.scheduler.start)
        d.addCallback(lambda _: self.watcher.start())
        d.addCallback(lambda _: self.reporter.start())
        d.addCallback(lambda _: self._start_refresher())
        d.addErrback(lambda f: log.failure("queue: cannot start", f))

    def _start_refresher(self) -> None:
        outbound = self.dispatcher.tls
        policies = outbound.policies if outbound is not None else None
        if policies is None:
            return

        def refresh() -> Deferred[Any]:
            d = Deferred.fromCoroutine(policies.refresh_due())
            return d.addErrback(lambda f: log.warn("MTA-STS: refreshing policies failed: "
                                                   "{e}", e=f.getErrorMessage()))

        self.refresher = task.LoopingCall(refresh)
        self.refresher.start(REFRESH_EVERY, now=False)

    def stopService(self) -> Deferred[Any] | None:  # noqa: N802 - Twisted's name
        super().stopService()
        self.watcher.stop()
        self.reporter.stop()
        if self.refresher is not None and self.refresher.running:
            self.refresher.stop()
        self.scheduler.stop()
        # Rounds end quickly once their connections are aborted; never hang a shutdown.
        d = self.scheduler.wait_idle()
        d.addTimeout(5, reactor)
        return d.addErrback(lambda f: log.warn("queue: stopped with rounds unfinished"))


class SpoolWatcher:
    """Notices entries released by other processes, and the flush trigger."""

    def __init__(self, spool: Spool, scheduler: Scheduler) -> None:
        self.spool = spool
        self.scheduler = scheduler
        self.notifier: Any = None
        self.poller: task.LoopingCall | None = None

    def start(self) -> None:
        interval = POLL_WITHOUT_INOTIFY
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify()
            notifier.startReading()
            notifier.watch(FilePath(os.fspath(self.spool.envelopes)),
                           mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE,
                           callbacks=[self._changed])
            notifier.watch(FilePath(os.fspath(self.spool.root)),
                           mask=inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO,
                           callbacks=[self._changed])
            self.notifier = notifier
            interval = POLL_WITH_INOTIFY
        except Exception as e:  # no inotify on this platform or file system
            log.info("queue: no inotify ({error}); polling every {n}s", error=str(e),
                     n=interval)
        self.poller = task.LoopingCall(self.poll)
        self.poller.start(interval, now=True).addErrback(
            lambda f: log.failure("queue: poll failed", f))

    def stop(self) -> None:
        if self.poller is not None and self.poller.running:
            self.poller.stop()
        if self.notifier is not None:
            self.notifier.loseConnection()
            self.notifier = None

    def _changed(self, _watch: object, path: FilePath[Any], _mask: int) -> None:
        name = path.basename()
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if name == "flush":
            # Takes the trigger, flushes, and picks up anything missed.
            self.poll().addErrback(lambda f: log.failure("queue: flush failed", f))
        elif is_queue_id(name):
            self.scheduler.notify(name)

    def poll(self) -> Deferred[None]:
        d = self.scheduler.disk.run(self._look)

        def found(result: tuple[bool, list[str]]) -> None:
            flush, ids = result
            if flush:
                self.scheduler.flush()
            for queue_id in ids:
                self.scheduler.notify(queue_id)

        return d.addCallback(found)

    def _look(self) -> tuple[bool, list[str]]:
        flush = self._take_trigger()
        self.spool.release_stale_held()
        return flush, self.spool.ids()

    def _take_trigger(self) -> bool:
        try:
            os.unlink(self.spool.flush_trigger)
            return True
        except FileNotFoundError:
            return False


class LocalDeliverer:
    """Queued mail for our own domains (DSNs to local senders, local addresses that
    reach the queue): handed to the server's delivery target as the SMTP session hands
    its messages, with local mailboxes only (an alias's remote targets are not queued
    again from here), so the target adds Return-Path (RFC 5321 4.4) as for them."""

    def __init__(self, directory: IRecipientDirectory, target: IDeliveryTarget) -> None:
        self.directory = directory
        self.target = target

    def deliver(self, sender: str, recipients: list[str],
                data: bytes) -> Deferred[dict[str, Outcome]]:
        return defer.ensureDeferred(self._deliver(sender, recipients, data))

    async def _deliver(self, sender: str, recipients: list[str],
                       data: bytes) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        mailboxes: list[MailboxId] = []
        wanted = []
        for rcpt in recipients:
            resolution = self.directory.resolve(rcpt)
            if not resolution.mailboxes:
                outcomes[rcpt] = Outcome(FAILED, "5.1.1",
                                         f"550 5.1.1 <{rcpt}>: no such user here", "local")
                continue
            mailboxes.extend(resolution.mailboxes)
            wanted.append(rcpt)
        if not wanted:
            return outcomes
        txn = self.target.begin(DeliveryEnvelope(sender=sender,
                                                 mailboxes=tuple(dict.fromkeys(mailboxes))))
        txn.write(data)
        try:
            await txn.commit()
        except Exception as e:
            with contextlib.suppress(Exception):
                txn.abort()
            for rcpt in wanted:
                outcomes[rcpt] = Outcome(PENDING, "4.3.0", f"local delivery failed: {e}",
                                         "local")
            return outcomes
        for rcpt in wanted:
            outcomes[rcpt] = Outcome(DELIVERED, "2.0.0", "250 2.0.0 delivered to maildir",
                                     "local")
        return outcomes
