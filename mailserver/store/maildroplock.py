"""The POP3 maildrop lock: one POP3 session per maildrop at a time (RFC 1939 8).

RFC 1939 8: after authentication "the POP3 server then acquires an exclusive-access
lock on the maildrop, as necessary to prevent messages from being modified or removed
before the session enters the UPDATE state". A second login gets `-ERR [IN-USE]`
(RFC 2449 8.1.1, RFC 3206).

The lock is an flock(2) on `<maildir>/pop3.lock`, held by an open file for as long as
the session lives, so it works between the worker processes of one server (and
between hosts sharing the Maildir where the filesystem supports flock) and is released
by the kernel if the process dies. flock locks belong to the open file description, so
two sessions in the same process exclude each other too. Only POP3 takes this lock:
IMAP sessions and deliveries go on beside a POP3 session, as with Dovecot.

The lock file is never unlinked (unlinking a lock file races with a process that has
just opened it). It is not a message: its name has no leading dot, but it lives in the
Maildir root, which no Maildir reader lists as mail.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mailserver.interfaces import MaildropInUse
from mailserver.store import sharedfs

LOCK_NAME = "pop3.lock"


class MaildropLock:
    """An acquired lock; `release` (idempotent) gives it up. Blocking calls: disk thread.

    In cluster mode (store/sharedfs.py) it is a dotlock, `pop3.lock.dotlock`, refreshed
    while the session lives: flock over NFS or sshfs may exclude only this machine's
    sessions. A node that dies leaves it, and a login elsewhere gets [IN-USE] until the
    lock is stale (cluster.lock_timeout seconds without a refresh, judged by its mtime).
    """

    def __init__(self, fd: int, dotlock: sharedfs.DotLock | None = None) -> None:
        self._fd: int | None = fd
        self._dotlock = dotlock

    @classmethod
    def acquire(cls, maildir: Path) -> MaildropLock:
        if sharedfs.shared() is not None:
            dotlock = sharedfs.DotLock(sharedfs.dotlock_path(maildir / LOCK_NAME))
            try:
                dotlock.acquire(wait=False)
            except sharedfs.LockBusy:
                raise MaildropInUse(str(maildir)) from None
            return cls(-1, dotlock)
        fd = os.open(maildir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MaildropInUse(str(maildir)) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if self._dotlock is not None:
            self._dotlock.release()
        elif fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock
