"""IMaildrop: the POP3 snapshot of one user's INBOX Maildir (RFC 1939 8), and its lock.

Everything here is blocking file work and runs in a disk thread; the POP3 session
calls it through the context's DiskExecutor and never touches files itself (it knows
only interfaces.IMaildrop, opened by opener.py).

- The snapshot lists new/ and cur/ once and never again in the session: mail delivered
  meanwhile shows up at the next login (RFC 1939 8: "the maildrop ... is locked"; our
  lock is the [IN-USE] lock in maildroplock.py, and the snapshot gives the same view).
- Sizes come from the W= field of the file name (the size with CRLF line ends, which is
  what RETR sends before dot-stuffing, as Dovecot counts it), so login, STAT, LIST and
  UIDL on 10,000 messages open no message file. Foreign names without W= are measured
  (stat, and a count of LFs).
- The UIDL is the Maildir base name (before `,S=` and `:2,`): stable when flags change
  and the same in every session, POP3 or IMAP (RFC 1939 7: 1-70 characters in
  0x21-0x7E; a base name that does not fit is replaced by a hash of it, just as stable).
- With `pop3.uidl_format` set (uidlformat.py: Dovecot's pop3_uidl_format, e.g.
  "%08Xu%08Xv"), the UIDL is built from the message's IMAP UID and the folder's
  UIDVALIDITY instead, so clients moving from Dovecot keep the UIDLs they hold; the
  UID list is read (and new files numbered) in the snapshot, in the disk thread.
- A UIDL Dovecot saved for a message (the `P` field of its dovecot-uidlist record) is
  answered instead, whatever the format, as Dovecot does (uidlformat.saved_uidls).
- Files renamed by another session (IMAP changing flags) are found again by base name.
- Retrieved messages get the Seen flag (a rename into cur/ with `:2,...S`) when the
  session ends, in one batch, as Dovecot does: one rename per RETR in the middle of a
  pipelined download would cost a journal write per message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from pathlib import Path

from zope.interface import implementer

from mailserver.interfaces import IMaildrop, MailboxId, MessageGone
from mailserver.logs import logger
from mailserver.store.maildir import ensure_maildir, fsync_dir
from mailserver.store.maildroplock import MaildropLock
from mailserver.store.names import base_of, crlf_size_of, flag_letters, order_key, with_flags
from mailserver.store.uidlformat import UidlFormat, apply_saved

log = logger(__name__)

#: RFC 1939 7 (UIDL): "unique-id ... consists of one to 70 characters in the range of
#: 0x21 to 0x7E".
MAX_UIDL = 70
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,70}\Z")


@dataclass(slots=True)
class Message:
    """One message of the snapshot; `name` follows renames we make (Seen flag)."""

    subdir: str  # "new" or "cur"
    name: str
    base: str
    size: int  # octets with CRLF line ends, before dot-stuffing
    uidl: str
    deleted: bool = False
    order: int = 0  # delivery order (snapshot sorting)


def uidl_for(base: str) -> str:
    """RFC 1939 7: the base name when it fits, else a stable hash of it."""
    if _UIDL_OK.match(base):
        return base
    return "H" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _measure(path: str) -> int:
    """CRLF size of a file whose name does not carry W=: read it once."""
    size = 0
    newlines = 0
    last = b""  # the octet before this chunk: a CRLF may straddle two reads
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            newlines += chunk.count(b"\n") - chunk.count(b"\r\n")
            if last == b"\r" and chunk.startswith(b"\n"):
                newlines -= 1
            last = chunk[-1:]
    return size + newlines


#: Parsed names kept per process. What a name says never changes, so the cache needs
#: no invalidation; it makes a login to a 100,000-message maildrop a directory listing
#: and dictionary lookups (measured: ~3x faster than parsing, see docs/pop3.md). Bounded:
#: about 250 bytes an entry, so at most ~30 MiB.
PARSE_CACHE_SIZE = 131_072


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_name(name: str) -> tuple[str, int | None, str, int]:
    """base name, CRLF size (None: not in the name), UIDL, delivery order."""
    base = base_of(name)
    return base, crlf_size_of(name), uidl_for(base), order_key(base)


def snapshot(maildir: Path, uidl_format: UidlFormat | None = None) -> list[Message]:
    """The INBOX's messages in delivery order (oldest first = message 1).

    Parsing the names is most of the login time on a 100,000-message maildrop, hence
    the cache of _parse_name. `uidl_format`: UIDLs in that format (else base names).
    """
    found: list[Message] = []
    for subdir in ("new", "cur"):
        directory = os.path.join(maildir, subdir)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            base, size, uidl, order = _parse_name(name)
            if size is None:
                try:
                    path = os.path.join(directory, name)
                    if not os.path.isfile(path):
                        continue
                    size = _measure(path)
                except OSError:
                    continue  # gone while we looked: not part of the snapshot
            found.append(Message(subdir, name, base, size, uidl, False, order))
    found.sort(key=attrgetter("order"))  # stable: foreign names keep listing order
    if uidl_format is not None:
        uidl_format.apply(maildir, found, uidl_for)
    apply_saved(maildir, found, uidl_for)  # Dovecot's saved UIDLs win (uidlformat.py)
    return found


class Finder:
    """Finds messages that another session renamed (flag changes) by base name.

    The listing of new/ and cur/ is made on the first miss and kept until a miss in it
    (`fresh`), so a run over many renamed messages costs one listing, not one each.
    """

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.root = os.fspath(maildir)
        self._where: dict[str, tuple[str, str]] | None = None

    def locate(self, message: Message) -> str:
        """The current path of `message` (updating its subdir and name if renamed)."""
        path = os.path.join(self.maildir, message.subdir, message.name)
        if os.path.exists(path):
            return path
        return self.relocate(message)

    def relocate(self, message: Message, fresh: bool = False) -> str:
        """Look `message` up by base name; MessageGone when it is not there."""
        if self._where is None or fresh:
            self._where = {}
            for subdir in ("new", "cur"):
                try:
                    names = os.listdir(os.path.join(self.maildir, subdir))
                except FileNotFoundError:
                    continue
                for name in names:
                    self._where[_parse_name(name)[0]] = (subdir, name)
        found = self._where.get(message.base)
        if found is None:
            raise MessageGone(message.base)
        message.subdir, message.name = found
        return os.path.join(self.maildir, *found)


#: The largest single read of a message file; a bigger file is read on in chunks.
MAX_FIRST_READ = 64 * 1024 * 1024
#: O_CLOEXEC: a worker process forked meanwhile must not inherit the descriptor.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _read_file(path: str, hint: int) -> bytes:
    """The whole file, in as few system calls as possible: open, read, close.

    Measured (strace, RETR-all): `open(path, "rb").read()` made 9 system calls per
    message (fstat twice, an isatty ioctl, two lseeks, a second read for EOF), each
    one a GIL release that the reactor thread then had to win back. `hint` is the CRLF
    size from the name, never smaller than the stored LF size, so one read of hint + 1
    octets that comes back short has reached the end of the (regular) file.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        # Capped: a foreign name claiming W=10**12 must not make us allocate that.
        want = min(hint, MAX_FIRST_READ) + 1
        data = os.read(fd, want)
        if len(data) < want:
            return data
        chunks = [data]  # the name lied about the size (a foreign file): read on
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read(finder: Finder, message: Message) -> bytes:
    """The stored bytes; a file renamed meanwhile (flags) is looked up by base name."""
    path = f"{finder.root}/{message.subdir}/{message.name}"  # os.path.join: 1 us more
    for attempt in range(3):
        try:
            return _read_file(path, message.size)
        except FileNotFoundError:
            # MessageGone when it is really gone; a second miss lists the dirs again.
            path = finder.relocate(message, fresh=attempt > 0)
    raise MessageGone(message.base)


