"""The scheduler: an in-memory heap of queue ids by next attempt, rebuilt from disk.

OpenSMTPD's split: the spool is the truth, the scheduler only remembers when to look
at each entry again. An attempt ("round") loads the envelope, groups the recipients
that are due by destination domain, hands one Job per domain to the Dispatcher, and
records each Job's outcomes durably as soon as they arrive (a recipient is written as
delivered right after the remote 250, so a restart never sends it again). When every
Job of the round is done: DSNs for new failures, a delay warning if due, success
reports (NOTIFY=SUCCESS), each only as the recipient's NOTIFY asks (RFC 3461 4.1), then
the entry is removed (finished) or put back in the heap at its earliest next try.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mailserver.address import domain_key
from mailserver.core import metrics
from mailserver.core.diskio import DiskExecutor
from mailserver.events import DEFERRED as EVENT_DEFERRED
from mailserver.events import (
    DELAY_WARNING,
    DeliveryEvent,
    IDeliveryEvents,
    message_id_of,
)
from mailserver.events import DELIVERED as EVENT_DELIVERED
from mailserver.events import FAILED as EVENT_FAILED
from mailserver.interfaces import OutboundEnvelope
from mailserver.logs import logger
from mailserver.queue.bounce import MAX_RETURNED, build_dsn, original_headers
from mailserver.queue.client import Message, Outcome
from mailserver.queue.destinations import Dispatcher, Job
from mailserver.queue.dsnwire import mail_params, rcpt_params
from mailserver.queue.envelope import (
    DELIVERED,
    FAILED,
    PENDING,
    QueueEntry,
    RecipientState,
    age_text,
)
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.removal import Remover
from mailserver.queue.spool import EntryGone, Spool

log = logger(__name__)

#: Messages up to this size are read with the envelope and sent from memory (no
#: thread hops per chunk); larger ones are streamed from the spool file.
INLINE = 64 * 1024

#: Rounds running at once (Postfix's qmgr_message_active_limit, smaller): each holds
#: its envelope and a message of up to INLINE bytes, and every round starts with a disk
#: job, so a queue of 100,000 entries falling due together (after an outage) neither
#: loads them all into memory nor queues 100,000 loads ahead of the SMTP sessions'
#: commits in the disk pool. The rest wait in the heap, due, and start as rounds end.
MAX_ROUNDS = 1000

#: Deliver to local mailboxes: (sender, recipients, message) -> outcomes.
LocalDelivery = Callable[[str, list[str], bytes], Deferred[dict[str, Outcome]]]


@dataclass(frozen=True)
class Policy:
    """Retry policy, from [relay] (Postfix's names in brackets)."""

    retry_initial: float = 300  # minimal_backoff_time
    retry_max: float = 4000  # maximal_backoff_time
    queue_lifetime: float = 5 * 86400  # maximal_queue_lifetime
    delay_warning: float = 4 * 3600  # delay_warning_time (0: off)

    def backoff(self, attempts: int) -> float:
        """Wait after the `attempts`-th failed attempt: initial, doubling, capped."""
        if attempts < 1:
            return 0.0
        return float(min(self.retry_max, self.retry_initial * 2 ** min(attempts - 1, 40)))

    def next_try(self, created: float, attempts: int, now: float) -> float:
        """When to try again; never later than the moment the entry expires, so the
        expiry is noticed (and bounced) on time."""
        return min(now + self.backoff(attempts), created + self.queue_lifetime)


class Scheduler:
    def __init__(self, spool: Spool, disk: DiskExecutor, queue: OutboundQueue,
                 dispatcher: Dispatcher, policy: Policy, hostname: str,
                 is_local: Callable[[str], bool], local: LocalDelivery,
                 clock: IReactorTime | None = None, max_rounds: int = MAX_ROUNDS) -> None:
        self.spool = spool
        self.disk = disk
        self.queue = queue
        self.dispatcher = dispatcher
        self.policy = policy
        self.hostname = hostname
        self.is_local = is_local
        self.local = local
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.max_rounds = max_rounds
        #: queue id -> the time it is due (the heap may hold stale pairs: lazy removal).
        self.due: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []
        self.busy: set[str] = set()
        #: Entries to look at again as soon as their running round ends.
        self.again: set[str] = set()
        self.forced: set[str] = set()
        self.timer: IDelayedCall | None = None
        self.running = False
        self.rounds: dict[str, Deferred[Any]] = {}
        #: Finished entries leave the spool in batches (one fsync for many).
        self.remover = Remover(spool, disk)
        #: DKIM-signs the DSNs we write (senderauth's Signer.sign_dsn): bytes -> the
        #: DKIM-Signature fields to put on top; None: sent unsigned.
        self.sign_dsn: Callable[[bytes], Deferred[bytes]] | None = None
        #: Told of every recipient's outcome, in a disk thread, before the envelope is
        #: written or removed (events.py's contract); None: nobody listens.
        self.events: IDeliveryEvents | None = None
        #: queue id -> its Message-ID, while a round runs (the events carry it).
        self._message_ids: dict[str, str] = {}

    # -- the heap -----------------------------------------------------------------

    def start(self, entries: list[QueueEntry]) -> None:
        self.running = True
        now = self.clock.seconds()
        for entry in entries:
            when = entry.next_try()
            self.schedule(entry.id, now if when is None else when)
        log.info("queue: {n} entries to deliver", n=len(entries))

    def stop(self) -> None:
        self.running = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.dispatcher.stop()

    def known(self, queue_id: str) -> bool:
        return queue_id in self.due or queue_id in self.busy

    def notify(self, queue_id: str) -> None:
        """A new entry was released (here or by another process): try it now."""
        if not self.known(queue_id):
            self.schedule(queue_id, self.clock.seconds())

    def flush(self) -> None:
        """Retry every entry now (`mailserver queue flush`), backoff or not."""
        now = self.clock.seconds()
        for queue_id in list(self.due):
            self.forced.add(queue_id)
            self.schedule(queue_id, now)
        for queue_id in self.busy:
            self.forced.add(queue_id)
            self.again.add(queue_id)

    def schedule(self, queue_id: str, when: float) -> None:
        if queue_id in self.busy:
            self.again.add(queue_id)
            return
        self.due[queue_id] = when
        heapq.heappush(self.heap, (when, queue_id))
        self._arm()

    def _arm(self) -> None:
        while self.heap and self.due.get(self.heap[0][1]) != self.heap[0][0]:
            heapq.heappop(self.heap)  # stale
        if not self.heap or not self.running or len(self.busy) >= self.max_rounds:
            return  # (at the cap, the next round to end arms it again)
        delay = max(0.0, self.heap[0][0] - self.clock.seconds())
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= self.heap[0][0]:
                return
            self.timer.cancel()
        self.timer = self.clock.callLater(delay, self._run_due)

    def _run_due(self) -> None:
        self.timer = None
        if not self.running:
            return
        now = self.clock.seconds()
        while self.heap and self.heap[0][0] <= now and len(self.busy) < self.max_rounds:
            when, queue_id = heapq.heappop(self.heap)
            if self.due.get(queue_id) != when:
                continue
            del self.due[queue_id]
            self._start_round(queue_id)
        self._arm()

    # -- one round ------------------------------------------------------------------

    def _start_round(self, queue_id: str) -> None:
        self.busy.add(queue_id)
        d = defer.ensureDeferred(self._round(queue_id))
        self.rounds[queue_id] = d

        def failed(f: Failure) -> float:
            log.failure("queue {id}: round failed; retrying later", f, id=queue_id)
            return self.clock.seconds() + self.policy.retry_initial

        def ended(when: float | None) -> None:
            self.busy.discard(queue_id)
            self.rounds.pop(queue_id, None)
            again = queue_id in self.again
            self.again.discard(queue_id)
            if not self.running:
                return
            if again:  # flushed or notified while the round ran
                self.schedule(queue_id, self.clock.seconds())
            elif when is not None:
                self.schedule(queue_id, when)
            self._arm()  # a round's slot is free: the next due entry may start

        d.addErrback(failed)
        d.addCallback(ended)

    async def _round(self, queue_id: str) -> float | None:
        """One attempt at the due recipients; returns when to look again (None: the
        entry is gone)."""
        try:
            entry, size, lines, data = await self.disk.run(
                self.spool.load_for_delivery, queue_id, INLINE)
        except EntryGone:
            return None  # deleted by the operator, or finished meanwhile
        except ValueError as e:  # unreadable envelope, or its message file is gone
            # Set aside now (as start-up would): left in envelopes/ it looked queued to
            # `mailserver queue list` while nothing would ever try it again.
            moved = await self.disk.run(self.spool.set_aside, queue_id)
            log.error("queue {id}: {error}; envelope {where}", id=queue_id, error=str(e),
                      where="moved to corrupt/" if moved else "gone")
            return None
        now = self.clock.seconds()
        forced = queue_id in self.forced
        self.forced.discard(queue_id)
        due = entry.pending() if forced else entry.due(now)
        lock = DeferredLock()
        groups: dict[str, list[RecipientState]] = defaultdict(list)
        for rcpt in due:
            groups[_domain(rcpt.address)].append(rcpt)
        waits: list[Deferred[Any]] = []
        path = self.spool.messages / queue_id
        optional = await self._read_head(queue_id, data,
                                         not all(self.is_local(d) for d in groups))
        for domain, rcpts in groups.items():
            # Large bodies are streamed from the spool file: memory stays bounded.
            message = Message(entry.sender, [r.address for r in rcpts], data or b"",
                              entry.smtputf8, entry.body_8bit,
                              path if data is None else None, size, lines,
                              mail_dsn=mail_params(entry),
                              rcpt_dsn={r.address: rcpt_params(r) for r in rcpts},
                              requiretls=entry.requiretls,
                              tls_optional=optional and not entry.requiretls)
            if self.is_local(domain):
                done = self._deliver_locally(entry.sender, list(message.recipients), queue_id)
            else:
                job = Job(queue_id, message)
                self.dispatcher.submit(domain, job)
                done = job.done
            waits.append(done.addCallback(lambda outcomes: defer.ensureDeferred(
                self._record(outcomes, entry, lock, now))))
        try:
            removed = any(await defer.gatherResults(waits, consumeErrors=True))
            await self._conclude(entry, lock)
        except (EntryGone, defer.FirstError) as e:
            self._message_ids.pop(queue_id, None)
            if isinstance(e, defer.FirstError) and not e.subFailure.check(EntryGone):
                raise
            log.info("queue {id}: deleted while being delivered", id=queue_id)
            return None
        self._message_ids.pop(queue_id, None)
        if entry.finished:
            if not removed:  # finished by _conclude (its DSNs queued), not by _record
                await lock.run(self.remover.remove, queue_id)
            log.info("queue {id}: removed", id=queue_id)
            return None
        return entry.next_try()

    async def _read_head(self, queue_id: str, data: bytes | None, remote: bool) -> bool:
        """What the round needs of the message's header, read from the spool at most once
        (`data` is the whole message when it was small enough to load): whether it asks
        for TLS to be optional (RFC 8689 TLS-Required: No; only for remote domains), and
        its Message-ID for the delivery events while the round runs."""
        if not remote and self.events is None:
            return False
        head = data if data is not None else await self.disk.run(self.spool.read_head,
                                                                 queue_id)
        if self.events is not None:
            self._message_ids[queue_id] = message_id_of(head)
        return remote and tls_optional(head)

    async def _record(self, outcomes: dict[str, Outcome], entry: QueueEntry,
                      lock: DeferredLock, started: float) -> bool:
        """Apply one Job's outcomes and write the envelope before anything else; True
        if that finished the entry and removed it."""
        now = self.clock.seconds()
        by_address = {r.address: r for r in entry.recipients}
        events: list[DeliveryEvent] = []
        for address, outcome in outcomes.items():
            rcpt = by_address.get(address)
            if rcpt is None or not outcome.attempted:
                continue
            rcpt.attempts += 1
            rcpt.last_error, rcpt.status, rcpt.remote = outcome.text, outcome.status, \
                outcome.remote
            rcpt.tls = outcome.tls or rcpt.tls
            rcpt.state = outcome.state
            if rcpt.state == DELIVERED and entry.sender and rcpt.wants("SUCCESS"):
                # RFC 3461 5.2.2: delivered here, or handed to a peer that will not
                # report on it; a peer with DSN got our NOTIFY and reports itself.
                if outcome.remote == "local":
                    rcpt.report = "delivered"
                elif not outcome.peer_dsn:
                    rcpt.report = "relayed"
            if rcpt.state == PENDING:
                rcpt.next_try = self.policy.next_try(entry.created, rcpt.attempts, now)
                if now >= entry.created + self.policy.queue_lifetime:
                    rcpt.state = FAILED
                    rcpt.status = "4.4.7"
                    rcpt.last_error = (f"message expired after {age_text(now - entry.created)}"
                                       f" in the queue; last error: {outcome.text}")
            if entry.sender == "" and rcpt.state == FAILED:
                rcpt.bounced = True  # RFC 3464 2.1: never a DSN about a DSN
                log.warn("{id}: undeliverable mail from <> to <{to}> dropped; no "
                         "notification about a notification", id=entry.id, to=address)
            log.info("{id}: to=<{to}>, relay={relay}, delay={delay}, delays={attempt}, "
                     "dsn={status}, status={state} ({text})",
                     id=entry.id, to=address, relay=outcome.remote or "none",
                     delay=f"{now - entry.created:.1f}", attempt=f"{now - started:.1f}",
                     status=outcome.status, text=outcome.text,
                     state={DELIVERED: "sent", FAILED: "bounced"}.get(rcpt.state,
                                                                     "deferred"))
            metrics.delivery({DELIVERED: "sent", FAILED: "bounced"}.get(rcpt.state, "deferred"))
            if self.events is not None:
                events.append(self._event(_EVENT_OF[rcpt.state], entry, rcpt, now))
        if events:
            # Durable with the listeners before the envelope forgets (events.py).
            await lock.run(self.disk.run, self._publish, events)
        if entry.finished:  # all done: removing the envelope records it durably
            await lock.run(self.remover.remove, entry.id)
            return True
        await lock.run(self.disk.run, self.spool.save, entry)
        return False

    def _event(self, kind: str, entry: QueueEntry, rcpt: RecipientState,
               now: float) -> DeliveryEvent:
        return DeliveryEvent(kind, entry.id, entry.sender, rcpt.address, now,
                             message_id=self._message_ids.get(entry.id, ""),
                             submitter=entry.submitter, status=rcpt.status,
                             diagnostic=rcpt.last_error, remote=rcpt.remote,
                             attempts=rcpt.attempts)

    def _publish(self, events: list[DeliveryEvent]) -> None:
        """In a disk thread; a listener's failure is the fan-out's to log."""
        if self.events is not None:
            self.events.publish(events)

    def _deliver_locally(self, sender: str, rcpts: list[str],
                         queue_id: str) -> Deferred[dict[str, Outcome]]:
        """Local mailboxes (DSNs, mostly: small); the Maildir side spills big ones."""
        d = self.disk.run(self.spool.read_message, queue_id)
        return d.addCallback(lambda data: self.local(sender, rcpts, data))

    async def _conclude(self, entry: QueueEntry, lock: DeferredLock) -> None:
        """DSNs as each recipient's NOTIFY asks (RFC 3461 4.1): failures, the delay
        warning, success reports; none at all for the null sender."""
        failed = entry.unbounced_failures()
        if failed and not entry.sender:  # RFC 3464 2.1: never a DSN about a DSN
            for r in failed:
                r.bounced = True
            await lock.run(self.disk.run, self.spool.save, entry)
            return
        unwanted = [r for r in failed if not r.wants("FAILURE")]
        if unwanted:  # NOTIFY=NEVER, or without FAILURE: settled without a report
            for r in unwanted:
                r.bounced = True
                log.info("{id}: to=<{to}>: no non-delivery notification (NOTIFY={notify})",
                         id=entry.id, to=r.address, notify=",".join(r.notify))
            failed = [r for r in failed if r.wants("FAILURE")]
            await lock.run(self.disk.run, self.spool.save, entry)
        late = [r for r in entry.pending() if not r.warned and r.wants("DELAY")]
        warn = bool(late and entry.sender and self.policy.delay_warning and
                    self.clock.seconds() - entry.created >= self.policy.delay_warning)
        reports = [r for r in entry.recipients if r.report]
        if not entry.sender or not (failed or warn or reports):
            return
        full = entry.ret == "FULL" and bool(failed) and entry.size <= MAX_RETURNED
        data = await self.disk.run(self.spool.read_message if full else self.spool.read_head,
                                   entry.id)
        if failed:
            await self._send_dsn(entry, failed, data, delayed=False,
                                 full=data if full else None)
            for r in failed:
                r.bounced = True
            await lock.run(self.disk.run, self.spool.save, entry)
        if warn:
            if self.events is not None:
                now = self.clock.seconds()
                await lock.run(self.disk.run, self._publish,
                               [self._event(DELAY_WARNING, entry, r, now) for r in late])
            await self._send_dsn(entry, late, data, delayed=True)
            for r in late:
                r.warned = True
            await lock.run(self.disk.run, self.spool.save, entry)
        if reports:
            await self._send_dsn(entry, reports, data, delayed=False, success=True)
            for r in reports:
                r.report = ""
            await lock.run(self.disk.run, self.spool.save, entry)

    async def _send_dsn(self, entry: QueueEntry, rcpts: list[RecipientState], data: bytes,
                        delayed: bool, success: bool = False,
                        full: bytes | None = None) -> None:
        if not entry.sender:
            return
        dsn = build_dsn(entry, rcpts, original_headers(data), self.hostname, delayed,
                        self.clock.seconds(), success=success, full=full)
        if self.sign_dsn is not None:
            dsn = await self.sign_dsn(dsn) + dsn
        envelope = OutboundEnvelope(sender="", recipients=(entry.sender,),
                                    body_8bit=not dsn.isascii(),
                                    smtputf8=not entry.sender.isascii())
        dsn_id = await self.queue.enqueue(envelope, dsn)
        log.info("{id}: sender {kind} notification: {dsn_id}", id=entry.id,
                 kind="success" if success else "delay" if delayed else "non-delivery",
                 dsn_id=dsn_id)

    def wait_idle(self) -> Deferred[Any]:
        """Fires when every running round has ended (tests, shutdown)."""
        return defer.DeferredList(list(self.rounds.values()), consumeErrors=True)


_TLS_REQUIRED_NO = re.compile(rb"^tls-required[ \t]*:[ \t]*no[ \t]*$",
                              re.IGNORECASE | re.MULTILINE)


def tls_optional(data: bytes) -> bool:
    """Whether the header section has "TLS-Required: No" (RFC 8689 5: the sender asks
    that DANE and MTA-STS failures not stop the message; REQUIRETLS wins over it)."""
    head = data.split(b"\n\n", 1)[0].replace(b"\r", b"")
    return bool(_TLS_REQUIRED_NO.search(head))


#: A recipient's state after an attempt -> the event told.
_EVENT_OF = {DELIVERED: EVENT_DELIVERED, FAILED: EVENT_FAILED, PENDING: EVENT_DEFERRED}


def _domain(address: str) -> str:
    return domain_key(address.rpartition("@")[2])
