"""The disk executors and directory group commit (core/diskio.py), on real threads."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from twisted.application.service import IService
from twisted.internet import defer
from twisted.trial import unittest

from mailserver.core.diskio import (
    BatchingDisk,
    DirSyncGroup,
    DiskExecutor,
    ThreadPoolDisk,
    make_disk,
)


def test_dir_sync_group_serves_many_threads(tmp_path: Path) -> None:
    group = DirSyncGroup()
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    errors: list[BaseException] = []
    barrier = threading.Barrier(24)

    def work(i: int) -> None:
        barrier.wait()
        try:
            for _ in range(20):
                group.sync(dirs[i % 3])
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert group._dirs == {}  # states are dropped once nobody uses them


def test_dir_sync_group_reports_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirSyncGroup().sync(tmp_path / "missing")


def test_make_disk() -> None:
    assert isinstance(make_disk(), ThreadPoolDisk)
    assert isinstance(make_disk("batch", threads=2), BatchingDisk)
    assert make_disk("pool-plain", threads=3).threads == 3
    with pytest.raises(ValueError):
        make_disk("nope")


class ExecutorTests(unittest.TestCase):
    strategy = "pool"

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="diskio-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.disk: DiskExecutor = make_disk(self.strategy, threads=3)
        self.assertTrue(IService.providedBy(self.disk))
        self.disk.startService()
        self.addCleanup(self.disk.stopService)

    async def test_run_happens_off_the_reactor_thread(self) -> None:
        main = threading.get_ident()
        ident = await self.disk.run(threading.get_ident)
        self.assertNotEqual(ident, main)

    async def test_commits_sync_and_fail_independently(self) -> None:
        good = self.dir / "good"
        good.mkdir()

        def ok() -> Iterable[Path]:
            (good / "f").touch()
            return [good]

        def broken() -> Iterable[Path]:
            raise OSError(5, "I/O error")

        def unsyncable() -> Iterable[Path]:
            return [self.dir / "vanished"]

        results = await defer.DeferredList(
            [self.disk.commit(s) for s in (ok, broken, ok, unsyncable)], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, False, True, False])
        self.assertTrue(results[1][1].check(OSError))
        self.assertTrue(results[3][1].check(FileNotFoundError))

    async def test_work_before_start_waits_for_start(self) -> None:
        disk = make_disk(self.strategy, threads=2)
        d = disk.run(threading.get_ident)
        self.assertFalse(d.called)
        disk.startService()
        self.addCleanup(disk.stopService)
        self.assertNotEqual(await d, threading.get_ident())

    async def test_stop_drains_queued_work(self) -> None:
        done: list[int] = []
        for i in range(20):
            self.disk.run(done.append, i)
        self.disk.stopService()
        self.assertEqual(sorted(done), list(range(20)))
        self.disk.startService()  # the cleanup stops it again


class BatchingExecutorTests(ExecutorTests):
    strategy = "batch"


class PlainExecutorTests(ExecutorTests):
    strategy = "pool-plain"
