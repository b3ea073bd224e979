"""The threads that verify passwords: as many as there are cores, and no more.

Why a pool of its own: Argon2id holds `m` KiB (19 MiB) for as long as one verification
runs, and argon2-cffi releases the GIL, so every thread hashing at once is that much more
memory and no more throughput once the cores are busy. With the reactor's shared pool
(ten threads) ten logins at once took ten hashes' memory (m=32 MiB: +288 MiB measured,
bench/results/profiles/argon2-cost.md) and delayed the DNS lookups queued behind them.
With one thread per core a burst of logins costs at most cores x m of memory and is
answered in the same wall time; the rest wait in this pool's queue, not in memory.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.python.threadpool import ThreadPool


def hashing_threads() -> int:
    """One per core (at least one): more cannot hash faster, only hold more memory."""
    return max(1, os.cpu_count() or 1)


class HashingPool(service.Service):
    """A started-with-the-server ThreadPool of `threads` threads for password checks."""

    name = "password-hashing"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or hashing_threads()
        #: Handed to the PasswordChecker once; checks queued before the server starts
        #: run when it does. Stopped with the server, for good (twistd never restarts).
        self.pool = ThreadPool(minthreads=0, maxthreads=self.threads, name=self.name)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.pool.start()

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        super().stopService()
        self.pool.stop()  # lets the checks already queued finish, then joins
