"""Persistent IMAP UIDs of one Maildir folder: UIDVALIDITY, next UID, base name -> UID.

Maildir has no UIDs, so each folder keeps `mailserver-uidlist` (the role of Dovecot's
dovecot-uidlist). It is NOT a cache: losing it means new UIDs under a new UIDVALIDITY
(RFC 3501 2.3.1.1: UIDs must never be reused with the same UIDVALIDITY).

Format (text, one record a line):

    mailserver-uidlist 1 V<uidvalidity> N<next uid>
    <uid> <base name>
    ...

New UIDs are appended (one write, fdatasync'd) under an exclusive flock() of
`mailserver-uidlist.lock`, which excludes other threads and other processes alike
(flock locks belong to the open file description). Readers need no lock: they read
whole lines only, and keep their place (inode, offset) so a refresh reads just the new
tail. A rewrite (compaction, dropping expunged names) goes through write-temp-and-
rename, which readers notice as a new inode. Whoever assigns re-reads the tail under the
lock first, so two processes never give one UID twice, nor two UIDs to one name.
The next UID is max(N, last UID + 1): UIDs are only ever appended in ascending order.

UIDVALIDITY comes from `mailserver-uidvalidity` in the user's root, a counter that is
max(now, last + 1): time-based as RFC 3501 suggests, but a folder deleted and created
again within a second still gets a new value.

A folder Dovecot served (a `dovecot-uidlist` and no list of ours) is taken over when
the list is first created: its UIDVALIDITY, next UID and every UID -> name record are
written into our list (store/dovecot.py reads and checks Dovecot's file, which stays
as it is), so IMAP clients see the same UIDs. Files Dovecot never listed get UIDs
from its next UID on, like any new file. This happens under the lock that guards
every creation of the list, so one process takes over and the others read its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailserver.logs import logger
from mailserver.store import sharedfs
from mailserver.store.dovecot import DOVECOT_UIDLIST, DovecotFormatError, read_uidlist

log = logger(__name__)

UIDLIST_FILE = "mailserver-uidlist"
LOCK_FILE = "mailserver-uidlist.lock"
VALIDITY_FILE = "mailserver-uidvalidity"
_MAGIC = b"mailserver-uidlist 1"
_RECORD = re.compile(r"^([0-9]{1,10}) ([^ \n]+)$", re.M)
#: UIDs are 32-bit (RFC 3501 9: nz-number); past this the folder needs a new UIDVALIDITY.
MAX_UID = 2**32 - 1


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock() on `path` (created if missing) for the block; in
    cluster mode a dotlock beside it instead (store/sharedfs.py)."""
    with sharedfs.exclusive(path):
        yield


def allocate_validity(root: Path, floor: int = 0) -> int:
    """A fresh UIDVALIDITY for a folder of the user at `root` (never handed out twice).

    `floor`: a value in use already (a folder taken over from Dovecot): the counter is
    raised to it, so no later folder of the user gets it or one below; returns `floor`.
    """
    path = root / VALIDITY_FILE
    with sharedfs.dotlocked_if_shared(path) as shared:
        return _next_validity(path, floor, shared)


