"""A POP3 maildrop: the snapshot of one user's INBOX Maildir taken at login (RFC 1939 8).

Everything here is blocking file work and runs in a disk thread; the session calls it
through the context's DiskExecutor and never touches files itself.

- The snapshot lists new/ and cur/ once and never again in the session: mail delivered
  meanwhile shows up at the next login (RFC 1939 8: "the maildrop ... is locked"; our
  lock is the [IN-USE] lock in lock.py, and the snapshot gives the same view).
- Sizes come from the W= field of the file name (the size with CRLF line ends, which is
  what RETR sends before dot-stuffing, as Dovecot counts it), so login, STAT, LIST and
  UIDL on 10,000 messages open no message file. Foreign names without W= are measured
  (stat, and a count of LFs).
- The UIDL is the Maildir base name (before `,S=` and `:2,`): stable when flags change
  and the same in every session, POP3 or IMAP (RFC 1939 7: 1-70 characters in
  0x21-0x7E; a base name that does not fit is replaced by a hash of it, just as stable).
- Files renamed by another session (IMAP changing flags) are found again by base name.
- Retrieved messages get the Seen flag (a rename into cur/ with `:2,...S`) when the
  session ends, in one batch, as Dovecot does: one rename per RETR in the middle of a
  pipelined download would cost a journal write per message. A dropped connection
  still marks them (the client did receive them); only deletion needs QUIT.
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

from mailserver.logs import logger
from mailserver.store.maildir import with_flags

log = logger(__name__)

#: RFC 1939 7 (UIDL): "unique-id ... consists of one to 70 characters in the range of
#: 0x21 to 0x7E".
MAX_UIDL = 70
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,70}\Z")


class MessageGone(Exception):
    """The message file no longer exists (expunged by another session)."""


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


def _order_key(base: str) -> int:
    """Delivery order from a base name `<secs>.M<usecs>P<pid>Q<n>R...`, as one int
    (time in microseconds, then the per-process counter, then the pid), so the sort of
    100,000 names compares ints, not tuples. Foreign names sort by their seconds."""
    secs, _, rest = base.partition(".")
    if not secs.isdigit():
        return 0
    key = int(secs) * 1_000_000
    if rest.startswith("M"):
        p = rest.find("P")
        q = rest.find("Q", p)
        r = rest.find("R", q)
        usecs, pid, counter = rest[1:p], rest[p + 1:q], rest[q + 1:r]
        if p > 1 and q > p and r > q and usecs.isdigit() and pid.isdigit() \
                and counter.isdigit():
            return (((key + int(usecs)) << 32) + int(counter)) << 32 | int(pid)
        if p > 1 and usecs.isdigit():
            key += int(usecs)
    return key << 64


def _crlf_size_field(fields: str) -> int | None:
    """The W= value of `S=...,W=...` (the part of a name between the base and ':')."""
    for field in fields.split(","):
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


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
    base, _, fields = name.partition(":")[0].partition(",")
    size = _crlf_size_field(fields) if fields else None
    return base, size, uidl_for(base), _order_key(base)


def snapshot(maildir: Path) -> list[Message]:
    """The INBOX's messages in delivery order (oldest first = message 1).

    Parses names with string methods (not store.maildir.parse_name's regex): on a
    100,000-message maildrop this is most of the login time.
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
    return found


class Finder:
    """Finds messages that another session renamed (flag changes) by base name.

    The listing of new/ and cur/ is made once per disk job, on the first miss, so a job
    over many renamed messages costs one listing, not one per message.
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


def to_wire(data: bytes) -> bytes:
    """Stored bytes -> what RETR/TOP send: CRLF line ends, dot-stuffed (RFC 1939 3),
    ending in CRLF, followed by the terminating ".CRLF"."""
    return wire_body(data) + b".\r\n"


def wire_body(data: bytes) -> bytes:
    """Stored bytes -> CRLF line ends, dot-stuffed (RFC 1939 3), ending in CRLF; the
    terminating ".CRLF" is the caller's (read_replies joins the status line, this and
    the terminator into one buffer: one copy, not two).

    Whole-message bytes operations, not a loop over lines: this is the hot path of a
    download (twisted.mail's line-by-line writes made it 100x slower). Measured on the
    bench's 5 KiB messages: `replace(b"\n", ...)` is memchr-driven and cheap, while any
    search for the two-octet b"\n." walks every byte, and `replace` walks twice (it
    counts first). So the stuffing is done on the LF form (fewer octets) with one
    split/join pass instead of replace (with no dotted line the join returns `data`
    itself, and a separate `b"\n." in data` test would cost as much as the split):
    ~14 -> ~8 us a message.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")  # a foreign file with CRLF: normalise first
    data = b"\n..".join(data.split(b"\n."))  # one part (no dotted line): data itself
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def top_part(data: bytes, lines: int) -> bytes:
    """RFC 1939 7 TOP: the header, the blank line, and the first `lines` body lines."""
    if data.startswith(b"\n"):
        end = 0  # no header at all
    else:
        end = data.find(b"\n\n")
        if end < 0:
            return data  # no body: all of it is header
        end += 1
    body_start = end + 1
    position = body_start
    for _ in range(lines):
        nl = data.find(b"\n", position)
        if nl < 0:
            return data
        position = nl + 1
    return data[:position]


def read_wire(maildir: Path, messages: list[Message]) -> list[bytes | None]:
    """RETR: the wire bytes of each message (None for one expunged meanwhile).

    Several messages in one disk job: the session passes the RETR commands a client has
    pipelined, so a download costs one thread hand-off per batch, not per message.
    """
    out: list[bytes | None] = []
    finder = Finder(maildir)
    for message in messages:
        try:
            out.append(to_wire(_read(finder, message)))
        except MessageGone:
            out.append(None)
    return out


#: The RETR reply for a message file that exists but cannot be read.
UNREADABLE = b"-ERR [SYS/TEMP] Cannot read this message; try again later.\r\n"


def read_replies(maildir: Path, messages: list[Message]) -> list[bytes | None]:
    """RETR, as the read-ahead asks for it: each message's whole reply, status line,
    wire bytes and terminator in one buffer (None for one expunged meanwhile).

    Built here, in the disk thread, so that the reactor thread, which serialises every
    session, only hands one ready buffer to one transport.write per RETR.
    """
    out: list[bytes | None] = []
    finder = Finder(maildir)
    for message in messages:
        try:
            body = wire_body(_read(finder, message))
        except MessageGone:
            out.append(None)
            continue
        except OSError as e:
            # EACCES, EISDIR, EIO: this message's RETR fails, not the whole batch (an
            # exception here would fail every RETR read with it, at each retry).
            log.warn("POP3 cannot read {name}: {error}", name=message.name,
                     error=e.strerror)
            out.append(UNREADABLE)
            continue
        out.append(b"".join((b"+OK %d octets\r\n" % message.size, body, b".\r\n")))
    return out


def top(maildir: Path, message: Message, lines: int) -> bytes:
    """TOP: never changes flags (RFC 1939 does not make TOP a retrieval)."""
    data = _read(Finder(maildir), message)
    if b"\r" in data:
        # A foreign file with CRLF: top_part looks for the LF form of the blank line.
        data = data.replace(b"\r\n", b"\n")
    return to_wire(top_part(data, lines))


def mark_seen(maildir: Path, messages: Iterable[Message]) -> None:
    """Give retrieved messages the Seen flag, so IMAP shows them as read.

    Maildir spec: a message seen by a client moves from new/ to cur/ and gains the
    `:2,` info; flags stay sorted and existing ones are kept. Another session may rename
    the file at the same moment: a rename that finds it gone looks it up again by base
    name, and a message expunged meanwhile is skipped.
    """
    finder = Finder(maildir)
    for message in messages:
        _add_seen(finder, message)


def _add_seen(finder: Finder, message: Message) -> None:
    """Rename one message into cur/ with S added to its flags.

    The rename is tried straight away (no stat first: at QUIT after a download this
    runs once per message); only a miss looks the file up again by base name.
    """
    for attempt in range(3):
        info = message.name.partition(":")[2]
        flags = info[2:] if info.startswith("2,") else ""
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
            # not stop the UPDATE's deletions (maildrop.update runs this first).
            log.warn("POP3 could not set Seen on {name}: {error}", name=message.name,
                     error=e.strerror)
            return
        message.subdir, message.name = "cur", new_name
        return


def expunge(maildir: Path, messages: Iterable[Message]) -> int:
    """RFC 1939 6 (UPDATE): remove the messages marked deleted; the number that could
    not be removed (a message already gone counts as removed)."""
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
            fd = os.open(os.path.join(maildir, subdir), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    return failed


def update(maildir: Path, retrieved: Iterable[Message], deleted: list[Message]) -> int:
    """QUIT in TRANSACTION (RFC 1939 6): the Seen flags of what was retrieved and not
    deleted, then the deletions; returns the number of messages not removed."""
    doomed = {id(m) for m in deleted}
    mark_seen(maildir, (m for m in retrieved if id(m) not in doomed))
    return expunge(maildir, deleted)
