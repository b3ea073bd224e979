"""Group commit of finished entries' removal from the spool.

A delivered entry leaves the queue when its envelope is unlinked and the unlink is made
durable by an fsync of envelopes/ (Spool.discard). Done one message at a time, that was
most of what the disk threads did during a drain (bench/results/profiles/relay.md:
waiting for the spool's flock and for directory fsyncs), and the next messages' loads
waited in the pool behind them. Here removals wait on the reactor while a batch runs in
a disk thread: every unlink, one fsync per directory, then every waiter fires; what
arrives meanwhile goes into the next batch (the DirSyncGroup idea, one level up). A few
batches run at once: an unlink itself can wait for the file system's journal when the
disk is busy (0.1 to 3 ms each on the shared bench machine), and theirs overlap.

Nothing is lost: a waiter fires only after the fsync, and until then the envelope is on
disk, so a crash re-sends the message (at most once more) rather than losing it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.core.diskio import DiskExecutor
from mailserver.queue.spool import Spool

#: Entries removed in one disk job at most (their waiters fire together at its end).
MAX_BATCH = 64
#: Batches running at once: half the disk pool (core/diskio.DEFAULT_THREADS), leaving
#: the rest to the loads of the next messages and to sessions' commits.
PARALLEL = 4


class Remover:
    """Removes finished entries in batches; at most `parallel` batches at once."""

    def __init__(self, spool: Spool, disk: DiskExecutor, max_batch: int = MAX_BATCH,
                 parallel: int = PARALLEL) -> None:
        self.spool = spool
        self.disk = disk
        self.max_batch = max_batch
        self.parallel = parallel
        self.waiting: list[tuple[str, Deferred[None]]] = []
        self.running = 0

    def remove(self, queue_id: str) -> Deferred[None]:
        """Fires once the entry's removal is durable; errbacks with the batch's OSError
        (the entry may then still be there, and is retried like any failed round)."""
        done: Deferred[None] = Deferred()
        self.waiting.append((queue_id, done))
        self._next()
        return done

    def _next(self) -> None:
        if not self.waiting or self.running >= self.parallel:
            return
        self.running += 1
        batch = self.waiting[:self.max_batch]
        del self.waiting[:self.max_batch]
        job = self.disk.run(self.spool.discard_many, list(dict.fromkeys(i for i, _ in batch)))

        def finished(result: None | Failure) -> None:
            self.running -= 1
            for _, done in batch:
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
            self._next()

        job.addBoth(finished)
