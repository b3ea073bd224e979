"""A fixed set of threads running blocking jobs for the reactor, with little overhead.

Twisted's ThreadPool (through deferToThreadPool) took about a fifth of the reactor's
Python time at 50 SMTP connections (bench/results/profiles/smtp-*.md): every job goes
through a Team, a coordinator worker and a context wrapper, and every result is one
callFromThread (a waker write and a reactor wake-up). Here a job is one put on a
SimpleQueue (C) and results come back in batches: a thread that finishes a job while an
earlier result still waits for the reactor adds its own to that batch instead of waking
the reactor again.

Jobs handed in before `start` wait; `stop` lets every queued job run, then joins the
threads (a message being committed at shutdown is finished, not torn); `start` after
`stop` makes new threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_Job = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]


class JobThreads:
    """`size` threads taking jobs from one queue; results fire on the reactor thread."""

    def __init__(self, size: int, name: str, reactor: Any = None) -> None:
        self.size = size
        self.name = name
        self._reactor = reactor
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._results: list[tuple[Deferred[Any], bool, Any]] = []
        self._wake_sent = False
        #: Jobs handed in whose result the reactor has not fired yet (reactor thread).
        self.pending = 0

    def start(self) -> None:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        for i in range(self.size - len(self._threads)):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=False)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Run what is queued, then end the threads (blocks until they have)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """`fn(*args)` in one of the threads; the Deferred fires on the reactor thread."""
        d: Deferred[T] = Deferred()
        self.pending += 1
        self._jobs.put((d, fn, args))
        return d

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            d, fn, args = job
            try:
                outcome: tuple[Deferred[Any], bool, Any] = (d, True, fn(*args))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._results.append(outcome)
                wake = not self._wake_sent
                self._wake_sent = True
            if wake:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """On the reactor: fire every result that has come back since the last wake."""
        with self._lock:
            results, self._results = self._results, []
            self._wake_sent = False
        self.pending -= len(results)
        for d, ok, value in results:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
