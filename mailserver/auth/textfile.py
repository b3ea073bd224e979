"""The users and aliases files on disk: re-read when they change, rewritten atomically.

Why this way: the admin tool and a running server share these files with no other
channel between them. Readers stat() the file on each lookup and re-parse when
(st_mtime_ns, st_size, st_ino) change, so an edit shows up without a restart. Writers
take an flock on FILE.lock (serialising concurrent admin commands), write a temporary
file, fsync it and rename it over the original, so a reader sees the old file or the new
one and never half of one. The lock lives in a separate file because a rename replaces
the inode a lock on FILE itself would be held on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from mailserver.core.diskio import fsync_dir
from mailserver.core.ownfiles import Owner, give_fd, open_nofollow, refuse_link
from mailserver.logs import logger

log = logger(__name__)

T = TypeVar("T")

Signature = tuple[int, int, int]


@dataclass(frozen=True)
class LineProblem:
    """One thing wrong with one line, shown as `FILE:LINE: problem` (editor-clickable)."""

    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its end), for every line of `text`."""
    yield from enumerate(text.splitlines(), start=1)


def read_text(path: Path) -> str:
    """The file's text; a missing file reads as empty (no users yet is a valid state)."""
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedFile(Generic[T]):
    """A parsed view of a text file, re-parsed whenever the file changes on disk.

    `parse(text)` turns the file into a value; it must not raise for bad content (report
    problems in the value instead). A missing file parses as "". When the file exists but
    cannot be read (permissions), the last good value is kept and an error logged, so a
    transient mistake does not make every user vanish; with no good value yet,
    `read_error` says why, so callers can answer "try later" instead of "no such user".
    """

    def __init__(self, path: Path, parse: Callable[[str], T]) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._value: T | None = None
        #: Why the file could not be read and no earlier reading stands in, else None.
        self.read_error: str | None = None

    def get(self) -> T:
        """The current value: one stat() per call, a re-read only after a change."""
        with self._lock:
            signature = _signature(self.path)
            if self._value is not None and signature == self._signature:
                return self._value
            try:
                text = read_text(self.path)
            except OSError as e:
                log.error("cannot read {path}: {error}", path=str(self.path),
                          error=e.strerror)
                if self._value is None or self.read_error is not None:
                    self.read_error = f"cannot read {self.path}: {e.strerror}"
                    self._value = self._parse("")
                return self._value
            # The signature is the one taken before reading: if the file changed while
            # we read it, the next call sees a mismatch and reads it again.
            self._signature = signature
            self._value = self._parse(text)
            self.read_error = None
            return self._value

    def invalidate(self) -> None:
        """Forget the cached value (after this process rewrote the file itself)."""
        with self._lock:
            self._signature = None
            self._value = None


@contextlib.contextmanager
def locked(path: Path, owner: Owner | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path`.lock for the duration of a read-modify-write.

    The lock file is never opened through a symbolic link (as root, that would create
    a file wherever the link points), and is given `owner` (core/ownfiles.py), so the
    server's user can still take the lock after root did.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = open_nofollow(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        give_fd(fd, owner)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def rewrite(path: Path, transform: Callable[[str], str], mode: int | None = None,
            owner: Owner | None = None) -> str:
    """Replace the file's text with `transform(old text)`, atomically and under the lock.

    `transform` may raise to abandon the change (nothing is written then). `mode` is the
    file mode (the users file holds hashes: 0o600), plus the group bits an existing file
    had (root:mailserver 0640 stays readable by the server's group); None keeps an
    existing file's mode, or 0o644 for a new file. The owner of an existing file is kept
    when we are allowed to (an admin running as root must not take the file away from
    the server's user); a new file gets `owner` (core/ownfiles.py). A symbolic link in
    place of the file is refused: the rename would replace the link, not its target.
    Returns the new text.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path, owner):
        refuse_link(path)
        old = read_text(path)
        new = transform(old)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if mode is None:
            file_mode = st.st_mode & 0o7777 if st else 0o644
        else:
            file_mode = mode | (st.st_mode & 0o070 if st else 0)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                        suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                os.fchmod(f.fileno(), file_mode)
                if st is not None:
                    with contextlib.suppress(PermissionError):
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                else:
                    give_fd(f.fileno(), owner)
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        fsync_dir(path.parent)  # the rename itself: else a crash can bring back the old file
        return new


def ensure_newline(text: str) -> str:
    """`text` ending in a newline unless empty, so an appended line starts its own line."""
    return text if not text or text.endswith("\n") else text + "\n"


class _Table(Protocol):
    """What TableFile needs of a parsed file: its line problems."""

    @property
    def problems(self) -> tuple[LineProblem, ...]: ...


TableT = TypeVar("TableT", bound=_Table)


class TableFile(Generic[TableT]):
    """A users or aliases file: parsed again after every change (its problems logged),
    edited atomically and serialised with other writers (`rewrite`).

    Subclasses say what the file holds (`kind`, for log lines), how to parse it and how
    many entries a parsed table has, and add their own lookups and edits.
    """

    kind = "entries"
    #: Permissions of the rewritten file; None keeps what the file had.
    mode: int | None = None
    #: Who gets a file this process creates (the admin tool as root sets it).
    owner: Owner | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self._watched: WatchedFile[TableT] = WatchedFile(path, self._load)

    def parse(self, text: str) -> TableT:
        raise NotImplementedError

    def count(self, table: TableT) -> int:
        raise NotImplementedError

    def table(self) -> TableT:
        return self._watched.get()

    @property
    def read_error(self) -> str | None:
        """Why the file is unreadable, while no good reading of it stands in."""
        return self._watched.read_error

    def _load(self, text: str) -> TableT:
        table = self.parse(text)
        for problem in table.problems:
            log.warn("{kind} file: {problem}", kind=self.kind, problem=str(problem))
        log.info("loaded {count} {kind} from {path}", count=self.count(table),
                 kind=self.kind, path=str(self.path))
        return table

    def _edit(self, transform: Callable[[str], str]) -> None:
        rewrite(self.path, transform, mode=self.mode, owner=self.owner)
        self._watched.invalidate()
