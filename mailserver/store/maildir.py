"""Maildir layout and unique file names (their parser is names.py, re-exported here).

Everything here is blocking file-system work or pure string handling: callers on the
reactor thread run the blocking parts through a disk executor (core/diskio.py).

The layout is the one Dovecot and Courier read, so an operator can point either at our
data_dir and see the same mail:

    mail_dir/DOMAIN/LOCALPART/            the INBOX: cur/ new/ tmp/
    mail_dir/DOMAIN/LOCALPART/.Sent/      a Maildir++ folder: cur/ new/ tmp/ maildirfolder
    mail_dir/DOMAIN/LOCALPART/subscriptions

References: the Maildir spec (https://cr.yp.to/proto/maildir.html), Courier's Maildir++
(https://www.courier-mta.org/imap/README.maildirquota.html) and Dovecot's Maildir format
(https://doc.dovecot.org/admin_manual/mailbox_formats/maildir/).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from pathlib import Path

from mailserver.core.diskio import fsync_dir
from mailserver.core.ownfiles import Owner, give, give_fd, open_nofollow, refuse_link
from mailserver.interfaces import MailboxId
from mailserver.logs import logger
from mailserver.store import sharedfs
from mailserver.store.names import MaildirName, parse_name, with_flags  # noqa: F401 - re-exported

log = logger(__name__)

#: The Maildir++ folders every new mailbox gets, in the order they are subscribed.
#: (RFC 6154 SPECIAL-USE names \Sent \Drafts \Trash \Junk map onto these.)
DEFAULT_FOLDERS: tuple[str, ...] = ("Sent", "Drafts", "Trash", "Junk")

#: Directories are private to the server's user: mail is nobody else's business.
DIR_MODE = 0o700
#: Message files likewise.
FILE_MODE = 0o600

_MAILDIR_SUBDIRS = ("cur", "new", "tmp")


# --------------------------------------------------------------------------- paths


def check_component(name: str) -> str:
    """Return `name` if it is safe as one path component, else raise ValueError.

    Defence in depth: auth.directory already validates addresses, but a single bug
    there must not let a recipient write outside mail_dir (`..`, `/`) or into a
    Maildir++ folder or hidden file (leading `.`).
    """
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"unsafe mailbox path component: {name!r}")
    return name


def mailbox_path(mail_dir: Path, mailbox: MailboxId) -> Path:
    """mail_dir/DOMAIN/LOCALPART, refusing any unsafe component (CONTRACT.md, on disk)."""
    return mail_dir / check_component(mailbox.domain) / check_component(mailbox.localpart)


def folder_path(maildir: Path, folder: str) -> Path:
    """The Maildir++ directory of `folder` ("Sent" -> maildir/.Sent); "INBOX" is the root.

    Maildir++ names nested folders with "." as separator (".Archive.2024"), so `folder`
    uses "." too; each dot-separated part must itself be a safe component.
    """
    if folder.upper() == "INBOX":
        return maildir
    for part in folder.split("."):
        check_component(part)
    return maildir / ("." + folder)


# --------------------------------------------------------------------------- creation


def _mkdir(path: Path, owner: Owner | None = None, nofollow: bool = False) -> bool:
    """Create one directory (mode 0700); True if we made it, False if it already existed.

    exist_ok semantics, safe when several processes race to create the same tree; but an
    existing non-directory is an error (the caller turns it into a 451), and so is a
    symbolic link when `nofollow` (SymlinkRefused).
    """
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if nofollow:
            refuse_link(path)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory",
                                     str(path)) from None
        return False
    give(path, owner)  # before anything goes in: the server may see it at once
    return True


def _make_maildir_dirs(root: Path, created: list[Path], new_last: bool = True,
                       owner: Owner | None = None, nofollow: bool = False) -> None:
    """cur/ tmp/ (and new/ unless `new_last`) under `root`, recording what we created."""
    if _mkdir(root, owner, nofollow):
        created.append(root)
    for sub in ("cur", "tmp") if new_last else _MAILDIR_SUBDIRS:
        if _mkdir(root / sub, owner, nofollow):
            created.append(root / sub)


def _write_new_file(path: Path, content: bytes, owner: Owner | None = None) -> bool:
    """Create `path` with `content` unless it exists (never clobbers); True if we made it.

    Written under a unique temporary name and hard-linked into place: link() refuses an
    existing target, so a racing process or the user's own edits are never overwritten,
    and nobody ever reads a half-written file.
    """
    if path.exists():
        return False
    tmp = path.with_name(f"{path.name}.{unique_name()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        give_fd(fd, owner)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def create_maildir(mail_dir: Path, mailbox: MailboxId, owner: Owner | None = None,
                   nofollow: bool = False) -> Path:
    """Create the user's Maildir with the default folders; return its path. Idempotent.

    new/ of the INBOX is created last, so `ensure_maildir`'s fast path (new/ exists)
    implies that everything else exists too, even if a process died half-way here.
    Every directory we create is fsync'd into its parent before returning, because the
    first message is about to be acknowledged with 250 and must survive a crash.
    The admin tool (often root) passes `nofollow`: then nothing from mail_dir down may
    be a symbolic link (SymlinkRefused), since a link planted under data_dir would have
    root create directories wherever it points; and `owner` (data_dir's owner,
    core/ownfiles.py), given to what we create. Delivery follows links (a domain's
    directory may be a link to another file system).
    """
    root = mailbox_path(mail_dir, mailbox)
    created: list[Path] = []
    exists = refuse_link(mail_dir) and mail_dir.is_dir() if nofollow else mail_dir.is_dir()
    if not exists:  # data_dir/mail, and data_dir too if need be
        os.makedirs(mail_dir, DIR_MODE, exist_ok=True)
        give(mail_dir, owner)
        created.append(mail_dir)
    if _mkdir(mail_dir / mailbox.domain, owner, nofollow):
        created.append(mail_dir / mailbox.domain)
    _make_maildir_dirs(root, created, owner=owner, nofollow=nofollow)
    for folder in DEFAULT_FOLDERS:
        # Dovecot and Courier mark a Maildir++ folder with an empty `maildirfolder` file.
        folder_dir = folder_path(root, folder)
        _make_maildir_dirs(folder_dir, created, new_last=False, owner=owner,
                           nofollow=nofollow)
        marker = open_nofollow(folder_dir / "maildirfolder", os.O_WRONLY | os.O_CREAT,
                               FILE_MODE)
        try:
            give_fd(marker, owner)
        finally:
            os.close(marker)
    # Dovecot's (pre-2.4) subscriptions file: one folder name per line.
    _write_new_file(root / "subscriptions",
                    "".join(f + "\n" for f in DEFAULT_FOLDERS).encode("ascii"), owner)
    if _mkdir(root / "new", owner, nofollow):
        created.append(root / "new")
    if created:
        _sync_created(created)
        log.info("created Maildir for {address}", address=mailbox.address)
    return root


def _sync_created(created: list[Path]) -> None:
    """fsync every directory that gained an entry: the parents of what we created.

    (A new folder's `maildirfolder` marker lives in a directory that also gained cur/,
    so the same set covers it.)
    """
    for directory in sorted({p.parent for p in created}):
        fsync_dir(directory)


def ensure_maildir(mail_dir: Path, mailbox: MailboxId) -> Path:
    """The Maildir's path, created first if needed; one stat() on the common path."""
    root = mailbox_path(mail_dir, mailbox)
    if os.path.isdir(root / "new"):
        return root
    return create_maildir(mail_dir, mailbox)


