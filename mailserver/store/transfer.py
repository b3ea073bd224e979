"""Putting message files into a folder: APPEND (new file), COPY (hard link), MOVE (rename).

Every file lands in the destination's new/ with a fresh unique base name, its flags in
the `:2,` info (Dovecot also reads flags of new/ files), so the next session that syncs
the folder read-write claims it as \\Recent (RFC 3501 2.3.2; 6.3.11 asks for \\Recent on
appended messages). A fresh base name (never the source's) keeps a message moved away
and back from getting its old UID again, which would break ascending UIDs.

Durability as for SMTP delivery (docs/decisions/0002): the data is fsync'd before the
link/rename, and new/ is fsync'd before we answer. COPY hard-links (Maildir files are
immutable, so the copies share one inode as with Dovecot), falling back to a real copy
across file systems.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mailserver.store.maildir import FILE_MODE, fsync_dir, size_fields, unique_name

_NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM})


def fresh_base(size: int | None, crlf_size: int | None, when: float | None = None) -> str:
    """A new unique name (without info) whose time field is `when` if given.

    The name's leading seconds are what INTERNALDATE reads (and the mtime too), so an
    APPEND with a date keeps it (RFC 3501 6.3.11).
    """
    name = unique_name()
    if when is not None and name[name.index(".") + 1:].startswith("M"):
        secs, usecs = divmod(max(0, round(when * 1_000_000)), 1_000_000)
        name = f"{secs}.M{usecs}{name[name.index('P'):]}"
    return name + size_fields(size, crlf_size)


def info_suffix(letters: str) -> str:
    return f":2,{letters}" if letters else ""


#: APPEND converts CRLF to LF in pieces of this size, so the message is never in memory
#: twice (a 35 MiB APPEND would otherwise hold its CRLF and its LF form at once).
_WRITE_CHUNK = 1 << 20


def write_new(folder: Path, message: bytes | bytearray, letters: str,
              when: float | None) -> str:
    """APPEND: write `message` (CRLF line ends, as IMAP sends it) to folder/new durably,
    stored with LF ends like every Maildir file of ours; returns the file name."""
    crlfs = message.count(b"\r\n")
    size = len(message) - crlfs                      # S=: the stored (LF) size
    name = fresh_base(size, size + message.count(b"\n"), when)  # W=: LF count kept
    tmp = folder / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        _write_lf(fd, message)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    if when is not None:
        os.utime(tmp, (when, when))
    final = name + info_suffix(letters)
    try:
        os.rename(tmp, folder / "new" / final)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(folder / "new")
    return final


def write_all_new(folder: Path, messages: Sequence[tuple[bytes | bytearray, str, float | None]]
                  ) -> list[str]:
    """MULTIAPPEND (RFC 3502 6.3.11: all or none): write every (message, letters, when)
    to folder/tmp and fsync it first, then rename them all into new/; returns the names.

    A failure while writing (a full disk) removes what was written, and one while
    renaming takes back the renamed ones, so no message is left in the folder unless
    all are. (A crash between the renames can leave some; no reader ever sees a
    half-written file.)"""
    staged: list[tuple[Path, str]] = []
    published: list[Path] = []
    try:
        for message, letters, when in messages:
            crlfs = message.count(b"\r\n")
            size = len(message) - crlfs
            name = fresh_base(size, size + message.count(b"\n"), when)
            tmp = folder / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            staged.append((tmp, name + info_suffix(letters)))
            try:
                _write_lf(fd, message)
                os.fsync(fd)
            finally:
                os.close(fd)
            if when is not None:
                os.utime(tmp, (when, when))
        for tmp, final in staged:
            os.rename(tmp, folder / "new" / final)
            published.append(folder / "new" / final)
    except BaseException:
        for path in [*published, *(tmp for tmp, _ in staged)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise
    fsync_dir(folder / "new")
    return [final for _, final in staged]


def _write_lf(fd: int, message: bytes | bytearray) -> None:
    """Write `message` with every CRLF as LF, one bounded piece at a time."""
    view = memoryview(message)
    start, end = 0, len(message)
    while start < end:
        stop = min(start + _WRITE_CHUNK, end)
        if stop < end and message[stop - 1] == 0x0D and message[stop] == 0x0A:
            stop += 1  # never split a CRLF between two pieces
        piece = memoryview(bytes(view[start:stop]).replace(b"\r\n", b"\n"))
        while piece:
            piece = piece[os.write(fd, piece):]
        start = stop


def link_into(source: str | Path, folder: Path, size: int | None, crlf_size: int,
              letters: str, when: float | None) -> str:
    """COPY: hard-link (or copy) `source` into folder/new; returns the new name.

    Raises FileNotFoundError if the source was renamed or removed meanwhile (the caller
    relocates it and tries again). The caller fsyncs new/ once for the whole batch.
    """
    final = fresh_base(size, crlf_size, when) + info_suffix(letters)
    target = folder / "new" / final
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        tmp = folder / "tmp" / final
        shutil.copyfile(source, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    if when is not None:
        try:
            os.utime(target, (when, when))
        except OSError:
            pass
    return final


def move_into(source: str | Path, folder: Path, size: int | None, crlf_size: int,
              letters: str, when: float | None) -> str:
    """MOVE: rename `source` into folder/new (atomic: never in both, never in neither)."""
    final = fresh_base(size, crlf_size, when) + info_suffix(letters)
    target = folder / "new" / final
    try:
        os.rename(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        final = link_into(source, folder, size, crlf_size, letters, when)
        os.unlink(source)
    return final
