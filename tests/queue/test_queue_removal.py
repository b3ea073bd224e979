"""The scheduler's group commit of finished entries (queue/removal.py): many removals,
few disk jobs and fsyncs, and no waiter told "removed" before the removal is durable."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from mailserver.core.diskio import started_disk
from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
from mailserver.queue.removal import Remover
from mailserver.queue.spool import Spool

MESSAGE = b"From: alice@example.org\nSubject: done\n\nhello\n"


class RemoverTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.disk = started_disk(self.addCleanup, threads=4)  # more than `parallel`
        self.spool = Spool(Path(tempfile.mkdtemp(prefix="removal-")) / "queue")
        self.spool.ensure_dirs()
        self.batches: list[list[str]] = []
        self.synced: list[tuple[str, ...]] = []
        self.at_once = self.most_at_once = 0
        counting = threading.Lock()
        real = self.spool.discard_many

        def discard_many(ids: list[str]) -> None:
            with counting:
                self.batches.append(list(ids))
                self.at_once += 1
                self.most_at_once = max(self.most_at_once, self.at_once)
            time.sleep(0.01)
            real(ids)
            with counting:
                self.synced.append(tuple(ids))
                self.at_once -= 1

        self.patch(self.spool, "discard_many", discard_many)

    def queued(self, n: int) -> list[str]:
        ids = []
        for i in range(n):
            entry = QueueEntry(new_queue_id(), "alice@example.org",
                               [RecipientState(f"r{i}@example.net")], size=len(MESSAGE))
            tmp = self.spool.tmp_path(entry.id, "msg")
            tmp.write_bytes(MESSAGE)
            self.spool.commit(entry, tmp)
            self.spool.release(entry.id)
            ids.append(entry.id)
        return ids

    @defer.inlineCallbacks
    def test_removals_that_arrive_while_a_batch_runs_share_the_next_one(self) -> object:
        ids = self.queued(30)
        remover = Remover(self.spool, self.disk, parallel=1)
        fired: list[str] = []

        def removed(_: None, queue_id: str) -> None:
            # Told only once its batch (unlinks, then the fsync) has returned.
            self.assertIn(queue_id, [i for batch in self.synced for i in batch])
            self.assertFalse((self.spool.envelopes / queue_id).exists())
            fired.append(queue_id)

        waits = [remover.remove(i).addCallback(removed, i) for i in ids]
        yield defer.gatherResults(waits)
        self.assertEqual(sorted(fired), sorted(ids))
        self.assertEqual(self.batches, [ids[:1], ids[1:]], "the first alone, then the rest")
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(sorted(self.spool.messages.iterdir()), [])

    @defer.inlineCallbacks
    def test_batches_are_capped_and_run_a_few_at_once(self) -> object:
        ids = self.queued(20)
        remover = Remover(self.spool, self.disk, max_batch=4, parallel=2)
        waits = [remover.remove(i) for i in ids]
        self.assertEqual(remover.running, 2)
        yield defer.gatherResults(waits)
        self.assertEqual(sorted(len(b) for b in self.batches), [1, 1, 2, 4, 4, 4, 4])
        self.assertEqual(sorted(i for b in self.batches for i in b), sorted(ids))
        self.assertEqual(self.most_at_once, 2)
        self.assertEqual(remover.running, 0)

    @defer.inlineCallbacks
    def test_a_failed_batch_fails_its_waiters_and_the_next_batch_still_runs(
            self) -> object:
        ids = self.queued(3)
        calls: list[list[str]] = []
        real = Spool.discard_many

        def discard_many(batch: list[str]) -> None:
            calls.append(batch)
            if len(calls) == 1:
                raise OSError(5, "Input/output error")
            real(self.spool, batch)

        self.patch(self.spool, "discard_many", discard_many)
        remover = Remover(self.spool, self.disk, parallel=1)
        first, second, third = (remover.remove(i) for i in ids)
        yield self.assertFailure(first, OSError)
        yield defer.gatherResults([second, third])
        self.assertEqual(calls, [ids[:1], ids[1:]])
        self.assertEqual(self.spool.ids(), [ids[0]], "still queued: retried, not lost")
