"""Durable two-phase delivery (store/delivery.py) through the real disk thread pool.

trial TestCases (pytest runs them) so every test waits on real Deferreds fired from the
pool's threads by the real reactor: no synchronous stand-in for the disk executor.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailserver.core.diskio import DiskExecutor, started_disk
from mailserver.errors import ReplyError
from mailserver.interfaces import ILocalDelivery, ILocalTransaction, MailboxId
from mailserver.store.delivery import MaildirDelivery, MaildirTransaction, delivery_error
from mailserver.store.maildir import create_maildir, mailbox_path, parse_name

ALICE = MailboxId("example.org", "alice")
BOB = MailboxId("example.org", "bob")
CAROL = MailboxId("example.net", "carol")
MESSAGE = b"From: a@example.com\nTo: alice@example.org\nSubject: hi\n\nHello\nworld\n"


def files_in(root: Path, *subs: str) -> list[Path]:
    """Every file in the given subdirectories of a Maildir (missing ones count as empty)."""
    found: list[Path] = []
    for sub in subs:
        if (root / sub).is_dir():
            found.extend(sorted((root / sub).iterdir()))
    return found


def all_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*")
                  if p.is_file() and p.name not in ("maildirfolder", "subscriptions")
                  and not p.name.startswith("mailserver-quota"))


class DeliveryCase(unittest.TestCase):
    """A started disk executor and a MaildirDelivery on a fresh temporary mail_dir."""

    strategy = "pool"

    def setUp(self) -> None:
        self.mail_dir = Path(tempfile.mkdtemp(prefix="store-test-")) / "mail"
        self.addCleanup(shutil.rmtree, self.mail_dir.parent, ignore_errors=True)
        self.disk: DiskExecutor = started_disk(self.addCleanup, self.strategy, threads=4)
        self.target = MaildirDelivery(self.mail_dir, "mx.example.org", self.disk)

    def root(self, mailbox: MailboxId) -> Path:
        return mailbox_path(self.mail_dir, mailbox)

    async def deliver(self, data: bytes, *mailboxes: MailboxId, chunk: int = 1000) -> None:
        txn = self.target.begin(mailboxes)
        for i in range(0, len(data), chunk):
            txn.write(data[i:i + chunk])
        await txn.commit()

    async def assert_fails(self, d: defer.Deferred[None], code: int) -> ReplyError:
        try:
            await d
        except ReplyError as e:
            self.assertEqual(e.code, code)
            return e
        raise self.failureException("commit did not fail")

    async def settle(self) -> None:
        """Wait until the pool has run whatever the transaction handed it.

        Idle three reactor turns in a row: results come back through callFromThread and
        may hand the pool a follow-up job (the rollback after a spill write).
        """
        quiet = 0
        for _ in range(2000):
            await task.deferLater(reactor, 0.001, lambda: None)
            quiet = quiet + 1 if self.disk.is_idle() else 0
            if quiet == 3:
                return
        raise self.failureException("disk pool never went idle")

    def assert_nothing_visible(self, *mailboxes: MailboxId) -> None:
        for mailbox in mailboxes:
            root = self.root(mailbox)
            self.assertEqual(files_in(root, "new", "cur", "tmp"), [], str(root))


class DeliveryTests(DeliveryCase):
    def test_provides_interfaces(self) -> None:
        self.assertTrue(ILocalDelivery.providedBy(self.target))
        self.assertTrue(ILocalTransaction.providedBy(self.target.begin([ALICE])))

    async def test_one_recipient_exact_bytes_in_new(self) -> None:
        await self.deliver(MESSAGE, ALICE)
        [path] = files_in(self.root(ALICE), "new")
        self.assertEqual(path.read_bytes(), MESSAGE)
        self.assertEqual(files_in(self.root(ALICE), "cur", "tmp"), [])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        # created on first delivery, with the default folders
        self.assertTrue((self.root(ALICE) / ".Sent" / "maildirfolder").is_file())

    async def test_name_carries_sizes(self) -> None:
        await self.deliver(MESSAGE, ALICE)
        [path] = files_in(self.root(ALICE), "new")
        parsed = parse_name(path.name)
        self.assertEqual(parsed.size, len(MESSAGE))
        self.assertEqual(parsed.crlf_size, len(MESSAGE.replace(b"\n", b"\r\n")))
        self.assertIn(".mx.example.org,S=", path.name)
        self.assertFalse(parsed.has_info)

    async def test_three_recipients_are_hard_links(self) -> None:
        await self.deliver(MESSAGE, ALICE, BOB, CAROL)
        paths = [p for m in (ALICE, BOB, CAROL) for p in files_in(self.root(m), "new")]
        self.assertEqual(len(paths), 3)
        # One message, one unique name (the tmp/ name kept, as the Maildir spec does),
        # in three different new/ directories.
        self.assertEqual(len({p.name for p in paths}), 1)
        for p in paths:
            self.assertEqual(p.read_bytes(), MESSAGE)
        self.assertEqual(len({os.stat(p).st_ino for p in paths}), 1)
        self.assertEqual(os.stat(paths[0]).st_nlink, 3)  # the temporary name is gone
        self.assertEqual(all_files(self.mail_dir), sorted(paths))

    async def test_duplicate_mailboxes_get_one_copy(self) -> None:
        await self.deliver(MESSAGE, ALICE, ALICE, BOB)
        self.assertEqual(len(files_in(self.root(ALICE), "new")), 1)
        self.assertEqual(len(files_in(self.root(BOB), "new")), 1)

    async def test_many_concurrent_transactions(self) -> None:
        messages = [MESSAGE + b"n=%d\n" % i for i in range(60)]
        await defer.gatherResults(
            [defer.ensureDeferred(self.deliver(m, ALICE if i % 2 else BOB))
             for i, m in enumerate(messages)])
        stored = sorted(p.read_bytes() for p in all_files(self.mail_dir))
        self.assertEqual(stored, sorted(messages))

    async def test_large_message_spills_and_arrives_byte_exact(self) -> None:
        line = bytes(range(32, 127)) + b"\n"
        data = (line * (5 * 1024 * 1024 // len(line) + 1))[: 5 * 1024 * 1024]
        txn = self.target.begin([ALICE, BOB])
        for i in range(0, len(data), 64 * 1024):
            txn.write(data[i:i + 64 * 1024])
            if i == 512 * 1024:
                self.assertTrue(txn._spilled)
                self.assertLess(txn._buffered, 300 * 1024)
        # let the disk thread catch up: the spill file sits in the first mailbox's tmp/
        await self.settle()
        [spill] = files_in(self.root(ALICE), "tmp")
        self.assertEqual(files_in(self.root(ALICE), "new"), [])
        self.assertGreater(spill.stat().st_size, 0)
        await txn.commit()
        for mailbox in (ALICE, BOB):
            [path] = files_in(self.root(mailbox), "new")
            self.assertEqual(path.read_bytes(), data)
            self.assertEqual(parse_name(path.name).crlf_size, len(data) + data.count(b"\n"))
            self.assertEqual(files_in(self.root(mailbox), "tmp"), [])

    async def test_empty_message(self) -> None:
        txn = self.target.begin([ALICE])
        await txn.commit()
        [path] = files_in(self.root(ALICE), "new")
        self.assertEqual(path.read_bytes(), b"")

    async def test_copy_fallback_across_file_systems(self) -> None:
        if not os.path.isdir("/dev/shm"):
            raise unittest.SkipTest("no /dev/shm to stand for another file system")
        elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="store-test-"))
        self.addCleanup(shutil.rmtree, elsewhere, ignore_errors=True)
        if os.stat(elsewhere).st_dev == os.stat(self.mail_dir.parent).st_dev:
            raise unittest.SkipTest("/dev/shm is on the same file system here")
        self.mail_dir.mkdir()
        (self.mail_dir / "example.net").symlink_to(elsewhere)
        await self.deliver(MESSAGE, ALICE, CAROL)  # link() to CAROL fails with EXDEV
        [a] = files_in(self.root(ALICE), "new")
        [c] = files_in(self.root(CAROL), "new")
        self.assertEqual(c.read_bytes(), MESSAGE)
        self.assertNotEqual(os.stat(a).st_dev, os.stat(c).st_dev)
        self.assertEqual(files_in(self.root(CAROL), "tmp") + files_in(self.root(ALICE), "tmp"),
                         [])


class FailureTests(DeliveryCase):
    async def test_failure_part_way_leaves_nothing_visible(self) -> None:
        for mailbox in (ALICE, BOB, CAROL):
            create_maildir(self.mail_dir, mailbox)
        # CAROL's new/ is replaced by a regular file: link() into it fails (ENOTDIR)
        # after ALICE and BOB already have their copy.
        new = self.root(CAROL) / "new"
        new.rmdir()
        new.write_bytes(b"in the way")
        txn = self.target.begin([ALICE, BOB, CAROL])
        txn.write(MESSAGE)
        with self.assertRaises(ReplyError) as raised:
            await txn.commit()
        self.assertEqual((raised.exception.code, raised.exception.reply.enhanced),
                         (451, "4.3.0"))
        self.assertNotIn("in the way", str(raised.exception))
        self.assert_nothing_visible(ALICE, BOB)
        self.assertEqual(files_in(self.root(CAROL), "cur", "tmp"), [])
        self.flushLoggedErrors()

    async def test_mailbox_path_blocked_by_a_file(self) -> None:
        self.mail_dir.mkdir()
        (self.mail_dir / "example.net").write_bytes(b"a file, not a domain directory")
        await self.assert_fails(self.target.begin([ALICE, CAROL]).commit(), 451)
        self.assertEqual(all_files(self.mail_dir), [self.mail_dir / "example.net"])

    async def test_failure_of_a_spilled_message_leaves_nothing(self) -> None:
        create_maildir(self.mail_dir, BOB)
        (self.root(BOB) / "new").rmdir()
        (self.root(BOB) / "new").write_bytes(b"")
        txn = self.target.begin([ALICE, BOB])
        for _ in range(100):
            txn.write(b"x" * 9999 + b"\n")
        await self.assert_fails(txn.commit(), 451)
        self.assert_nothing_visible(ALICE)

    async def test_spill_write_failure(self) -> None:
        create_maildir(self.mail_dir, ALICE)
        (self.root(ALICE) / "tmp").rmdir()
        (self.root(ALICE) / "tmp").write_bytes(b"")  # the spill file cannot be created
        txn = self.target.begin([ALICE, BOB])
        for _ in range(100):
            txn.write(b"w" * 9999 + b"\n")
        await self.settle()
        txn.write(b"more after the failure\n")
        await self.assert_fails(txn.commit(), 451)
        self.assertEqual(files_in(self.root(ALICE), "new", "cur"), [])
        self.assertFalse((self.root(BOB) / "new").exists())  # never reached
        self.flushLoggedErrors()

    def test_error_mapping(self) -> None:
        full = delivery_error(OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual((full.code, full.reply.enhanced, full.reply.text),
                         (452, "4.3.1", "Insufficient system storage"))
        self.assertEqual(delivery_error(OSError(errno.EDQUOT, "Quota")).code, 452)
        for other in (OSError(errno.EIO, "I/O error"), PermissionError(), RuntimeError()):
            err = delivery_error(other)
            self.assertEqual((err.code, err.reply.enhanced), (451, "4.3.0"))
        mine = ReplyError(554, "5.0.0", "no")
        self.assertIs(delivery_error(mine), mine)

    def test_begin_refuses_unsafe_mailboxes(self) -> None:
        for bad in (MailboxId("..", "x"), MailboxId("example.org", "../../etc"),
                    MailboxId("example.org", ".Sent"), MailboxId("", "x")):
            self.assertRaises(ValueError, self.target.begin, [ALICE, bad])
        self.assertRaises(ValueError, self.target.begin, [])
        self.assertFalse(self.mail_dir.exists())


class AbortTests(DeliveryCase):
    async def test_abort_small_message(self) -> None:
        txn = self.target.begin([ALICE])
        txn.write(MESSAGE)
        txn.abort()
        txn.abort()  # twice is fine
        txn.write(b"ignored after abort")
        await self.settle()
        self.assertEqual(all_files(self.mail_dir) if self.mail_dir.exists() else [], [])

    async def test_abort_spilled_message_removes_temp(self) -> None:
        txn = self.target.begin([ALICE])
        for _ in range(64):
            txn.write(b"y" * 8191 + b"\n")
        txn.abort()
        await self.settle()
        self.assert_nothing_visible(ALICE)

    async def test_abort_during_commit_takes_the_message_back(self) -> None:
        txn = self.target.begin([ALICE, BOB])
        txn.write(MESSAGE)
        d = txn.commit()
        txn.abort()
        await self.assert_fails(d, 451)
        self.assert_nothing_visible(ALICE, BOB)

    async def test_abort_while_spilled_commit_waits(self) -> None:
        txn = self.target.begin([ALICE])
        for _ in range(200):
            txn.write(b"z" * 4095 + b"\n")
        d = txn.commit()
        txn.abort()
        await self.assert_fails(d, 451)
        self.assert_nothing_visible(ALICE)

    async def test_cancel_commit_aborts(self) -> None:
        txn = self.target.begin([ALICE])
        txn.write(MESSAGE)
        d = txn.commit()
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        await self.settle()
        self.assert_nothing_visible(ALICE)

    async def test_abort_after_commit_keeps_the_message(self) -> None:
        txn = self.target.begin([ALICE])
        txn.write(MESSAGE)
        await txn.commit()
        txn.abort()
        await self.settle()
        self.assertEqual(len(files_in(self.root(ALICE), "new")), 1)

    def test_misuse_is_refused(self) -> None:
        txn: MaildirTransaction = self.target.begin([ALICE])
        d = txn.commit()
        self.assertRaises(RuntimeError, txn.write, b"late")
        self.assertRaises(RuntimeError, txn.commit)
        return d  # type: ignore[return-value]


class PlainPoolDeliveryTests(DeliveryTests):
    """The same behaviour with directory fsyncs not coalesced."""

    strategy = "pool-plain"


class BatchingDeliveryTests(DeliveryTests):
    """The same behaviour through the batching executor."""

    strategy = "batch"


class BatchingFailureTests(FailureTests):
    strategy = "batch"


class BatchingAbortTests(AbortTests):
    strategy = "batch"


def test_write_chunks_many_and_empty(tmp_path: Path) -> None:
    """More chunks than one writev takes, empty ones among them: all bytes, in order."""
    from mailserver.store.delivery import _write_chunks

    chunks = [b"%d," % i if i % 7 else b"" for i in range(3000)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        _write_chunks(fd, chunks)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)
