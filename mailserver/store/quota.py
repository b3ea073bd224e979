"""What a user's mail takes (QUOTA, RFC 9208), counted as it changes, never by a scan
per check.

Usage lives in the Maildir root as `mailserver-quota`: one line, `OCTETS MESSAGES`
(octets: the sum of the messages' sizes with CRLF line ends, their RFC822.SIZE, in all
folders). Every writer of the store changes it after its own file operation: delivery,
APPEND, COPY (and MOVE between users' folders: no change), EXPUNGE, POP3's UPDATE,
DELETE of a folder. The change is made under an exclusive flock on
`mailserver-quota.lock` (never unlinked, so processes of a multi-process server share
it), and the new line is written to a temporary file and renamed over the old one, so
that readers (the RCPT check on the reactor thread) read without the lock and always
see a whole line.

When the file is missing (a Maildir from before quotas, or one imported from Dovecot)
or unreadable, the first change or check scans the Maildir once, under the lock, and
writes it: the scan sees the file operation that triggered it, so that change is not
added again. `mailserver doctor` compares the file with a scan.

Not exact under every race: two deliveries checked at the same moment may each fit and
together pass the limit by one message (as Dovecot's quota); a crash between a file
operation and its change leaves the count off until doctor or a deleted file rebuilds
it. Neither can grow without bound.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailserver.interfaces import QuotaLimits, QuotaUsage
from mailserver.logs import logger
from mailserver.store.names import crlf_size_of

log = logger(__name__)

QUOTA_FILE = "mailserver-quota"
LOCK_FILE = "mailserver-quota.lock"


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
    thread: one small read); None if there is no count yet."""
    try:
        with open(root / QUOTA_FILE, "rb") as f:
            return _parse(f.read(64))
    except OSError:
        return None


def usage(root: Path) -> QuotaUsage:
    """The usage, counted once by a scan if there is no count yet."""
    found = peek(root)
    if found is not None:
        return found
    with _locked(root):
        found = peek(root)
        if found is None:
            found = scan(root)
            try:
                _write(root, found)
            except OSError as e:
                log.warn("{root}: cannot write the quota count: {error}", root=root, error=e)
        return found


def change(root: Path, octets: int, messages: int) -> None:
    """Add (or, negative, take away) what a file operation just did. Call it after the
    operation: a missing count is made by a scan that already sees it.

    Never fails the operation it follows (the message is stored or removed already): if
    the count cannot be written, it is dropped, and the next use counts again."""
    if not octets and not messages:
        return
    try:
        with _locked(root):
            now = peek(root)
            fresh = scan(root) if now is None else QuotaUsage(
                max(0, now.storage + octets), max(0, now.messages + messages))
            _write(root, fresh)
    except OSError as e:
        log.warn("{root}: cannot count quota usage ({error}); counting again at next use",
                 root=root, error=e)
        try:
            os.unlink(root / QUOTA_FILE)
        except OSError:
            pass


def forget(root: Path) -> None:
    """Drop the count (the next use scans): for changes the store cannot count."""
    with _locked(root):
        try:
            os.unlink(root / QUOTA_FILE)
        except FileNotFoundError:
            pass


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


def _parse(data: bytes) -> QuotaUsage | None:
    fields = data.split()
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
        return None
    return QuotaUsage(int(fields[0]), int(fields[1]))


def _write(root: Path, usage: QuotaUsage) -> None:
    """Replace the count (under the lock). Not fsync'd: it is a cache of the Maildir,
    and a lost update is what doctor repairs."""
    tmp = root / f"{QUOTA_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, b"%d %d\n" % (usage.storage, usage.messages))
    finally:
        os.close(fd)
    os.rename(tmp, root / QUOTA_FILE)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