def _next_validity(path: Path, floor: int, shared: bool) -> int:
    """allocate_validity's read-raise-write, under the dotlock when `shared`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not shared:
            fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        last = int(raw) if raw.isdigit() else 0
        if floor:
            if last >= floor:
                return floor
            value = floor
        else:
            value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        data = b"%d\n" % value
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return value
    finally:
        os.close(fd)


class UidList:
    """The in-memory copy of one folder's UID list; not thread-safe (the folder's lock
    guards it)."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder = folder
        self.root = root
        self.path = folder / UIDLIST_FILE
        self.lock_path = folder / LOCK_FILE
        self.validity = 0
        self._next_header = 1
        self.last_uid = 0
        self.by_base: dict[str, int] = {}
        self._ino = -1
        self._offset = 0
        self._header = b""
        #: Entries in the file (live or not): drives compaction.
        self.records = 0

    @property
    def next_uid(self) -> int:
        return max(self._next_header, self.last_uid + 1)

    # ----------------------------------------------------------------- reading

    def refresh(self, holding_lock: bool = False) -> bool:
        """Read what other processes appended (or a rewritten file); True if changed.

        A missing file is created (with a new UIDVALIDITY) under the lock (flock is per
        open file: say `holding_lock` when this process already holds it, or it waits
        for itself).
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if holding_lock:
                self._create()
            else:
                with locked(self.lock_path):
                    if not self.path.exists():
                        self._create()
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            # A replaced file (rewritten, or a new list after the old was lost) may reuse
            # the inode number: the first line (UIDVALIDITY) tells them apart too.
            if (st.st_ino != self._ino or st.st_size < self._offset
                    or os.pread(fd, len(self._header), 0) != self._header):
                self._reset()
                self._ino = st.st_ino
            if st.st_size <= self._offset:
                return False
            os.lseek(fd, self._offset, os.SEEK_SET)
            data = _read_all(fd, st.st_size - self._offset)
        finally:
            os.close(fd)
        return self._consume(data)

    def _reset(self) -> None:
        self._header = b""
        self.validity = 0
        self._next_header = 1
        self.last_uid = 0
        self.by_base = {}
        self._offset = 0
        self.records = 0

    def _consume(self, data: bytes) -> bool:
        end = data.rfind(b"\n") + 1  # whole lines only: an append may be in progress
        if end == 0:
            return False
        text = data[:end].decode("utf-8", "surrogateescape")
        if self._offset == 0:
            first = text.index("\n") + 1
            self._parse_header(text[:first - 1])
            self._header = data[:first]
            text = text[first:]
        # Fast path: "uid base" lines split in C; any irregular line (damage) sends the
        # chunk through the regex, which skips it (its name gets a new UID).
        tokens = text.split()
        uid_texts, bases = tokens[0::2], tokens[1::2]
        if (len(uid_texts) != len(bases) or text.count("\n") != len(bases)
                or not all(map(str.isdigit, uid_texts))):
            pairs = _RECORD.findall(text)
            uid_texts, bases = [u for u, _ in pairs], [b for _, b in pairs]
        if bases:
            uids = list(map(int, uid_texts))
            self.by_base.update(zip(bases, uids, strict=True))
            self.last_uid = max(self.last_uid, max(uids))
            self.records += len(bases)
        self._offset += end
        return True

    def _parse_header(self, line: str) -> None:
        fields = line.split()
        for field in fields[2:]:
            if field[:1] == "V" and field[1:].isdigit():
                self.validity = int(field[1:])
            elif field[:1] == "N" and field[1:].isdigit():
                self._next_header = int(field[1:])
        if not line.startswith(_MAGIC.decode()) or not self.validity:
            # Not ours or damaged: UIDs from it cannot be trusted. Start over with a new
            # UIDVALIDITY (the only safe choice, RFC 3501 2.3.1.1).
            log.warn("damaged UID list {path}: new UIDVALIDITY", path=str(self.path))
            self.validity = 0

    # ----------------------------------------------------------------- writing

    def _create(self) -> None:
        """Write a new list (Dovecot's UIDs if it left a list, else empty with a fresh
        UIDVALIDITY); caller holds the lock."""
        if self._take_over_dovecot():
            return
        validity = allocate_validity(self.root)
        self._write_file(validity, 1, [])
        log.info("new UIDVALIDITY {validity} for {path}", validity=validity,
                 path=str(self.folder))

    def _take_over_dovecot(self) -> bool:
        """Write Dovecot's UIDs as our list if the folder has a usable dovecot-uidlist."""
        source = self.folder / DOVECOT_UIDLIST
        try:
            taken = read_uidlist(source)
        except DovecotFormatError as e:
            log.warn("not taking over Dovecot's UIDs: {error}; the folder gets a new "
                     "UIDVALIDITY (clients download it again)", error=str(e))
            return False
        except PermissionError:
            log.error("cannot read {path} (permission denied): the folder stays closed "
                      "until its owner is fixed, so that Dovecot's UIDs are not lost",
                      path=str(source))
            raise
        if taken is None:
            return False
        for warning in taken.warnings:
            log.warn("{path}: {warning}", path=str(source), warning=warning)
        allocate_validity(self.root, floor=taken.validity)
        self._write_file(taken.validity, taken.next_uid, taken.records)
        log.info("took over Dovecot's UIDs of {path}: UIDVALIDITY {validity}, {count} "
                 "UIDs, next UID {next}", path=str(self.folder), validity=taken.validity,
                 count=len(taken.records), next=taken.next_uid)
        return True

    def _write_file(self, validity: int, next_uid: int,
                    records: Sequence[tuple[int, str]]) -> None:
        """Replace the file atomically (temp, fsync, rename); caller holds the lock."""
        header = b"%s V%d N%d" % (_MAGIC, validity, next_uid)
        if sharedfs.shared() is not None:
            # Each rewrite's header differs: readers on other nodes tell a rewritten
            # file by it (refresh), where inode numbers are not the server's (sshfs).
            header += b" C%s" % os.urandom(6).hex().encode()
        body = [header + b"\n"]
        body.extend(b"%d %s\n" % (uid, base.encode("utf-8", "surrogateescape"))
                    for uid, base in records)
        tmp = self.folder / f"{UIDLIST_FILE}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(body))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def assign(self, bases: Sequence[str]) -> dict[str, int]:
        """UIDs for `bases` (in the order given: arrival order), assigning new ones.

        Names another process numbered meanwhile keep that process's UID.
        """
        with locked(self.lock_path):
            self.refresh(holding_lock=True)
            if not self.validity:  # a damaged file: start a new UID space
                self._write_file(allocate_validity(self.root), 1, [])
                self.refresh(holding_lock=True)
            fresh = [b for b in dict.fromkeys(bases) if b not in self.by_base]
            if fresh:
                uid = self.next_uid
                if uid + len(fresh) > MAX_UID:
                    raise OverflowError("UID space exhausted")  # needs a new UIDVALIDITY
                lines = []
                for base in fresh:
                    lines.append(b"%d %s\n" % (uid, base.encode("utf-8", "surrogateescape")))
                    uid += 1
                self._append(b"".join(lines))
                self.refresh(holding_lock=True)
        return {b: self.by_base[b] for b in bases if b in self.by_base}

    def adopt(self, records: Sequence[tuple[int, str]]) -> int:
        """Add Dovecot's (uid, base) records this list lacks, where the UID is still
        free (at or above our next UID, ascending): an import run again after Dovecot
        took more mail keeps that mail's UIDs. The caller checked that the UIDVALIDITY
        is Dovecot's. Returns how many were added; the rest get new UIDs as usual."""
        with locked(self.lock_path):
            self.refresh(holding_lock=True)
            lines = []
            uid = self.next_uid
            for record_uid, base in sorted(records):
                if base in self.by_base or record_uid < uid or record_uid > MAX_UID:
                    continue
                lines.append(b"%d %s\n" % (record_uid, base.encode("utf-8", "surrogateescape")))
                uid = record_uid + 1
            if lines:
                self._append(b"".join(lines))
                self.refresh(holding_lock=True)
        return len(lines)

    def _append(self, data: bytes) -> None:
        """Append records (caller holds the lock), fdatasync'd: not a cache, a lost UID
        could be given twice. In cluster mode at the size fstat reports now, not with
        O_APPEND: an NFS client appends at the end it has cached, and FUSE at the size
        its kernel knows; the fstat under the lock asks the server."""
        if sharedfs.shared() is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if sharedfs.shared() is None:
                os.write(fd, data)
            else:
                os.pwrite(fd, data, os.fstat(fd).st_size)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def compact(self, live: set[str]) -> None:
        """Rewrite without names that are gone, keeping UIDVALIDITY and the next UID."""
        with locked(self.lock_path):
            self.refresh(holding_lock=True)
            if not self.validity:
                return
            keep = sorted((uid, base) for base, uid in self.by_base.items() if base in live)
            self._write_file(self.validity, self.next_uid, keep)
            self.refresh(holding_lock=True)


def read_records(path: Path) -> tuple[int, list[tuple[int, str]]] | None:
    """(UIDVALIDITY, every (uid, base) record as written, duplicates included) of a
    list, read without creating or locking anything (`mailserver doctor`); None if
    there is no list. A damaged header gives UIDVALIDITY 0."""
    try:
        text = path.read_text("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    header, _, body = text.partition("\n")
    validity = 0
    if header.startswith(_MAGIC.decode()):
        for item in header.split()[2:]:
            if item[:1] == "V" and item[1:].isdigit():
                validity = int(item[1:])
    return validity, [(int(uid), base) for uid, base in _RECORD.findall(body)]


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
