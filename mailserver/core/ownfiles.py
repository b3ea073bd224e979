"""Creating files the server must be able to use, safely when the creator is root.

Why: the admin tool is often run as root (sudo) while the server runs as its own user
(etc/mailserver.service: User=mailserver). A users file or Maildir the admin tool leaves
root-owned with mode 0600/0700 is one the server cannot read: mail for that user is
refused. And as root, following a symbolic link someone planted under data_dir (the
server's user owns it) creates or truncates files anywhere. So what the admin tool
creates is given the owner of data_dir (`Owner`), and nothing it creates, locks or
descends into under data_dir may be a symbolic link (`SymlinkRefused`).

The checks are lstat()/O_NOFOLLOW on each path we touch; a link swapped in between a
check and the next call is not caught (that needs openat() all the way down).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: (uid, gid) to give what we create; None leaves files owned by whoever created them.
Owner = tuple[int, int]


class SymlinkRefused(OSError):
    """A path that must not be a symbolic link is one. str(): `PATH: is a symbolic link`"""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link (refusing to follow it)",
                         os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def refuse_link(path: str | os.PathLike[str]) -> bool:
    """Raise SymlinkRefused if `path` is a symbolic link; True if it exists at all."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(path)
    return True


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symbolic link as the last component (O_NOFOLLOW)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        raise


def give(path: str | os.PathLike[str], owner: Owner | None) -> None:
    """chown a path we created to `owner` (never through a link: lchown)."""
    if owner is not None:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)


def give_fd(fd: int, owner: Owner | None) -> None:
    if owner is not None:
        os.fchown(fd, owner[0], owner[1])


class NotTheOwner(Exception):
    """Neither root nor data_dir's owner: files we made would be ours, and the server
    (data_dir's owner) could not read them. `owner` is that user's name."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


def data_dir_owner(data_dir: Path) -> Owner | None:
    """The owner a root admin command must give what it creates: data_dir's, when that
    is another user; None when there is nothing to change (we own data_dir, or it does
    not exist yet). Raises NotTheOwner when we are neither root nor that user."""
    try:
        st = os.stat(data_dir)
    except FileNotFoundError:
        return None
    euid = os.geteuid()
    if st.st_uid == euid:
        return None
    if euid == 0:
        return (st.st_uid, st.st_gid)
    raise NotTheOwner(user_name(st.st_uid))


def user_name(uid: int) -> str:
    """The login name of `uid`, else the number."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: a temp file created with `mode` from the first byte
    (a private key is never readable by others, even briefly), fsync'd, renamed over it.
    The temp file is never a link someone left there (O_NOFOLLOW)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
