"""The timed rescan beside inotify (store/notify.py, cluster mode): inotify does not see
another machine's changes on a shared file system, so IDLE must learn of them by a
stat of new/ and cur/ every RESCAN_SECONDS. Here inotify is a watcher that never fires,
as it behaves for a change made through another node's mount."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imapstore_helpers import ALICE, deliver
from twisted.internet import reactor, task
from twisted.trial import unittest

from mailserver.store import notify, sharedfs
from mailserver.store.maildir import create_maildir
from mailserver.store.notify import Notifier


class _DeafInotify:
    """Accepts watches and never reports (a change made on another machine)."""

    def watch(self, *args: Any, **kwargs: Any) -> None:
        pass

    def ignore(self, *args: Any) -> None:
        pass

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        pass


class RescanCase(unittest.TestCase):
    def setUp(self) -> None:
        top = Path(tempfile.mkdtemp(prefix="rescan-"))
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        self.root = create_maildir(top / "mail", ALICE)
        for sub in ("new", "cur"):  # not just changed: no racy stamp (see notify.py)
            os.utime(self.root / sub, (time.time() - 60, time.time() - 60))

    def notifier(self, rescan: float | None) -> Notifier:
        notifier = Notifier(rescan_seconds=rescan)
        notifier._notifier = lambda: _DeafInotify()  # type: ignore[method-assign]
        self.addCleanup(notifier.close)
        return notifier

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait for `condition` (a loaded machine may run the rescan ticks late: a fixed
        wait for them failed now and then)."""
        deadline = reactor.seconds() + 30
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"never: {what}")
            await task.deferLater(reactor, 0.01, lambda: None)

    async def calls_after_delivery(self, notifier: Notifier,
                                   rescans: bool = True) -> tuple[int, int]:
        """(wake-ups before the delivery, wake-ups after it). With `rescans`, waits for
        the first rescan (it wakes the watchers once) and then for one after the
        delivery; then a few more ticks pass (0.5 s) in which nothing more may come."""
        calls: list[int] = []
        stop = notifier.watch(self.root, lambda: calls.append(1))
        self.addCleanup(stop)
        if rescans:
            await self.until(lambda: bool(calls), "the first rescan's wake-up")
        await task.deferLater(reactor, 0.5, lambda: None)
        settled = len(calls)
        deliver(self.root, "from another node")
        if rescans:
            await self.until(lambda: len(calls) > settled, "a wake-up for the delivery")
        await task.deferLater(reactor, 0.5, lambda: None)
        return settled, len(calls) - settled

    async def test_rescan_reports_a_change_inotify_missed(self) -> None:
        settled, after = await self.calls_after_delivery(self.notifier(0.2))
        self.assertEqual(settled, 1)
        self.assertGreaterEqual(after, 1)

    async def test_without_rescan_the_change_goes_unseen(self) -> None:
        settled, after = await self.calls_after_delivery(self.notifier(None), rescans=False)
        self.assertEqual((settled, after), (0, 0))

    async def test_cluster_mode_turns_the_rescan_on(self) -> None:
        sharedfs.configure(sharedfs.SharedStore("n1", self.root.parent.parent,
                                                self.root.parent.parent / "cache"))
        self.addCleanup(sharedfs.configure, None)
        self.patch(notify, "RESCAN_SECONDS", 0.2)
        settled, after = await self.calls_after_delivery(self.notifier(None))
        self.assertEqual(settled, 1)
        self.assertGreaterEqual(after, 1)

    async def test_a_stalled_stat_skips_ticks_instead_of_piling_up(self) -> None:
        """A stat that does not come back (an NFS server stalling) is not stacked up
        in threads: one in flight per folder."""
        started: list[int] = []
        release = __import__("threading").Event()
        real_stat = os.stat

        def slow_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if str(path).startswith(str(self.root)):
                started.append(1)
                release.wait(60)  # released by the test; long past any load
            return real_stat(path, *args, **kwargs)

        self.patch(os, "stat", slow_stat)
        notifier = self.notifier(0.05)
        stop = notifier.watch(self.root, lambda: None)
        self.addCleanup(stop)
        await self.until(lambda: bool(started), "the first stat")
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(started), 1)  # ten ticks, one stat
        release.set()

    async def test_a_change_within_the_stamps_second_is_still_reported(self) -> None:
        """sshfs gives whole-second mtimes, and adding a file changes neither a
        directory's inode nor (usually) its size: a delivery in the same second as the
        stamp leaves it equal. Frozen here at 'now', as such a delivery would see it."""
        frozen = int(time.time()) * 1_000_000_000
        real = notify._FolderWatch._dir_stamp

        def whole_seconds(watch: notify._FolderWatch) -> tuple[int, ...] | None:
            stamp = real(watch)
            assert stamp is not None
            return (stamp[0], frozen, 4096, stamp[3], frozen, 4096)

        self.patch(notify._FolderWatch, "_dir_stamp", whole_seconds)
        settled, after = await self.calls_after_delivery(self.notifier(0.2))
        self.assertGreaterEqual(settled, 1)
        self.assertGreaterEqual(after, 1)
