"""The dispatcher: POSTs what the spool holds, in order per (hook, message), with
bounded concurrency, back-off and a day's patience. Instance 0 only (like the queue's
scheduler): one process owns pending/ after the records are written.

In memory: every loaded record in its key's list (id order), and a heap of the heads
that may be sent, by next try. Only a key's head is ever sent, so a message's
"delivered" never overtakes its "deferred" at the same hook; a head that is given up
leaves the way free for the next. The directory is looked at every `poll` seconds
(records written by worker processes) and at once when this process wrote some.

Outcomes (webhooks.timeout bounds each POST): 2xx, done, the record is removed; any other
status (3xx included: redirects are never followed), a timeout or a connection error:
tried again after retry_initial, doubling up to retry_max, until retry_for after the
record was made; then it moves to failed/. A URL refused at send time (urlcheck.py)
is not retried: it moves to failed/ at once, saying why.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from mailserver.config import Config
from mailserver.core.diskio import DiskExecutor
from mailserver.logs import logger
from mailserver.webhooks.hooks import Hook, HookStore
from mailserver.webhooks.sender import Sender
from mailserver.webhooks.signing import sign
from mailserver.webhooks.spool import Record, WebhookSpool
from mailserver.webhooks.urlcheck import Refused, Target, shown

log = logger(__name__)

#: Records held in memory at most; older ones are loaded first, the rest wait on disk.
MAX_LOADED = 20_000
#: Seconds a URL's check (its addresses, pinned) is reused before it is made again: a
#: thread hop and DNS per POST otherwise. A refusal is never cached.
CHECK_TTL = 30.0
USER_AGENT = "mailserver-webhooks/1"

#: (url) -> the checked, pinned target; raises Refused. Blocking: run in a thread.
Checker = Callable[[str], Target]


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Wait after the `attempts`-th failure: initial, doubling, capped at maximum."""
    return float(min(maximum, initial * 2 ** min(max(attempts - 1, 0), 40)))


def headers_for(record: Record, secret: str, body: bytes, now: float,
                attempt: int) -> dict[str, str]:
    """Standard Webhooks headers (signing.py), and which attempt this is."""
    timestamp = int(now)
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": record.id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, record.id, timestamp, body),
            "webhook-attempt": str(attempt)}


