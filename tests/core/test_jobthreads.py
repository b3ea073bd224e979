"""core/jobthreads.py: jobs run in the threads, results and errors fire on the reactor
thread, in batches; jobs handed in before start wait, and stop finishes them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from mailserver.core.jobthreads import JobThreads


class Reactor:
    """callFromThread recorded; the test runs the calls as the reactor would."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], Any]] = []
        self.lock = threading.Lock()

    def callFromThread(self, fn: Callable[[], Any]) -> None:  # noqa: N802 - Twisted's name
        with self.lock:
            self.calls.append(fn)

    def run_calls(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for fn in calls:
            fn()
        return len(calls)


def test_results_and_errors_come_back_on_the_reactor_in_one_wake_up() -> None:
    reactor = Reactor()
    pool = JobThreads(4, "t", reactor)
    gate = threading.Event()
    ran_in: list[str] = []

    def job(n: int) -> int:
        gate.wait(10)
        ran_in.append(threading.current_thread().name)
        return n * 2

    def boom() -> None:
        gate.wait(10)
        raise OSError(28, "No space left on device")

    results: list[object] = []
    ds = [pool.run(job, n) for n in range(6)] + [pool.run(boom)]
    for d in ds:
        d.addCallbacks(results.append, lambda f: results.append(f.value))
    assert pool.pending == 7, "handed in before start: they wait"
    pool.start()
    gate.set()
    pool.stop()  # every queued job runs first
    assert results == [], "nothing fires off the reactor thread"
    wake_ups = reactor.run_calls()
    assert wake_ups < 7, "results that arrive together share a wake-up"
    assert sorted(r for r in results if isinstance(r, int)) == [0, 2, 4, 6, 8, 10]
    [error] = [r for r in results if isinstance(r, OSError)]
    assert error.errno == 28
    assert pool.pending == 0
    assert all(name.startswith("t-") for name in ran_in)


def test_start_after_stop_makes_new_threads() -> None:
    reactor = Reactor()
    pool = JobThreads(2, "again", reactor)
    pool.start()
    pool.stop()
    pool.start()
    got: list[int] = []
    pool.run(lambda: 7).addCallback(got.append)
    pool.stop()
    reactor.run_calls()
    assert got == [7]


@pytest.mark.parametrize("size", [1, 8])
def test_many_jobs_all_fire_once(size: int) -> None:
    reactor = Reactor()
    pool = JobThreads(size, "many", reactor)
    pool.start()
    got: list[int] = []
    for n in range(500):
        pool.run(lambda n=n: n).addCallback(got.append)
    pool.stop()
    reactor.run_calls()
    assert sorted(got) == list(range(500))
