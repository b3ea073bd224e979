"""Blocking disk work (write, fsync, link, mkdir) off the reactor thread.

The reactor must never wait for a disk: a single fsync can take milliseconds, and every
session shares the one reactor thread. Delivery therefore hands its blocking steps to a
`DiskExecutor`, a twistd service that owns a dedicated thread pool (not the reactor's
shared one, which DNS lookups and others also use, so a slow disk cannot starve them;
core/jobthreads.py, leaner than Twisted's ThreadPool).

Two commit strategies were measured by bench/fsync_strategies.py (numbers and the
choice in docs/decisions/0002-durable-delivery.md):

- `ThreadPoolDisk`: each commit runs in one pool thread from start to end. Its
  directory fsyncs are group-committed in that thread (`DirSyncGroup`): a commit that
  finds an fsync of the same directory already running waits for it to end and then
  joins the next one with every other waiter, so N renames into one new/ cost about
  one fsync instead of N. (coalesce=False turns that off, for the benchmark.)
- `BatchingDisk`: commits are gathered into batches on the reactor; a batch runs every
  stage in the pool, then fsyncs the union of their directories once, then fires them
  all; arrivals meanwhile wait for the next batch.

`DEFAULT_DISK` names the winner; `make_disk` builds it.

Mailbox sessions (IMAP, POP3) get a pool of their own, `disk.reads`: their work is long
(one SEARCH reads and decodes a whole folder) and would otherwise hold every thread
while a delivery's commit, which gates an SMTP 250, waits in the queue behind it
(docs/decisions/0011-separate-disk-pools.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.core import metrics
from mailserver.core.jobthreads import JobThreads
from mailserver.logs import logger

log = logger(__name__)

T = TypeVar("T")

#: A commit's blocking part: makes its files durable, links them into place, and
#: returns the directories whose entries changed (they still need an fsync).
CommitStage = Callable[[], Iterable[str | Path]]

#: Threads in the disk pool: enough to overlap fsyncs on an SSD; measured in 0002.
DEFAULT_THREADS = 8
#: Threads for mailbox sessions' store work (`DiskExecutor.reads`): as many sessions
#: read at once as before the split, which kept clients fed (0011).
DEFAULT_READ_THREADS = 8


def fsync_dir(path: Path | str) -> None:
    """fsync a directory, so that entries created or renamed in it survive a crash.

    The Maildir spec's delivery steps (write, fsync, link) leave the directory entry
    itself to the file system; on Linux only an fsync of the directory makes it durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written: it may write fewer than asked (a signal,
    a full pipe, some file systems), and a short write unnoticed is a truncated message."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class DiskExecutor(Service):
    """A twistd service owning a dedicated thread pool for blocking disk work.

    Work handed over before startService waits in the queue (so a listener that starts
    first cannot lose a commit); stopService drains the pool (queued work still runs, so
    a message being committed at shutdown is finished, not torn), as the reactor does
    for its own pool. Tests start it in setUp and stop it in a cleanup.
    """

    def __init__(self, threads: int = DEFAULT_THREADS, name: str = "mailserver-disk") -> None:
        self.threads = threads
        self.pool_name = name
        self._pool = self._new_pool()
        self._reads: SessionPool | None = None

    @property
    def reads(self) -> DiskExecutor:
        """Where IMAP and POP3 sessions run their store work: a pool of its own (set by
        make_disk), started and stopped with this one, so a session's long read never
        queues a commit here; this executor itself when there is none."""
        return self._reads if self._reads is not None else self

    def add_read_pool(self, threads: int) -> None:
        """Give mailbox sessions `threads` threads of their own (before startService)."""
        self._reads = SessionPool(threads, name=self.pool_name + "-reads")

    def _new_pool(self) -> JobThreads:
        return JobThreads(self.threads, self.pool_name)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self._pool.start()
        if self._reads is not None:
            self._reads.startService()

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._reads is not None:
            self._reads.stopService()
        self._pool.stop()  # joins the threads once the queue is empty
        return None

    def is_idle(self) -> bool:
        """No disk job running or queued, nor a result the reactor has yet to fire
        (for tests and shutdown diagnostics)."""
        return self._pool.pending == 0

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run `fn(*args)` in a disk thread; the Deferred fires on the reactor thread.

        No ordering between calls: callers that need order chain on the Deferreds.
        """
        metrics.disk_job(1)  # the depth of the disk queue, for /metrics
        return self._pool.run(fn, *args).addBoth(_job_done)

    def commit(self, stage: CommitStage) -> Deferred[None]:
        """Run `stage` in a disk thread, then make the directories it returns durable.

        Fires (on the reactor) once both are done; errbacks with the OSError otherwise.
        """
        raise NotImplementedError


class SessionPool(DiskExecutor):
    """The threads of mailbox sessions (`DiskExecutor.reads`): run() only. Their
    reads, and the flag and expunge writes that answer the session itself; a delivery
    commits through the durable pool, never here."""

    def commit(self, stage: CommitStage) -> Deferred[None]:
        raise NotImplementedError("commits gate a 250: they go to the durable pool")


class DirSyncGroup:
    """Group commit of directory fsyncs, across the threads of one pool.

    A caller's rename must be covered by an fsync that *starts* after the rename. If an
    fsync of the directory is running when the caller arrives, it may have started too
    early; the caller waits for it to end and then joins the next one, which a single
    thread runs on behalf of every caller that arrived meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[str, _DirSync] = {}

    def sync(self, path: str | Path) -> None:
        key = os.fspath(path)
        with self._lock:
            state = self._dirs.get(key)
            if state is None:
                state = self._dirs[key] = _DirSync(key)
            state.users += 1
        try:
            state.sync()
        finally:
            with self._lock:
                state.users -= 1
                if state.users == 0:  # keep the map as small as the working set
                    del self._dirs[key]