def _add_seen(finder: Finder, message: Message) -> None:
    """Rename one message into cur/ with S added to its flags.

    The rename is tried straight away (no stat first: at QUIT after a download this
    runs once per message); only a miss looks the file up again by base name.
    """
    for attempt in range(3):
        flags = flag_letters(message.name)
        if message.subdir == "cur" and "S" in flags:
            return  # already seen (when we listed it, or renamed so by IMAP meanwhile)
        new_name = with_flags(message.name, flags + "S")
        try:
            os.rename(f"{finder.root}/{message.subdir}/{message.name}",
                      f"{finder.root}/cur/{new_name}")
        except FileNotFoundError:
            try:
                finder.relocate(message, fresh=attempt > 0)
            except MessageGone:
                return  # expunged meanwhile: nothing to mark
            continue
        except OSError as e:
            # EACCES, EROFS, ENOSPC...: the flag is our extra, not RFC 1939's; it must
            # not stop the UPDATE's deletions (pop3.maildrop.update runs this first).
            log.warn("POP3 could not set Seen on {name}: {error}", name=message.name,
                     error=e.strerror)
            return
        message.subdir, message.name = "cur", new_name
        return


def _expunge(maildir: Path, messages: Iterable[Message]) -> int:
    """IMaildrop.expunge, for the snapshot's messages."""
    failed = 0
    touched: set[str] = set()
    finder = Finder(maildir)
    for message in messages:
        for attempt in range(3):  # renamed between lookup and unlink: look again
            try:
                path = finder.locate(message) if attempt == 0 else \
                    finder.relocate(message, fresh=True)
                os.unlink(path)
                touched.add(message.subdir)
                break
            except MessageGone:
                break  # already gone: that counts as removed
            except FileNotFoundError:
                continue
            except OSError:
                failed += 1
                break
    for subdir in touched:  # make the removals durable before +OK
        try:
            fsync_dir(os.path.join(maildir, subdir))
        except OSError:
            pass
    return failed


