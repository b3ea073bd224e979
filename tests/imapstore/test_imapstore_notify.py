"""IDLE notification (RFC 2177) and SMTP delivery seen by the IMAP store, on the real
reactor: MaildirDelivery commits through the real disk pool, watch() callbacks come in
the reactor thread (inotify, and the polling fallback)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from imapstore_helpers import ALICE, deliver
from twisted.internet import reactor, task
from twisted.trial import unittest

from mailserver.core.diskio import DiskExecutor, started_disk
from mailserver.store.delivery import MaildirDelivery
from mailserver.store.maildir import create_maildir
from mailserver.store.notify import Notifier
from mailserver.store.registry import drop_idle_states
from mailserver.store.userstore import UserStore

MESSAGE = b"From: a@example.com\nTo: alice@example.org\nSubject: pushed\n\nHello\n"


class WatchCase(unittest.TestCase):
    use_inotify = True

    def setUp(self) -> None:
        top = Path(tempfile.mkdtemp(prefix="imapstore-"))
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        self.mail_dir = top / "mail"
        self.root = create_maildir(self.mail_dir, ALICE)
        self.store = UserStore(self.root)
        self.disk: DiskExecutor = started_disk(self.addCleanup, threads=2)
        self.target = MaildirDelivery(self.mail_dir, "mx.example.org", self.disk)
        self.notifier = Notifier(use_inotify=self.use_inotify, poll_seconds=0.2)
        self.addCleanup(self.notifier.close)
        drop_idle_states()
        self.addCleanup(drop_idle_states)

    async def smtp_deliver(self) -> None:
        txn = self.target.begin([ALICE])
        txn.write(MESSAGE)
        await txn.commit()

    async def wait_for(self, calls: list[str], count: int, timeout: float = 30.0) -> float:
        start = reactor.seconds()
        while len(calls) < count:
            if reactor.seconds() - start > timeout:
                raise self.failureException(f"only {len(calls)} callbacks")
            await task.deferLater(reactor, 0.005, lambda: None)
        return reactor.seconds() - start

    def watch(self, calls: list[str], tag: str = "x") -> object:
        def callback() -> None:
            self.assertIs(threading.current_thread(), threading.main_thread())
            calls.append(tag)
        stop = self.notifier.watch(self.root, callback)
        self.addCleanup(stop)
        return stop

    async def test_delivery_wakes_the_watcher_and_sync_sees_it(self) -> None:
        view = self.store.select("INBOX")
        self.addCleanup(view.close)
        calls: list[str] = []
        self.watch(calls)
        await self.smtp_deliver()
        await self.wait_for(calls, 1)
        changes = await self.disk.run(view.sync)
        self.assertEqual((changes.exists, changes.recent), (1, 1))
        [info] = view.messages
        self.assertEqual(info.size, len(MESSAGE.replace(b"\n", b"\r\n")))
        self.assertEqual(view.read(info.uid), MESSAGE.replace(b"\n", b"\r\n"))

    async def test_a_burst_is_coalesced_and_shared_by_all_watchers(self) -> None:
        first: list[str] = []
        second: list[str] = []
        self.watch(first, "a")
        self.watch(second, "b")
        for i in range(10):  # one burst: all before the reactor looks again
            deliver(self.root, f"m{i}")
        await self.wait_for(first, 1)
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual((first, second), (["a"], ["b"]))  # one call each
        self.assertEqual(self.notifier.watched_folders, 1)

    async def test_flag_change_by_another_session_wakes_the_watcher(self) -> None:
        deliver(self.root, sub="cur")
        view = self.store.select("INBOX")
        self.addCleanup(view.close)
        calls: list[str] = []
        self.watch(calls)
        await self.disk.run(view.store, [1], "+", ["\\Seen"])
        await self.wait_for(calls, 1)

    async def test_stop_ends_the_callbacks(self) -> None:
        calls: list[str] = []
        stop = self.watch(calls)
        stop()  # type: ignore[operator]
        stop()  # type: ignore[operator]  # idempotent
        self.assertEqual(self.notifier.watched_folders, 0)
        await self.smtp_deliver()
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(calls, [])


class PollingWatchCase(WatchCase):
    """The fallback where inotify is missing: a stat() of new/ and cur/ per tick."""

    use_inotify = False


class DefaultNotifierCase(unittest.TestCase):
    def test_reset_closes_watches_left_by_sessions_never_disconnected(self) -> None:
        from mailserver.store import notify

        top = Path(tempfile.mkdtemp(prefix="imapstore-"))
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        root = create_maildir(top / "mail", ALICE)
        notify.watch(root, lambda: None)  # never stopped, as a test's dropped session
        self.assertEqual(notify.default_notifier().watched_folders, 1)
        notify.reset_default_notifier()
        self.assertIsNone(notify._default)
        # trial would report the inotify reader here if it were still registered
