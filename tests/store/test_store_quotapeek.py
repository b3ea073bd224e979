"""RCPT's quota look on shared storage (store/quotapeek.py): never a read on the calling
thread, one read in flight per mailbox, bounded reads and cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from mailserver.interfaces import QuotaUsage
from mailserver.store import quota
from mailserver.store.quotapeek import QuotaPeeks


class Threads:
    """Stands in for a disk pool: records each job, fires it when the test says."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def finish(self, index: int = 0) -> None:
        fn, args, d = self.jobs.pop(index)
        d.callback(fn(*args))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counted(root: Path, octets: int, messages: int) -> None:
    """A count file saying `octets` and `messages` (an empty Maildir counted, plus that)."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    quota.usage(root)
    quota.change(root, octets, messages)


def test_first_look_passes_and_reads_in_a_thread(tmp_path: Path) -> None:
    root = tmp_path / "alice"
    counted(root, 5000, 3)
    threads = Threads()
    peeks = QuotaPeeks(threads.run, clock=Clock())
    assert peeks.peek(root) is None  # nothing read yet: RCPT passes
    assert [(fn, args) for fn, args, _ in threads.jobs] == [(quota.peek, (root,))]
    assert peeks.peek(root) is None
    assert len(threads.jobs) == 1  # one read in flight per mailbox, not one per RCPT
    threads.finish()
    assert peeks.peek(root) == QuotaUsage(storage=5000, messages=3)
    assert threads.jobs == []  # fresh: no new read


def test_an_old_count_answers_while_it_is_read_again(tmp_path: Path) -> None:
    root = tmp_path / "alice"
    counted(root, 100, 1)
    threads, clock = Threads(), Clock()
    peeks = QuotaPeeks(threads.run, max_age=2.0, clock=clock)
    peeks.peek(root)
    threads.finish()
    quota.change(root, 900, 1)
    clock.now += 2.5
    assert peeks.peek(root) == QuotaUsage(storage=100, messages=1)  # the old count
    assert len(threads.jobs) == 1
    threads.finish()
    assert peeks.peek(root) == QuotaUsage(storage=1000, messages=2)


def test_a_stalled_filesystem_gets_a_bounded_number_of_reads(tmp_path: Path) -> None:
    """Reads that never finish (an NFS server that stopped answering) do not pile up:
    past in_flight, RCPT goes on without starting more."""
    threads = Threads()
    peeks = QuotaPeeks(threads.run, in_flight=3, clock=Clock())
    for i in range(10):
        assert peeks.peek(tmp_path / f"user{i}") is None
    assert len(threads.jobs) == 3


def test_the_cache_keeps_the_most_recently_asked(tmp_path: Path) -> None:
    threads = Threads()
    peeks = QuotaPeeks(threads.run, cached=2, clock=Clock())
    roots = [tmp_path / name for name in ("a", "b", "c")]
    for root in roots:
        counted(root, 10, 1)
    for root in roots[:2]:
        peeks.peek(root)
        threads.finish()
    peeks.peek(roots[0])  # a is now the most recent
    peeks.peek(roots[2])
    threads.finish()
    assert threads.jobs == []
    assert peeks.peek(roots[0]) is not None  # kept
    assert threads.jobs == []
    assert peeks.peek(roots[1]) is None  # dropped: read again
    assert len(threads.jobs) == 1


def test_a_missing_count_file_is_none(tmp_path: Path) -> None:
    threads = Threads()
    peeks = QuotaPeeks(threads.run, clock=Clock())
    peeks.peek(tmp_path / "nobody")
    threads.finish()
    assert peeks.peek(tmp_path / "nobody") is None
    assert threads.jobs == []  # a fresh "no count" is remembered too