@implementer(IMaildrop)
class Maildrop:
    """The locked snapshot of one INBOX (IMaildrop).

    The Finder's listing of new/ and cur/ is made on the first file found renamed and
    kept (refreshed on a miss in it): a download of many messages IMAP has flagged
    meanwhile costs one listing, not one per message. It is at most as big as the
    snapshot.
    """

    def __init__(self, maildir: Path, lock: MaildropLock, messages: list[Message]) -> None:
        self.maildir = maildir
        self.messages = messages
        self._lock = lock
        self._finder = Finder(maildir)

    def read(self, number: int) -> bytes:
        return _read(self._finder, self.messages[number - 1])

    def mark_seen(self, numbers: Iterable[int]) -> None:
        """Maildir spec: a message seen by a client moves from new/ to cur/ and gains
        the `:2,` info; flags stay sorted and existing ones are kept. Another session
        may rename the file at the same moment: a rename that finds it gone looks it up
        again by base name, and a message expunged meanwhile is skipped."""
        for n in numbers:
            _add_seen(self._finder, self.messages[n - 1])

    def expunge(self, numbers: Iterable[int]) -> int:
        return _expunge(self.maildir, [self.messages[n - 1] for n in numbers])

    def close(self) -> None:
        self._lock.release()


def open_maildrop(mail_dir: Path, mailbox: MailboxId,
                  uidl_format: UidlFormat | None = None) -> Maildrop:
    """The Maildir (created if new), its lock (MaildropInUse), and the snapshot."""
    maildir = ensure_maildir(mail_dir, mailbox)
    return open_maildir(maildir, uidl_format)


def open_maildir(maildir: Path, uidl_format: UidlFormat | None = None) -> Maildrop:
    """The lock and the snapshot of an existing Maildir (MaildropInUse if locked)."""
    lock = MaildropLock.acquire(maildir)
    try:
        return Maildrop(maildir, lock, snapshot(maildir, uidl_format))
    except BaseException:
        lock.release()
        raise
