"""The queue's gauges for /metrics: how many messages wait, and how old the oldest is.

Sampled, not counted: the queue is files (queue/spool.py) that the sessions of every
process add and the scheduler of the twistd process removes, so the truth is the
directory. Every SAMPLE_INTERVAL seconds the twistd process lists queue/messages/ in a
disk thread (a name and a stat per entry; the scheduler reads far more per delivery)
and sets the two gauges. A scrape therefore sees the queue as of at most that long ago.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from mailserver.core import metrics
from mailserver.core.diskio import DiskExecutor
from mailserver.logs import logger
from mailserver.queue.spool import Spool

log = logger(__name__)

SAMPLE_INTERVAL = 10.0


def sample_queue(spool: Spool) -> tuple[int, float]:
    """(messages queued, age in seconds of the oldest); blocking: run in a disk thread."""
    count, oldest = 0, None
    try:
        with os.scandir(spool.messages) as entries:
            for entry in entries:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # delivered meanwhile
                count += 1
                oldest = mtime if oldest is None else min(oldest, mtime)
    except FileNotFoundError:
        pass
    return count, 0.0 if oldest is None else max(0.0, time.time() - oldest)


class QueueGauges(Service):
    def __init__(self, spool: Spool, disk: DiskExecutor) -> None:
        self.spool = spool
        self.disk = disk
        self.loop = LoopingCall(self._sample)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.loop.start(SAMPLE_INTERVAL, now=True)

    def stopService(self) -> Any:  # noqa: N802 - Twisted's name
        super().stopService()
        if self.loop.running:
            self.loop.stop()

    def _sample(self) -> Any:
        d = self.disk.run(sample_queue, self.spool)
        d.addCallback(lambda found: metrics.queue_state(*found))
        d.addErrback(lambda f: log.failure("metrics: cannot sample the queue", f))
        return d