class _DirSync:
    """Generations of fsync for one directory: at most one runs at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.cond = threading.Condition()
        self.started = 0
        self.completed = 0
        self.running = False
        self.failures: dict[int, OSError] = {}

    def sync(self) -> None:
        with self.cond:
            target = self.started + 1  # the first generation to start after our rename
            while self.completed < target:
                if self.running:
                    self.cond.wait()
                    continue
                self.running = True
                self.started += 1
                generation = self.started
                error: OSError | None = None
                self.cond.release()
                try:
                    fsync_dir(self.path)
                except OSError as e:
                    error = e
                finally:
                    self.cond.acquire()
                    self.running = False
                    self.completed = generation
                    if error is not None:
                        self.failures[generation] = error
                    self.cond.notify_all()
            failure = self.failures.get(target)
        if failure is not None:
            raise failure


class ThreadPoolDisk(DiskExecutor):
    """Each commit runs whole in one pool thread; directory fsyncs group-committed."""

    def __init__(self, threads: int = DEFAULT_THREADS, coalesce: bool = True,
                 name: str = "mailserver-disk") -> None:
        super().__init__(threads, name)
        self._dir_sync: Callable[[str | Path], None] = (
            DirSyncGroup().sync if coalesce else fsync_dir)

    def commit(self, stage: CommitStage) -> Deferred[None]:
        return self.run(self._commit_in_thread, stage)

    def _commit_in_thread(self, stage: CommitStage) -> None:
        for directory in set(stage()):
            self._dir_sync(directory)


class BatchingDisk(DiskExecutor):
    """Commits batched on the reactor: all stages, then one fsync per directory."""

    def __init__(self, threads: int = DEFAULT_THREADS, name: str = "mailserver-disk") -> None:
        super().__init__(threads, name)
        self._waiting: list[tuple[CommitStage, Deferred[None]]] = []
        self._busy = False

    def commit(self, stage: CommitStage) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((stage, d))
        if not self._busy:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        self._busy = True
        batch, self._waiting = self._waiting, []
        d = defer.ensureDeferred(self._run_batch(batch))
        d.addErrback(lambda f: log.failure("disk batch failed", f))
        d.addBoth(lambda _: self._next_batch())

    async def _run_batch(self, batch: list[tuple[CommitStage, Deferred[None]]]) -> None:
        staged: list[tuple[bool, Any]] = await defer.DeferredList(
            [self.run(_listed, stage) for stage, _ in batch], consumeErrors=True)
        wanted = sorted({os.fspath(d) for ok, dirs in staged if ok for d in dirs})
        synced: list[tuple[bool, Any]] = await defer.DeferredList(
            [self.run(fsync_dir, d) for d in wanted], consumeErrors=True)
        failed: dict[str, Failure] = {
            d: result for d, (ok, result) in zip(wanted, synced, strict=True) if not ok}
        for (_, done), (ok, result) in zip(batch, staged, strict=True):
            # result: the stage's directories if ok, else its Failure
            broken = [result] if not ok else [
                failed[os.fspath(d)] for d in result if os.fspath(d) in failed]
            if broken:
                done.errback(broken[0])
            else:
                done.callback(None)


def _job_done(result: T) -> T:
    metrics.disk_job(-1)
    return result


def _listed(stage: CommitStage) -> list[str | Path]:
    return list(stage())


#: The strategy kept after measuring (docs/decisions/0002-durable-delivery.md).
DEFAULT_DISK = "pool"


def make_disk(strategy: str = DEFAULT_DISK, threads: int = DEFAULT_THREADS,
              read_threads: int = DEFAULT_READ_THREADS) -> DiskExecutor:
    """A disk executor by strategy name: "pool", "pool-plain" (no coalescing), "batch";
    with a read pool of `read_threads` for mailbox sessions (0: they share this one)."""
    disk: DiskExecutor
    if strategy == "pool":
        disk = ThreadPoolDisk(threads)
    elif strategy == "pool-plain":
        disk = ThreadPoolDisk(threads, coalesce=False)
    elif strategy == "batch":
        disk = BatchingDisk(threads)
    else:
        raise ValueError(f"unknown disk strategy {strategy!r}")
    if read_threads:
        disk.add_read_pool(read_threads)
    return disk


def started_disk(add_cleanup: Callable[[Callable[[], object]], object],
                 strategy: str = DEFAULT_DISK, threads: int = 2) -> DiskExecutor:
    """A started executor whose stop is registered with `add_cleanup`; for tests.

    Works with trial's `self.addCleanup` and pytest's `request.addfinalizer`, so tests
    outside the store (SMTP sessions, integration) get real threads in one line.
    """
    disk = make_disk(strategy, threads, read_threads=threads)
    disk.startService()
    add_cleanup(disk.stopService)
    return disk
