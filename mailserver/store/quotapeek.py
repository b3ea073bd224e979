"""RCPT's look at a mailbox's quota count when the Maildirs are on shared storage.

On a local disk `quota.peek` (one small read) runs on the reactor thread at RCPT. On a
network filesystem mounted `hard` (docs/cluster.md) the same read waits for as long as
the server stalls, and the reactor with it: every session of the node, new connections'
greetings and the answers to other nodes' health checks freeze for the whole stall
(tests/cluster: test_storage_stall_does_not_stop_the_reactor). In cluster mode RCPT
therefore answers from the count last read in a disk thread, at most `max_age` seconds
old, and starts a fresh read when it is older. A mailbox not read yet passes RCPT: the
commit checks the count again in its disk thread (store/delivery.py, 552 5.2.2), so a
full mailbox still refuses the message, only after DATA instead of at RCPT.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from mailserver.interfaces import QuotaUsage
from mailserver.logs import logger
from mailserver.store import quota

log = logger(__name__)

#: Seconds a count read in a thread answers RCPT before it is read again.
MAX_AGE = 2.0
#: Mailboxes whose last count is kept (least recently asked dropped first).
CACHED = 4096
#: Reads in flight at once; past it RCPT goes on with what it has (bounded threads
#: queued behind a stalled filesystem).
IN_FLIGHT = 32


class QuotaPeeks:
    """Cached `quota.peek` for the reactor thread; reads happen in `run`'s threads."""

    def __init__(self, run: Callable[..., Deferred[Any]], max_age: float = MAX_AGE,
                 cached: int = CACHED, in_flight: int = IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run = run
        self.max_age = max_age
        self.cached = cached
        self.in_flight = in_flight
        self._clock = clock
        self._counts: OrderedDict[Path, tuple[QuotaUsage | None, float]] = OrderedDict()
        self._pending: set[Path] = set()

    def peek(self, root: Path) -> QuotaUsage | None:
        """The last count read for `root` (None: none yet, or no count file); starts a
        read in a thread when it is missing or older than max_age. Never blocks."""
        entry = self._counts.get(root)
        if entry is not None:
            self._counts.move_to_end(root)
        if (entry is None or self._clock() - entry[1] > self.max_age) \
                and root not in self._pending and len(self._pending) < self.in_flight:
            self._pending.add(root)
            self._run(quota.peek, root).addCallbacks(
                self._read, self._failed, callbackArgs=(root,), errbackArgs=(root,))
        return entry[0] if entry is not None else None

    def _read(self, usage: QuotaUsage | None, root: Path) -> None:
        self._pending.discard(root)
        self._counts[root] = (usage, self._clock())
        self._counts.move_to_end(root)
        while len(self._counts) > self.cached:
            self._counts.popitem(last=False)

    def _failed(self, failure: Any, root: Path) -> None:  # quota.peek catches OSError
        self._pending.discard(root)
        log.failure("quota count of {root}", failure, root=str(root))


__all__ = ["QuotaPeeks"]
