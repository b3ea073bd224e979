"""MAILBOXID (RFC 8474 4): a folder's id, kept in a file of the folder's own directory.

RENAME moves the directory and so keeps the id (RFC 8474 4.1); DELETE removes the
directory, so a folder made again under the same name gets a new one; INBOX's file is
in the Maildir's root, where RENAME of INBOX (RFC 3501 6.3.5: its messages move to a
new folder) leaves it. The id is made on first use: written to a file of its own, then
linked into place, so two processes asking at once agree on the first link's id.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from mailserver.store.maildir import FILE_MODE, fsync_dir

FILE = "mailserver-mailboxid"
#: RFC 8474 7: objectid = 1*255(ALPHA / DIGIT / "_" / "-"); ours: "F" + 24 hex digits.
_VALID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def mailbox_id(directory: Path) -> str:
    """The folder's MAILBOXID, made (durably) if it has none yet. Blocking."""
    target = directory / FILE
    existing = _read(target)
    if existing is not None:
        return existing
    tmp = directory / f"{FILE}.{os.getpid()}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, ("F" + secrets.token_hex(12) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if target.exists():  # there, but not an id (damaged): ours replaces it
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass  # another process was first: its id holds
    finally:
        if tmp.exists():
            os.unlink(tmp)
    fsync_dir(directory)
    made = _read(target)
    if made is None:
        raise OSError(f"{target}: MAILBOXID file unreadable after writing it")
    return made


def _read(path: Path) -> str | None:
    try:
        text = path.read_text("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return text if _VALID.fullmatch(text) else None
