"""What a user's mail takes (QUOTA, RFC 9208), counted as it changes, never by a scan
per check.

Usage lives in the Maildir root as `mailserver-quota`: one line, `OCTETS MESSAGES CRC`
(octets: the sum of the messages' sizes with CRLF line ends, their RFC822.SIZE, in all
folders; zero-padded, so every line has the same length). Every writer of the store
changes it after its own file operation: delivery, APPEND, COPY (MOVE between a user's
folders changes nothing), EXPUNGE, POP3's UPDATE, DELETE of a folder. The change is made
under an exclusive flock on the file itself (processes of a multi-process server share
it) and written over the old line in one pwrite. Readers that take no lock (the RCPT
check on the reactor thread) check the CRC-32 of the numbers: a line caught half
written reads as "no count", never as a wrong one.

When the file is missing (a Maildir from before quotas, or one imported from Dovecot)
or unreadable, the first change or check scans the Maildir once, under the lock, and
writes it: the scan sees the file operation that triggered it, so that change is not
added again. `mailserver doctor` compares the file with a scan.

Not exact under every race: two deliveries checked at the same moment may each fit and
together pass the limit by one message (as Dovecot's quota); a crash between a file
operation and its change leaves the count off until it is deleted (doctor notes it). Neither can grow without bound.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailserver.interfaces import QuotaLimits, QuotaUsage
from mailserver.logs import logger
from mailserver.store import sharedfs
from mailserver.store.names import crlf_size_of

log = logger(__name__)

QUOTA_FILE = "mailserver-quota"


def over(usage: QuotaUsage, limits: QuotaLimits, octets: int, messages: int = 1) -> str | None:
    """The resource (RFC 9208 5: "STORAGE" or "MESSAGE") that adding `messages`
    messages of `octets` would take past its limit, else None. Reaching a limit
    exactly is allowed."""
    if limits.storage is not None and usage.storage + octets > limits.storage:
        return "STORAGE"
    if limits.messages is not None and usage.messages + messages > limits.messages:
        return "MESSAGE"
    return None


def full(usage: QuotaUsage, limits: QuotaLimits) -> bool:
    """No message fits any more (SMTP's 452 4.2.2 at RCPT)."""
    return ((limits.storage is not None and usage.storage >= limits.storage)
            or (limits.messages is not None and usage.messages >= limits.messages))


def peek(root: Path) -> QuotaUsage | None:
    """The counted usage without locking or scanning (cheap enough for the reactor
    thread: one small read); None if there is no count yet (or a write was caught
    half done, which the checksum shows)."""
    try:
        with open(root / QUOTA_FILE, "rb") as f:
            return _parse(f.read(RECORD_SIZE + 1))
    except OSError:
        return None


def usage(root: Path) -> QuotaUsage:
    """The usage, counted once by a scan if there is no count yet."""
    found = peek(root)
    if found is not None:
        return found
    with _locked(root) as fd:
        found = _read(fd)
        if found is None:
            found = scan(root)
            _write(fd, found)
        return found


def change(root: Path, octets: int, messages: int) -> None:
    """Add (or, negative, take away) what a file operation just did. Call it after the
    operation: a missing count is made by a scan that already sees it.

    Never fails the operation it follows (the message is stored or removed already): if
    the count cannot be written, it is dropped, and the next use counts again."""
    if not octets and not messages:
        return
    try:
        with _locked(root) as fd:
            now = _read(fd)
            fresh = scan(root) if now is None else QuotaUsage(
                max(0, now.storage + octets), max(0, now.messages + messages))
            _write(fd, fresh)
    except OSError as e:
        log.warn("{root}: cannot count quota usage ({error}); counting again at next use",
                 root=root, error=e)
        try:
            os.unlink(root / QUOTA_FILE)
        except OSError:
            pass


def forget(root: Path) -> None:
    """Drop the count (the next use scans): for changes the store cannot count."""
    with _locked(root) as fd:
        os.ftruncate(fd, 0)


def scan(root: Path) -> QuotaUsage:
    """Every message of every folder (Maildir++: the root and its `.Name` folders).
    Sizes from the file names' W= field, else read from the file."""
    octets = messages = 0
    folders = [root]
    try:
        folders += [root / n for n in os.listdir(root) if n.startswith(".")
                    and n not in (".", "..") and (root / n / "cur").is_dir()]
    except FileNotFoundError:
        return QuotaUsage()
    for folder in folders:
        for sub in ("new", "cur"):
            n, size = folder_usage(folder / sub)
            messages += n
            octets += size
    return QuotaUsage(octets, messages)


def folder_usage(directory: Path) -> tuple[int, int]:
    """(messages, octets) of one new/ or cur/ directory."""
    count = octets = 0
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    for name in names:
        if name.startswith("."):
            continue
        size = crlf_size_of(name)
        if size is None:
            size = _crlf_size_of_file(directory / name)
            if size is None:
                continue
        count += 1
        octets += size
    return count, octets


def _crlf_size_of_file(path: Path) -> int | None:
    """Size with CRLF line ends of a file whose name does not say (a foreign file)."""
    try:
        with open(path, "rb") as f:
            size = bare = 0
            previous = b""
            while chunk := f.read(1024 * 1024):
                size += len(chunk)
                bare += chunk.count(b"\n") - chunk.count(b"\r\n")
                if previous == b"\r" and chunk.startswith(b"\n"):
                    bare -= 1
                previous = chunk[-1:]
            return size + bare
    except (FileNotFoundError, IsADirectoryError):
        return None


def _record(usage: QuotaUsage) -> bytes:
    numbers = b"%020d %020d" % (usage.storage, usage.messages)
    return numbers + b" %08x\n" % zlib.crc32(numbers)


#: Every record has this length, so a rewrite is one pwrite over the last one.
RECORD_SIZE = len(_record(QuotaUsage()))


def _parse(data: bytes) -> QuotaUsage | None:
    if len(data) != RECORD_SIZE:
        return None
    numbers, _, crc = data[:-1].rpartition(b" ")
    fields = numbers.split()
    if (len(fields) != 2 or not all(f.isdigit() for f in fields)
            or crc != b"%08x" % zlib.crc32(numbers)):
        return None
    return QuotaUsage(int(fields[0]), int(fields[1]))


def _read(fd: int) -> QuotaUsage | None:
    return _parse(os.pread(fd, RECORD_SIZE + 1, 0))


def _write(fd: int, usage: QuotaUsage) -> None:
    """Replace the count (under the lock) in place: one pwrite of a fixed-size record.
    (Writing a new file and renaming it over the old one cost 2 ms a change here: ext4
    flushes a file renamed over another.) Not fsync'd: the count is a cache of the
    Maildir, and a lost update is what doctor finds."""
    record = _record(usage)
    os.pwrite(fd, record, 0)
    if os.fstat(fd).st_size != len(record):
        os.ftruncate(fd, len(record))


@contextmanager
def _locked(root: Path) -> Iterator[int]:
    """The count file (made if missing, empty: no count), flock'ed exclusively; in
    cluster mode opened under its dotlock instead (store/sharedfs.py)."""
    with sharedfs.dotlocked_if_shared(root / QUOTA_FILE) as shared:
        fd = os.open(root / QUOTA_FILE,
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if not shared:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)
