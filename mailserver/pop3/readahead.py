"""Read-ahead for RETR: message files read in batches, in a disk thread, ahead of the
commands that will ask for them.

Why: a download is a stream of RETR commands (pipelined, RFC 2449 6.6, or one by one).
One disk job per RETR costs a thread hand-off per message, and the reactor would idle
while the thread reads. Instead the session says which messages are coming (the RETR
lines already in its input buffer, and, while the client downloads in order, the next
numbers), and this reads up to BATCH_MESSAGES / BATCH_OCTETS of them in one job; the
next batch is started while the current one is being sent, so reading and sending
overlap. Replies are still sent strictly in command order by the session; a message
read ahead and never asked for is simply dropped with the session.

Memory: per session at most two batches (2 x BATCH_OCTETS), and for all the sessions
of a process together SHARED_OCTETS (the `Budget`); once that is spent each session
reads batches of MIN_BATCH_OCTETS (and always the message it is asked for), so a
thousand clients downloading at once hold ~64 MiB + 1000 x 2 x 256 KiB, not 8 GiB. Messages over maildrop.STREAM_OCTETS are never read ahead: RETR streams them
(stream.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred

from mailserver.interfaces import IMaildrop
from mailserver.pop3 import maildrop

BATCH_MESSAGES = 128
BATCH_OCTETS = 4 * 1024 * 1024
#: Start the next batch when fewer than this many messages are waiting to be sent
#: (= a batch: the next one is read while the last one is being sent).
LOW_WATER = BATCH_MESSAGES // 2

#: Octets read ahead and not yet sent, for all the sessions of a process together.
SHARED_OCTETS = 64 * 1024 * 1024
#: What a session still reads per batch once the shared budget is spent: a batch of a
#: few dozen messages, not one disk job per RETR (measured: a download of one message
#: per job cost ~8x the CPU, the GIL changing hands at every hand-off).
MIN_BATCH_OCTETS = 256 * 1024

#: How to run a blocking job in a disk thread: DiskExecutor.run.
RunInThread = Callable[..., "Deferred[Any]"]


class Budget:
    """The octets of read-ahead the sessions of one process may hold together.

    Counted by the messages' sizes (LIST's), taken when a batch starts and given back
    when a reply leaves the cache (sent, DELE, session closed). Only the reactor
    thread touches it: no lock.
    """

    def __init__(self, octets: int = SHARED_OCTETS) -> None:
        self.octets = octets
        self.free = octets


#: The process's budget (each worker process has its own, as it has its own memory).
SHARED = Budget()


class ReadAhead:
    """The RETR replies (maildrop.read_replies) of messages about to be retrieved, by
    message number."""

    def __init__(self, run: RunInThread, drop: IMaildrop, budget: Budget = SHARED) -> None:
        self._run = run
        self._drop = drop
        self._budget = budget
        #: Octets taken from the budget, by message number (read or being read).
        self._held: dict[int, int] = {}
        self._messages = drop.messages
        #: Read and not yet sent: number -> whole reply (None: expunged meanwhile).
        self._ready: dict[int, bytes | None] = {}
        #: Octets held in _ready: a refill waits while a batch's worth is there, or a
        #: cache of big messages would grow by a batch per RETR (up to LOW_WATER of them).
        self._ready_octets = 0
        #: Numbers in the batch being read now, and who waits for which.
        self._reading: set[int] = set()
        self._waiters: dict[int, list[Deferred[bytes | None]]] = {}
        self._closed = False
        #: The highest message number read or being read (where reading ahead goes on).
        self.highest = 0

    def take(self, number: int) -> tuple[bool, bytes | None]:
        """(True, data) when `number` has been read already; it leaves the cache."""
        if number in self._ready:
            data = self._ready.pop(number)
            self._ready_octets -= len(data or b"")
            self._release(number)
            return True, data
        return False, None

    def wait(self, number: int, coming: Iterable[int]) -> Deferred[bytes | None]:
        """The data of `number` once read; starts a batch (with `coming`) if needed."""
        d: Deferred[bytes | None] = Deferred()
        self._waiters.setdefault(number, []).append(d)
        if number not in self._reading:
            if self._reading:
                # A batch is running without it: read it alone, beside that batch.
                self._start([number])
            else:
                self._start([number, *coming])
        return d

    def refill(self, coming: Iterable[int]) -> None:
        """After a message was sent: start the next batch if the cache runs low."""
        if self.needs_refill():
            self._start(coming)

    def forget(self, number: int) -> None:
        """DELE: the message will not be asked for."""
        if number in self._ready:
            self._ready_octets -= len(self._ready.pop(number) or b"")
            self._release(number)

    def close(self) -> None:
        self._closed = True
        for n in self._ready:
            self._release(n)
        self._ready.clear()
        self._ready_octets = 0

    def _release(self, number: int) -> None:
        self._budget.free += self._held.pop(number, 0)

    def needs_refill(self) -> bool:
        """Whether refill() would start a batch (checked before the session builds
        the list of coming numbers: this runs once per RETR)."""
        most = BATCH_OCTETS if self._budget.free > 0 else MIN_BATCH_OCTETS
        return (not self._reading and len(self._ready) < LOW_WATER
                and self._ready_octets < most and not self._closed)

    def _start(self, numbers: Iterable[int]) -> None:
        batch: list[int] = []
        chosen: set[int] = set()
        octets = 0
        messages = self._messages
        # The first message always (the one a RETR waits for); more within the budget,
        # or a small batch when it is spent.
        limit = min(BATCH_OCTETS, max(MIN_BATCH_OCTETS, self._budget.free))
        for n in numbers:
            if n in self._ready or n in self._reading or n in chosen \
                    or not 1 <= n <= len(messages) or messages[n - 1].deleted:
                continue
            size = messages[n - 1].size
            if size > maildrop.STREAM_OCTETS:
                continue  # RETR streams it (stream.py); never read whole
            if batch and (octets + size > limit or len(batch) >= BATCH_MESSAGES):
                break
            batch.append(n)
            chosen.add(n)
            octets += size
        if not batch:
            return
        for n in batch:
            self._held[n] = messages[n - 1].size
        self._budget.free -= octets
        self._reading.update(batch)
        self.highest = max(self.highest, *batch)
        d = self._run(maildrop.read_replies, self._drop, batch)
        d.addCallbacks(lambda results: self._done(batch, results),
                       lambda failure: self._failed(batch, failure))

    def _done(self, batch: list[int], results: list[bytes | None]) -> None:
        self._reading.difference_update(batch)
        # The whole batch is filed before any waiter runs: a waiter sends its reply and
        # refills, and a refill made while the rest of the batch was not yet in _ready
        # read those messages a second time (and counted them twice in the budget).
        fire: list[tuple[Deferred[bytes | None], bytes | None]] = []
        for n, data in zip(batch, results, strict=True):
            waiters = self._waiters.pop(n, [])
            if waiters or self._closed:
                self._release(n)  # written to the transport now, or dropped
                fire.extend((d, data) for d in waiters)
            else:
                self._ready[n] = data
                self._ready_octets += len(data or b"")
        for d, data in fire:
            d.callback(data)

    def _failed(self, batch: list[int], failure: Any) -> None:
        self._reading.difference_update(batch)
        for n in batch:
            self._release(n)
            for d in self._waiters.pop(n, []):
                d.errback(failure)
