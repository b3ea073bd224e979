"""Durable two-phase delivery into Maildirs: write, then commit; nothing visible before.

One message for N local recipients is written once, to a temporary file in the first
recipient's tmp/, fsync'd, and hard-linked into each recipient's new/ under a fresh
unique name (as Dovecot's LDA does); then the temporary name is removed and every new/
directory is fsync'd. Only then does `commit` fire, and only then does the SMTP session
answer 250 (RFC 5321 section 6.1: once the server has accepted responsibility, "it MUST
NOT lose the message"). Any failure removes every copy already linked, so a 451/452 never
leaves a half-delivered message behind for the client's retry to duplicate.

Threads: `write` and the transaction's state live on the reactor thread; `_MessageFile`
holds the on-disk state and is only ever touched by one disk thread at a time, because
the transaction chains its disk jobs (at most one in flight, see `_busy`).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.core.diskio import DiskExecutor, write_all
from mailserver.errors import ReplyError
from mailserver.interfaces import ILocalDelivery, ILocalTransaction, MailboxId, QuotaLimits
from mailserver.logs import logger
from mailserver.store import quota, sharedfs
from mailserver.store.maildir import (
    FILE_MODE,
    create_maildir,
    mailbox_path,
    size_fields,
    unique_name,
)
from mailserver.store.quotapeek import QuotaPeeks

log = logger(__name__)

#: Bytes a transaction keeps in memory before spilling to a temporary file, so that
#: memory stays bounded per session however large the message (limits.message_size).
SPILL_THRESHOLD = 256 * 1024

_OPEN, _COMMITTING, _DONE, _ABORTED = "open", "committing", "done", "aborted"

#: errnos that mean "the disk (or the user's quota) is full": a 452, which tells the
#: client to retry later without blaming the message (RFC 5321 4.2.2 / RFC 3463 X.3.1).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errnos for which link() cannot work but a copy can: another file system (a mailbox
#: directory mounted elsewhere) or too many links to one inode.
_NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM})


def delivery_error(exc: BaseException) -> ReplyError:
    """The reply a failed delivery gives the client; the cause goes to the log only.

    RFC 5321 4.2.3: 452 "insufficient system storage" and 451 "local error in
    processing" are both transient, so the client keeps the message and retries.
    """
    if isinstance(exc, ReplyError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return ReplyError(452, "4.3.1", "Insufficient system storage")
    return ReplyError(451, "4.3.0", "Requested action aborted: local error in processing")


def describe_error(exc: BaseException) -> str:
    """The log text of a failed delivery: for an OSError its text and the path(s) it
    names. (repr() of an OSError drops the path: "PermissionError(13, 'Permission
    denied')" left the operator guessing which directory to fix.)"""
    if isinstance(exc, OSError) and exc.filename is not None:
        paths = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{type(exc).__name__}: {paths}: {exc.strerror or exc}"
    return repr(exc)


@implementer(ILocalDelivery)
class MaildirDelivery:
    """Local delivery: each transaction ends as one file in each mailbox's new/."""

    def __init__(self, mail_dir: Path, hostname: str, disk: DiskExecutor,
                 spill_threshold: int = SPILL_THRESHOLD,
                 limits_of: Callable[[MailboxId], QuotaLimits] | None = None) -> None:
        self.mail_dir = mail_dir
        self.hostname = hostname
        self.disk = disk
        self.spill_threshold = spill_threshold
        self._peeks: QuotaPeeks | None = None  # made at first use, in cluster mode
        #: Each user's quota (the users file); None: no quotas (tests, tools).
        self.limits_of = limits_of

    def check_quota(self, mailboxes: Sequence[MailboxId]) -> None:
        """At RCPT: ReplyError 452 4.2.2 (RFC 3463 "mailbox full", RFC 5321 4.2.2's
        452: try again later, the user may make room) for a mailbox already full. Reads
        the count without lock or scan (store/quota.py), so it may run on the reactor.

        Not so in cluster mode (store/sharedfs.py): there the count is on the network
        file system, whose stall must not stall the reactor, so RCPT answers from the
        count last read in a disk thread (store/quotapeek.py; at most 2 s old). Skipping
        the check would leave it to the commit, whose 552 5.2.2 after DATA senders take
        as a permanent failure where RCPT's 452 has them retry."""
        for mailbox in mailboxes:
            limits = self.limits_of(mailbox) if self.limits_of else QuotaLimits()
            root = mailbox_path(self.mail_dir, mailbox)
            usage = (self._quota_peeks().peek(root) if sharedfs.shared() is not None
                     else quota.peek(root))
            if usage is not None and quota.full(usage, limits):
                raise ReplyError(452, "4.2.2", "Error: mailbox full")

    def _quota_peeks(self) -> QuotaPeeks:
        if self._peeks is None:
            self._peeks = QuotaPeeks(self.disk.reads.run)
        return self._peeks

    def begin(self, mailboxes: Sequence[MailboxId]) -> MaildirTransaction:
        """Start a transaction; one copy per distinct mailbox (duplicates collapse).

        Raises ValueError at once for an unsafe mailbox (path traversal): that is a bug
        in whoever built the MailboxId, not something to discover in a disk thread.
        """
        unique = list(dict.fromkeys(mailboxes))
        if not unique:
            raise ValueError("a delivery needs at least one mailbox")
        file = _MessageFile(self.mail_dir, tuple(unique), self.hostname)
        if self.limits_of is not None:
            file.limits = [self.limits_of(m) for m in unique]
        return MaildirTransaction(file, self.disk, self.spill_threshold)


@implementer(ILocalTransaction)
class MaildirTransaction:
    """One message on its way; reactor-thread state machine open -> committing -> done.

    Small messages stay in `_chunks`. Past the spill threshold, data goes to `_pending`
    and a disk thread appends it to the temporary file, one job at a time in order;
    whatever arrives while a job runs is joined into the next job.
    """

    def __init__(self, file: _MessageFile, disk: DiskExecutor, spill_threshold: int) -> None:
        self._file = file
        self._disk = disk
        self._threshold = spill_threshold
        self._state = _OPEN
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._lf_count = 0
        self._spilled = False
        self._pending: list[bytes] = []
        self._busy = False
        self._error: BaseException | None = None
        self._idle_waiters: list[Callable[[], None]] = []
        self._result: Deferred[None] | None = None

    @property
    def size(self) -> int:
        """Bytes written so far (LF line ends): the S= of the stored file."""
        return self._size

    @property
    def stored(self) -> list[tuple[MailboxId, str]]:
        """After commit: each mailbox and the path of its copy in new/ (the "received"
        event's stored_as and the raw message a webhook may carry)."""
        if self._state != _DONE:
            return []
        return list(zip(self._file.mailboxes, self._file.visible, strict=False))

    # ------------------------------------------------------------------ write

    def write(self, data: bytes) -> None:
        """Append data; never blocks (memory, or a disk thread past the threshold)."""
        if self._state == _ABORTED:
            return
        if self._state != _OPEN:
            raise RuntimeError(f"write() on a {self._state} delivery transaction")
        self._size += len(data)
        self._lf_count += data.count(b"\n")
        if self._error is not None:
            return  # the spill already failed; commit() reports it
        if not self._spilled:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > self._threshold:
                self._spilled = True
                self._pending, self._chunks, self._buffered = self._chunks, [], 0
                self._kick()
            return
        self._pending.append(data)
        self._kick()

    def _kick(self) -> None:
        """Hand everything pending to a disk thread, unless a job is already running."""
        if self._busy or not self._pending:
            return
        self._busy = True
        data = b"".join(self._pending)
        self._pending.clear()
        d = self._disk.run(self._file.append, data)
        d.addCallbacks(self._appended, self._append_failed)

    def _appended(self, _: object) -> None:
        self._busy = False
        if self._state == _ABORTED:
            self._pending.clear()
        self._kick()
        if not self._busy:
            self._run_idle_waiters()

    def _append_failed(self, failure: Failure) -> None:
        self._busy = False
        self._pending.clear()
        self._error = failure.value
        log.error("spilling a message for {mailboxes} failed: {error}",
                  mailboxes=self._file.addresses, error=str(failure.value))
        self._run_idle_waiters()

    def _when_idle(self, fn: Callable[[], None]) -> None:
        """Run `fn` once no disk job of this transaction is running or pending."""
        if self._busy:
            self._idle_waiters.append(fn)
        else:
            fn()

    def _run_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fn in waiters:
            fn()

    # ------------------------------------------------------------------ commit

    def commit(self) -> Deferred[None]:
        """Make the message durable and visible in every new/; see ILocalTransaction.

        Cancelling the returned Deferred aborts the transaction.
        """
        if self._state != _OPEN:
            raise RuntimeError(f"commit() on a {self._state} delivery transaction")
        self._state = _COMMITTING
        self._result = Deferred(canceller=lambda _: self.abort())
        self._when_idle(self._start_commit)
        return self._result

    def _start_commit(self) -> None:
        if self._state == _ABORTED:
            return  # abort() already discards and reports
        if self._error is not None:
            self._discard_then_fail(self._error, logged=True)
            return
        chunks, self._chunks = self._chunks, []
        stage = functools.partial(self._file.stage, chunks, self._size,
                                  self._size + self._lf_count)
        self._busy = True
        d = self._disk.commit(stage)
        d.addCallbacks(self._committed, self._commit_failed)

    def _committed(self, _: object) -> None:
        self._busy = False
        if self._state == _ABORTED:
            # Durable already, but nobody heard the 250: take it back, so the client's
            # retry does not deliver a duplicate.
            self._discard_then_fail(_aborted(), logged=True)
            return
        self._state = _DONE
        log.debug("delivered {size} bytes to {mailboxes}", size=self._size,
                  mailboxes=self._file.addresses)
        self._fire(None)

    def _commit_failed(self, failure: Failure) -> None:
        self._busy = False
        self._discard_then_fail(failure.value or RuntimeError("unknown"), logged=False)

    def _discard_then_fail(self, error: BaseException, logged: bool) -> None:
        """Remove every copy and temporary file, then errback the commit Deferred."""
        if not logged:
            log.error("delivery to {mailboxes} failed: {error}",
                      mailboxes=self._file.addresses, error=describe_error(error))
        self._state = _ABORTED if self._state == _ABORTED else _DONE
        reply = delivery_error(error)
        d = self._disk.run(self._file.rollback)
        d.addErrback(lambda f: log.failure("rollback failed", f))
        d.addCallback(lambda _: self._fire(reply))

    def _fire(self, error: ReplyError | None) -> None:
        result, self._result = self._result, None
        if result is None or result.called:  # cancelled: the caller has moved on
            return
        if error is None:
            result.callback(None)
        else:
            result.errback(error)

    # ------------------------------------------------------------------ abort

    def abort(self) -> None:
        """Drop the message; nothing becomes visible. Safe at any point.

        During a commit, the commit is allowed to finish its disk work and is then rolled
        back, and its Deferred errbacks (451). After commit has fired, this does nothing.
        """
        if self._state in (_DONE, _ABORTED):
            return
        was_committing = self._state == _COMMITTING
        self._state = _ABORTED
        self._chunks.clear()
        self._pending.clear()
        if was_committing and self._busy and not self._idle_waiters:
            return  # the disk commit is running: _committed / _commit_failed clean up
        self._idle_waiters.clear()
        self._when_idle(lambda: self._discard_then_fail(_aborted(), logged=True))


def _aborted() -> ReplyError:
    return ReplyError(451, "4.3.0", "Requested action aborted: transaction aborted")


class _MessageFile:
    """The on-disk side of one transaction; its methods run in a disk thread.

    Tracks every name it creates, so `rollback` can remove exactly those. Paths are
    plain strings, computed once: pathlib costs more than the syscalls it wraps here,
    and that Python time holds the GIL every other disk thread and the reactor need.
    """

    def __init__(self, mail_dir: Path, mailboxes: tuple[MailboxId, ...], host: str) -> None:
        self.mail_dir = mail_dir
        self.mailboxes = mailboxes
        self.roots = [os.fspath(mailbox_path(mail_dir, m)) for m in mailboxes]
        #: Each mailbox's Maildir root, whose quota counts the copy (`roots` may name a
        #: folder in it: senderauth/junk.py).
        self.quota_roots = [Path(root) for root in self.roots]
        self.host = host
        self.fd: int | None = None
        self.base = ""
        self.temp: str | None = None
        self.copy_temps: list[str] = []
        self.visible: list[str] = []
        #: Each mailbox's quota, and the (root, octets) counted for each visible copy.
        self.limits: list[QuotaLimits] = []
        self.counted: list[tuple[Path, int]] = []

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.mailboxes]

    def _ensure(self, index: int) -> str:
        """The Maildir of mailboxes[index], created on first delivery."""
        root = self.roots[index]
        if not os.path.isdir(root + "/new"):
            create_maildir(self.mail_dir, self.mailboxes[index])
        return root

    def _open(self) -> int:
        """Create the temporary file in the first mailbox's tmp/ (Maildir spec step 2).

        tmp/ of a recipient is on the same file system as its new/, so link() works for
        it, and usually for every other mailbox under mail_dir too.
        """
        if self.fd is None:
            self.base = unique_name(host=self.host)
            self.temp = f"{self._ensure(0)}/tmp/{self.base}"
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        return self.fd

    def append(self, data: bytes) -> None:
        write_all(self._open(), data)

    def stage(self, chunks: list[bytes], size: int, crlf_size: int) -> list[str]:
        """Write, fsync, link into every new/; return the new/ directories to fsync.

        Maildir spec delivery: create tmp/unique, write it, fsync it, link() it to
        new/unique; we add Dovecot's one-temp-many-links and an fsync of new/ (done by
        the caller, which may group it with other commits' fsyncs).
        """
        roots = [self._ensure(i) for i in range(len(self.roots))]
        for quota_root, limits in zip(self.quota_roots, self.limits, strict=False):
            if limits == QuotaLimits():
                continue
            # RFC 5321 4.2.3 / RFC 3463 5.2.2: the message will not fit, which waiting
            # does not change; nothing is placed for any recipient.
            if quota.over(quota.usage(quota_root), limits, crlf_size) is not None:
                raise ReplyError(552, "5.2.2", "Error: mailbox full; message too large "
                                 "for the recipient's quota")
        fd = self._open()
        _write_chunks(fd, chunks)
        os.fsync(fd)
        self.fd = None
        os.close(fd)
        # The Maildir spec keeps the tmp/ name in new/; the sizes are appended. Every
        # recipient but the last gets a hard link, the last the temp file itself by
        # rename (one directory operation fewer than link + unlink).
        name = self.base + size_fields(size, crlf_size)
        for i, root in enumerate(roots):
            self._place(root, f"{root}/new/{name}", last=i == len(roots) - 1)
            quota.change(self.quota_roots[i], crlf_size, 1)
            self.counted.append((self.quota_roots[i], crlf_size))
        return [root + "/new" for root in roots]

    def _place(self, root: str, target: str, last: bool) -> None:
        """Link (or, for the last mailbox, rename) the temporary file to `target`;
        copy when links cannot work."""
        temp = self.temp
        assert temp is not None
        try:
            if last:
                os.rename(temp, target)
                self.temp = None
            else:
                os.link(temp, target)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            self._copy_to(root, target)
            if last:
                self.temp = None
                os.unlink(temp)
        self.visible.append(target)

    def _copy_to(self, root: str, target: str) -> None:
        """Fallback for EXDEV/EMLINK: a full copy in the recipient's own tmp/, fsync'd."""
        assert self.temp is not None
        copy = f"{root}/tmp/{unique_name(host=self.host)}"
        self.copy_temps.append(copy)
        out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with open(self.temp, "rb") as src:
                while block := src.read(1 << 20):
                    write_all(out, block)
            os.fsync(out)
        finally:
            os.close(out)
        os.link(copy, target)
        os.unlink(copy)
        self.copy_temps.remove(copy)

    def rollback(self) -> None:
        """Remove every copy made visible and every temporary file; best effort each.

        The unlinks from new/ are not fsync'd: should a crash undo one, the client got
        a 4xx and retries, and a duplicate beats a lost message.
        """
        if self.fd is not None:
            fd, self.fd = self.fd, None
            _quietly(os.close, fd)
        for path in [*self.visible, *self.copy_temps, *([self.temp] if self.temp else [])]:
            _quietly(os.unlink, path)
        for quota_root, octets in self.counted:
            _quietly(quota.change, quota_root, -octets, -1)
        self.counted.clear()
        self.visible.clear()
        self.copy_temps.clear()
        self.temp = None


def _write_chunks(fd: int, chunks: list[bytes]) -> None:
    """All chunks with as few syscalls as possible: one writev for a whole small message
    (trace headers + body), falling back to single writes after a short write."""
    pending = [c for c in chunks if c]
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while pending and written >= len(pending[0]):
            written -= len(pending.pop(0))
        if pending and written:
            pending[0] = pending[0][written:]


_IOV_MAX = 1024  # POSIX minimum of IOV_MAX is 16; Linux allows 1024


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("cleanup step {step} failed: {error}", step=fn.__name__, error=str(e))