class Dispatcher(Service):
    def __init__(self, config: Config, spool: WebhookSpool, hooks: HookStore,
                 disk: DiskExecutor, check: Checker, sender: Sender,
                 clock: Any = None, poll: float = 1.0,
                 in_thread: Callable[..., Deferred[Any]] = threads.deferToThread) -> None:
        self.config = config
        self.spool = spool
        self.hooks = hooks
        self.disk = disk
        self.check = check
        self.sender = sender
        self.clock: Any = clock or reactor
        self.poll = poll
        #: Runs the URL check (DNS: blocking) off the reactor.
        self.in_thread = in_thread
        self.concurrency = config.webhooks.concurrency
        #: key -> its records, oldest first (the head is the only one ever sent).
        self.queues: dict[str, list[Record]] = {}
        self.known: set[str] = set()
        #: (next_try, record id, key) of heads that may be sent; stale entries skipped.
        self.ready: list[tuple[float, str, str]] = []
        self.inflight: set[str] = set()
        self.timer: IDelayedCall | None = None
        self.looper: task.LoopingCall | None = None
        self.scanning = False
        self.rescan = False
        #: Sends finished (tests, the benchmark).
        self.sent = 0
        #: hook id -> Hook, as read at the last look at the spool (a disk thread).
        self.hooks_seen: dict[str, Hook] = {}
        #: url -> (until, Target): recent checks that passed.
        self.checked: dict[str, tuple[float, Target]] = {}
        #: Delivered records whose files are still to be removed (one disk job a batch);
        #: they stay `known` until then, so a look at the directory does not send them
        #: again.
        self.to_remove: list[str] = []
        self.removing = False

    # -- the service ----------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.looper = task.LoopingCall(self.wake)
        self.looper.clock = self.clock
        self.looper.start(self.poll, now=True)

    def stopService(self) -> Deferred[Any] | None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self.looper is not None and self.looper.running:
            self.looper.stop()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return self.sender.close()

    def take_from_thread(self, records: list[Record]) -> None:
        """The publisher of this process wrote these (called in its disk thread): taken
        as they are, without a look at the directory (records of worker processes wait
        for the next poll)."""
        self.clock.callFromThread(self._take, records)

    def _take(self, records: list[Record]) -> None:
        if self.running and len(self.known) + len(records) <= MAX_LOADED:
            self._loaded(records, self.hooks_seen)

    def wake(self) -> None:
        """Look at pending/ now (or right after the scan that is running)."""
        if not self.running:
            return
        if self.scanning:
            self.rescan = True
            return
        self.scanning = True
        d = self.disk.run(self._load_new, set(self.known))
        d.addCallback(lambda found: self._loaded(found[0], found[1]))
        d.addErrback(lambda f: log.failure("webhooks: cannot read the spool", f))

        def again(_: object) -> None:
            self.scanning = False
            if self.rescan:
                self.rescan = False
                self.wake()

        d.addBoth(again)

    def _load_new(self, known: set[str]) -> tuple[list[Record], dict[str, Hook]]:
        """Records in pending/ not loaded yet, oldest first, up to MAX_LOADED in all,
        and every hook as it is now (a disk thread)."""
        hooks = {h.id: h for h in self.hooks.domain}
        for mine in self.hooks.users().values():
            hooks.update((h.id, h) for h in mine)
        room = MAX_LOADED - len(known)
        found = []
        for record_id in self.spool.ids():
            if room <= 0:
                break
            if record_id in known:
                continue
            try:
                found.append(self.spool.load(record_id))
            except FileNotFoundError:
                continue
            except ValueError as e:
                log.error("webhooks: {id}: {e}; left in pending/", id=record_id, e=str(e))
                continue
            room -= 1
        return found, hooks

    def _loaded(self, records: list[Record], hooks: dict[str, Hook]) -> None:
        self.hooks_seen = hooks
        for record in records:
            if record.id in self.known:
                continue
            self.known.add(record.id)
            queue = self.queues.setdefault(record.key, [])
            queue.append(record)
            if len(queue) > 1 and queue[-2].id > record.id:
                queue.sort(key=lambda r: r.id)
            if queue[0] is record and record.id not in self.inflight:
                heapq.heappush(self.ready, (record.next_try, record.id, record.key))
        self.pump()

    # -- sending ----------------------------------------------------------------------

    def pump(self) -> None:
        now = self.clock.seconds()
        while self.ready and len(self.inflight) < self.concurrency:
            when, record_id, key = self.ready[0]
            queue = self.queues.get(key)
            if (not queue or queue[0].id != record_id or record_id in self.inflight
                    or queue[0].next_try != when):
                heapq.heappop(self.ready)  # stale
                continue
            if when > now:
                break
            heapq.heappop(self.ready)
            self._start(queue[0])
        self._arm()

    def _arm(self) -> None:
        if not self.running or not self.ready or len(self.inflight) >= self.concurrency:
            return  # (full: the next send to end pumps again)
        delay = max(0.0, self.ready[0][0] - self.clock.seconds())
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= self.ready[0][0]:
                return
            self.timer.cancel()
        self.timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self.timer = None
        self.pump()

    def _start(self, record: Record) -> None:
        self.inflight.add(record.id)
        d = defer.ensureDeferred(self._send(record))
        d.addErrback(self._crashed, record)
        d.addBoth(lambda _: self._ended(record))

    def _crashed(self, failure: Failure, record: Record) -> None:
        log.failure("webhooks: {id}: sending failed", failure, id=record.id)
        record.next_try = self.clock.seconds() + self.config.webhooks.retry_initial

    def _ended(self, record: Record) -> None:
        self.inflight.discard(record.id)
        self.sent += 1
        queue = self.queues.get(record.key, [])
        if record.gave_up or record.next_try < 0:  # finished one way or the other
            if queue and queue[0] is record:
                queue.pop(0)
            if record.gave_up:
                self.known.discard(record.id)  # (delivered: once its file is gone)
        if queue:
            heapq.heappush(self.ready, (queue[0].next_try, queue[0].id, record.key))
        else:
            self.queues.pop(record.key, None)
        if self.running:
            self.pump()

    async def _send(self, record: Record) -> None:
        hook = self.hooks_seen.get(record.hook)
        if hook is None:  # registered after the last look, or deleted
            hook = await self.disk.run(self.hooks.find, record.hook)
        if hook is None or not hook.active:
            await self._give_up(record, "the webhook was deleted" if hook is None
                                else "the webhook is inactive")
            return
        try:
            target = await self._checked(hook.url)
        except Refused as e:
            await self._give_up(record, f"URL refused: {e}")
            return
        attempt = record.attempts + 1
        body = json.dumps(record.payload, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        try:
            headers = headers_for(record, hook.secret, body, self.clock.seconds(), attempt)
        except ValueError as e:  # a domain hook's secret file holds no usable secret
            await self._give_up(record, f"cannot sign: {e}")
            return
        error = ""
        try:
            status = await self.sender.post(target, headers, body)
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)"
                                            if 300 <= status < 400 else "")
        except defer.TimeoutError:
            error = f"no answer within {self.config.webhooks.timeout}s"
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:300]
        now = self.clock.seconds()
        record.attempts = attempt
        if not error:
            log.debug("webhooks: {id} {type} to {hook} {url}: delivered (attempt {n})",
                      id=record.id, type=record.type, hook=hook.id, url=shown(hook.url),
                      n=attempt)
            record.next_try = -1.0  # finished
            self._forget(record.id)
            return
        record.last_error = error
        if now - record.created >= self.config.webhooks.retry_for:
            await self._give_up(record, f"gave up after {attempt} attempts: {error}")
            return
        hooks = self.config.webhooks
        # The last try falls exactly at the end of the retry period (as the queue's).
        record.next_try = min(now + backoff(attempt, hooks.retry_initial, hooks.retry_max),
                              record.created + hooks.retry_for)
        log.info("webhooks: {id} {type} to {hook} {url}: {error}; retrying in {wait:.0f}s",
                 id=record.id, type=record.type, hook=hook.id, url=shown(hook.url),
                 error=error, wait=record.next_try - now)
        await self.disk.run(self.spool.save, record)

    def _forget(self, record_id: str) -> None:
        """Remove a delivered record's file, with others in one disk job."""
        self.to_remove.append(record_id)
        if self.removing:
            return
        batch, self.to_remove = self.to_remove, []
        self.removing = True
        d = self.disk.run(self.spool.done, batch)
        d.addErrback(lambda f: log.failure("webhooks: cannot remove delivered records", f))

        def removed(_: object) -> None:
            self.removing = False
            self.known.difference_update(batch)
            if self.to_remove:
                self._forget(self.to_remove.pop())

        d.addBoth(removed)

    async def _checked(self, url: str) -> Target:
        """The URL's pinned target, checked in a thread at most every CHECK_TTL s."""
        now = self.clock.seconds()
        cached = self.checked.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        target: Target = await self.in_thread(self.check, url)
        if len(self.checked) > 10_000:
            self.checked.clear()
        self.checked[url] = (now + CHECK_TTL, target)
        return target

    async def _give_up(self, record: Record, reason: str) -> None:
        log.warn("webhooks: {id} {type}: {reason}; kept in failed/", id=record.id,
                 type=record.type, reason=reason)
        await self.disk.run(self.spool.give_up, record, reason)