# --------------------------------------------------------------------------- unique names

_counter = itertools.count(1)
_counter_lock = threading.Lock()
#: getpid() is a syscall on every call; cache it, and refresh it in a forked child.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def encode_host(host: str) -> str:
    """The host part of a unique name: '/' -> '\\057' and ':' -> '\\072' (Maildir spec).

    '/' would split the path and ':' starts the info suffix; the spec's octal escapes
    keep the name readable and reversible.
    """
    return host.replace("/", "\\057").replace(":", "\\072")


def unique_name(size: int | None = None, crlf_size: int | None = None,
                host: str | None = None) -> str:
    """A new unique Maildir base name (no info suffix), in Dovecot's modern form.

    `{secs}.M{usecs}P{pid}Q{counter}R{random}.{host},S={size},W={crlf_size}`

    The Maildir spec makes a name unique by time, pid and a per-process counter
    (M, P, Q). R adds 64 random bits (os.urandom) because several processes on several
    hosts may share the directory over NFS, where pids and clocks collide; in cluster
    mode the host part starts with the node's name (sharedfs.node_host). S= is the
    stored size and W= the size with CRLF line ends (RFC 1939 and RFC 3501 report
    that one), so POP3 and IMAP can answer LIST / RFC822.SIZE without reading the file.
    """
    now = time.time_ns()
    secs, usecs = divmod(now // 1000, 1_000_000)
    with _counter_lock:
        count = next(_counter)
    name = (f"{secs}.M{usecs}P{_pid}Q{count}R{os.urandom(8).hex()}."
            f"{encode_host(sharedfs.node_host(host or socket.gethostname()))}")
    return name + size_fields(size, crlf_size)


def size_fields(size: int | None, crlf_size: int | None) -> str:
    """The `,S=...,W=...` part of a name (Dovecot's fields), for the sizes that are known."""
    name = ""
    if size is not None:
        name += f",S={size}"
    if crlf_size is not None:
        name += f",W={crlf_size}"
    return name


def crlf_size(data: bytes) -> int:
    """The size `data` (LF line ends) will have on the wire, with CRLF line ends."""
    return len(data) + data.count(b"\n")
