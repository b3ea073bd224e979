"""The disk executors and directory group commit (core/diskio.py), on real threads."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import IService
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailserver.config import config_from_dict
from mailserver.core.context import ServerContext
from mailserver.core.diskio import (
    BatchingDisk,
    DirSyncGroup,
    DiskExecutor,
    ThreadPoolDisk,
    make_disk,
)
from mailserver.imap import listener as imap_listener
from mailserver.interfaces import MailboxId
from mailserver.pop3 import listener as pop3_listener
from mailserver.store.delivery import MaildirDelivery


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


class ReadPoolTests(unittest.TestCase):
    """Mailbox sessions run in a pool of their own: with every one of its threads held
    by a slow read (eight sessions searching heavy keys once delayed an SMTP 250 by
    242 s), a delivery still commits, and the reads go on after."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="diskio-reads-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.disk = make_disk("pool", threads=2, read_threads=2)
        self.disk.startService()
        self.addCleanup(self.disk.stopService)
        self.release = threading.Event()
        self.addCleanup(self.release.set)  # runs first: a failing test still stops

    async def test_delivery_commits_while_the_read_pool_is_saturated(self) -> None:
        running: list[int] = []

        def slow_read(n: int) -> int:
            running.append(n)
            self.release.wait(60)
            return n

        reads = [self.disk.reads.run(slow_read, n) for n in range(5)]  # 2 run, 3 wait
        target = MaildirDelivery(self.dir / "mail", "mx.example.org", self.disk)
        txn = target.begin([MailboxId("example.org", "bob")])
        txn.write(b"Subject: urgent\n\nwhile everyone searches\n")
        committed = txn.commit()
        for _ in range(2000):  # a guard against hanging, not a measurement
            if committed.called:
                break
            await task.deferLater(reactor, 0.005, lambda: None)
        self.assertTrue(committed.called, "the commit waited behind the reads")
        await committed
        [stored] = (self.dir / "mail" / "example.org" / "bob" / "new").iterdir()
        self.assertEqual(stored.read_bytes(), b"Subject: urgent\n\nwhile everyone searches\n")
        self.assertEqual(len(running), 2, "both read threads were held throughout")
        self.assertFalse(any(d.called for d in reads))
        self.release.set()
        self.assertEqual(await defer.gatherResults(reads), [0, 1, 2, 3, 4])

    def test_sessions_get_the_read_pool_and_delivery_the_durable_one(self) -> None:
        config = config_from_dict({"hostname": "mx.example.org", "data_dir": str(self.dir),
                                   "domains": {"local": ["example.org"]}})
        context = ServerContext(config=config, directory=cast(Any, None),
                                portal=cast(Any, None), target=cast(Any, None),
                                disk=self.disk, tls=cast(Any, None),
                                mailboxes=cast(Any, None))
        imap = imap_listener.make_listener(context, "imap")
        pop3 = pop3_listener.make_listener(context, "pop3")
        assert imap is not None and pop3 is not None
        self.assertIs(cast(Any, imap.factory).disk, self.disk.reads)
        self.assertIs(cast(Any, pop3.factory).disk, self.disk.reads)
        self.assertIsNot(self.disk.reads, self.disk)
        with pytest.raises(NotImplementedError):
            self.disk.reads.commit(lambda: [])

    def test_without_a_read_pool_sessions_share_the_one(self) -> None:
        disk = make_disk("pool", threads=1, read_threads=0)
        self.assertIs(disk.reads, disk)
