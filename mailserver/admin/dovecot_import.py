"""`mailserver import dovecot --from PATH [--user ADDRESS | --all] [--dry-run]`.

A copy of Dovecot's Maildirs into data_dir/mail for those who would rather not serve
Dovecot's tree in place (README: "Moving from Postfix + Dovecot"). Every folder keeps
its UIDVALIDITY and UIDs, flags (the file names' `:2,` letters), keywords (the folder's
dovecot-keywords, copied as is) and the subscriptions, so no client downloads again.

Per folder, in an order that a SIGKILL at any point leaves safe to run again:
1. Dovecot's dovecot-uidlist and dovecot-keywords are copied first (temp file and
   rename), unless our list exists there already (the folder is in use: its UIDs stay
   and Dovecot's messages get new ones after them, with a warning).
2. Each message file is hard-linked (or copied through tmp/ and renamed, so cur/ never
   holds a half file) under its own name, unless a file of its base name is there:
   what a previous run brought is skipped, never doubled.
3. Our mailserver-uidlist is made from the copied dovecot-uidlist (store/uidlist.py's
   takeover, the same code the in-place path runs). Run again later (after Dovecot took
   more mail), Dovecot's new records are added where their UIDs are still free
   (UidList.adopt), so that mail keeps its UIDs too.
A server reading the folder during the import takes the UIDs over from the copied
dovecot-uidlist in step 1 too, so a message linked later still gets Dovecot's UID.

Hard links share the inode, owner and mode with Dovecot's file; we link only when the
file already has the owner the server needs (data_dir's), else copy, so Dovecot's tree
is never changed (rollback stays possible). Nothing is followed through a symbolic
link, in the source or under data_dir; what we create is given data_dir's owner.

Both of Dovecot's Maildir layouts are read: Maildir++ (its default, ".Folder.Sub"
directories beside cur/) and LAYOUT=fs (`mail_location = maildir:~/Maildir:LAYOUT=fs`:
"Folder/Sub/" directories, each with its own cur/ new/ tmp/). An fs folder is imported
as the Maildir++ folder of the same name (".Folder.Sub"), our store's one layout; a
level whose name holds a "." cannot be one level in Maildir++ (its hierarchy delimiter)
and is skipped with a warning, as is an fs folder whose Maildir++ twin also exists (the
Maildir++ one is imported). Serving an fs tree in place is not supported: import it.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mailserver.admin.commands import Admin, Refused
from mailserver.auth.names import InvalidAddress
from mailserver.core.diskio import fsync_dir
from mailserver.core.ownfiles import Owner, give, give_fd, open_nofollow, refuse_link
from mailserver.interfaces import MailboxId
from mailserver.store.dovecot import (
    DOVECOT_SUBSCRIPTIONS,
    DOVECOT_UIDLIST,
    DovecotFormatError,
    read_subscriptions,
    read_uidlist,
)
from mailserver.store.flags import KEYWORDS_FILE
from mailserver.store.maildir import DIR_MODE, FILE_MODE, mailbox_path
from mailserver.store.names import base_of
from mailserver.store.uidlist import LOCK_FILE, UIDLIST_FILE, VALIDITY_FILE, UidList, locked

#: Copied in chunks of this size (bounded memory for any message size).
CHUNK = 1 << 20


@dataclass
class Work:
    """One folder to import: where from, where to, and the files still to bring."""

    mailbox: MailboxId
    name: str  # "" for INBOX, else the Maildir++ directory name (".Work.Sub")
    source: Path
    dest: Path
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (sub, name, size)
    already: int = 0  # files a previous run brought
    in_use: bool = False  # our list exists there (an earlier run, or mail of ours)
    validity: int = 0
    next_uid: int = 0
    records: list[tuple[int, str]] = field(default_factory=list)  # Dovecot's
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.mailbox.address} {self.name.lstrip('.') or 'INBOX'}"


@dataclass
class Totals:
    messages: int = 0
    bytes: int = 0
    linked: int = 0
    copied: int = 0
    skipped: int = 0
    folders: int = 0
    warnings: int = 0


class Progress:
    """Messages and bytes done, rate and ETA on stderr: redrawn in place on a terminal,
    a line every few seconds otherwise (a log). No dependency: ~30 lines."""

    def __init__(self, messages: int, size: int, stream: TextIO) -> None:
        self.total = (messages, size)
        self.done = [0, 0]
        self.stream = stream
        self.tty = stream.isatty()
        self.start = self.last = time.monotonic()

    def step(self, size: int) -> None:
        self.done[0] += 1
        self.done[1] += size
        now = time.monotonic()
        if now - self.last >= (0.2 if self.tty else 5.0):
            self.last = now
            self.show(now)

    def show(self, now: float, final: bool = False) -> None:
        (m, b), (tm, tb) = self.done, self.total
        elapsed = max(now - self.start, 1e-6)
        rate = b / elapsed
        eta = (tb - b) / rate if rate > 0 else 0.0
        line = (f"{m}/{tm} messages, {b / 2**20:.1f}/{tb / 2**20:.1f} MiB, "
                f"{rate / 2**20:.1f} MiB/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if self.tty:
            print("\r" + line + ("\n" if final else ""), end="", file=self.stream)
        else:
            print(line, file=self.stream)
        self.stream.flush()


def import_dovecot(admin: Admin, source: Path, address: str | None, all_users: bool,
                   dry_run: bool) -> None:
    """The command: plan every folder, then (unless --dry-run) bring it over."""
    if refuse_link(source) is False or not source.is_dir():
        raise Refused(f"{source}: no such directory")
    owner = None if dry_run else admin.writing()
    users = _users(admin, source, address, all_users)
    plan = [work for mailbox, root in users for work in _plan_user(admin, mailbox, root)]
    totals = Totals(folders=len(plan))
    for work in plan:
        for warning in work.warnings:
            print(f"warning: {work.label}: {warning}", file=admin.stderr)
        totals.warnings += len(work.warnings)
        totals.skipped += work.already
    todo = sum(len(w.files) for w in plan)
    size = sum(s for w in plan for _, _, s in w.files)
    if dry_run:
        for work in plan:
            uids = (f"UIDVALIDITY {work.validity}, next UID {work.next_uid}"
                    if work.validity else "new UIDs")
            admin.say(f"would import {work.label}: {len(work.files)} messages "
                      f"({sum(s for _, _, s in work.files)} bytes), {work.already} there "
                      f"already; {uids}")
        admin.say(f"import dovecot --dry-run: {len(plan)} folders, {todo} messages, "
                  f"{size} bytes would be imported; nothing was changed")
        return
    progress = Progress(todo, size, admin.stderr)
    for mailbox, root in users:
        _import_subscriptions(root, mailbox_path(admin.config.mail_dir, mailbox), owner)
    for work in plan:
        _import_folder(work, owner, progress, totals)
    progress.show(time.monotonic(), final=True)
    admin.say(f"import dovecot: {len(users)} users, {totals.folders} folders, "
              f"{totals.messages} messages ({totals.bytes} bytes: {totals.linked} "
              f"hard-linked, {totals.copied} copied), {totals.skipped} already there, "
              f"{totals.warnings} warnings")


def _users(admin: Admin, source: Path, address: str | None,
           all_users: bool) -> list[tuple[MailboxId, Path]]:
    """(mailbox, Dovecot Maildir) pairs: --user ADDRESS takes PATH as that user's
    Maildir; --all takes PATH as a tree of DOMAIN/LOCALPART Maildirs
    (mail_location = maildir:PATH/%d/%n), importing those our users file knows."""
    if address is not None:
        if not (source / "cur").is_dir():
            raise Refused(f"{source}: not a Maildir (no cur/)")
        if not admin.directory.user_exists(address):
            raise Refused(f"{address}: no such user (mailserver user add {address})")
        try:
            return [(admin.directory.mailbox_id(address), source)]
        except InvalidAddress as e:
            raise Refused(str(e)) from None
    assert all_users
    found = []
    for domain in sorted(os.listdir(source)):
        for local in sorted(_subdirs(source / domain)):
            root = source / domain / local
            if not (root / "cur").is_dir() or os.path.islink(root):
                continue
            candidate = f"{local}@{domain}"
            if not admin.directory.user_exists(candidate):
                admin.note(f"{root}: no user {candidate} here, not imported")
                continue
            found.append((admin.directory.mailbox_id(candidate), root))
    if not found:
        raise Refused(f"{source}: no DOMAIN/LOCALPART Maildir of a known user below it")
    return found


def _subdirs(path: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (NotADirectoryError, FileNotFoundError):
        return []


def _plan_user(admin: Admin, mailbox: MailboxId, root: Path) -> list[Work]:
    dest_root = mailbox_path(admin.config.mail_dir, mailbox)
    works = []
    for name, source in [("", root)] + _folders(admin, root):
        if not (source / "cur").is_dir():
            if any(_subdirs(source)):
                admin.note(f"{source}: no cur/ (not a folder), skipped")
            continue
        works.append(_plan_folder(mailbox, name, source,
                                  dest_root / name if name else dest_root))
    return works


#: Maildir directories that are never folders, at any level of a LAYOUT=fs tree.
_MAILDIR_PARTS = frozenset({"cur", "new", "tmp"})
#: LAYOUT=fs levels walked at most (Dovecot's own limit on hierarchy is similar).
MAX_FS_DEPTH = 32


def _folders(admin: Admin, root: Path) -> list[tuple[str, Path]]:
    """(Maildir++ name, directory) of every folder under a user's Maildir: the
    ".A.B" directories, then LAYOUT=fs "A/B" ones as ".A.B" (see the module docstring)."""
    plus = sorted(n for n in _subdirs(root) if n.startswith(".") and n not in (".", ".."))
    found = [(n, root / n) for n in plus]
    taken = set(plus)
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        directory, levels = stack.pop()
        for entry in sorted(_subdirs(directory), reverse=True):
            if entry.startswith(".") or (entry in _MAILDIR_PARTS):
                continue
            path = directory / entry
            if "." in entry:
                print(f"warning: {path}: a folder name with '.' cannot be one level "
                      "here (Maildir++ uses '.' between levels), not imported",
                      file=admin.stderr)
                continue
            name = "." + ".".join(levels + (entry,))
            if (path / "cur").is_dir():
                if name in taken:
                    print(f"warning: {path}: {name} exists in Maildir++ form too; "
                          "that one is imported, this one not", file=admin.stderr)
                else:
                    found.append((name, path))
                    taken.add(name)
            if len(levels) + 1 < MAX_FS_DEPTH:
                stack.append((path, levels + (entry,)))
    return found


def _plan_folder(mailbox: MailboxId, name: str, source: Path, dest: Path) -> Work:
    work = Work(mailbox, name, source, dest)
    work.in_use = (dest / UIDLIST_FILE).exists()
    try:
        taken = read_uidlist(source / DOVECOT_UIDLIST)
    except DovecotFormatError as e:
        work.warnings.append(f"{e}: the folder gets new UIDs")
        taken = None
    if taken is not None:
        work.validity, work.next_uid = taken.validity, taken.next_uid
        work.records = taken.records
        work.warnings.extend(taken.warnings)
    if work.in_use:
        ours = UidList(dest, dest.parent if name else dest)
        ours.refresh()
        if taken is not None and ours.validity != taken.validity:
            work.warnings.append(
                f"already has UIDs of ours (UIDVALIDITY {ours.validity}): they stay, and "
                "the imported messages get new UIDs (clients fetch those again)")
        if _keywords_differ(source, dest):
            work.warnings.append("its keyword letters differ from Dovecot's: imported "
                                 "messages keep their letters, which may name other "
                                 "keywords here")
    there = {base_of(n) for sub in ("new", "cur") for n in _listdir(dest / sub)}
    for sub in ("new", "cur"):
        for file in _listdir(source / sub):
            if file.startswith("."):
                continue
            try:
                st = os.lstat(source / sub / file)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                work.warnings.append(f"{sub}/{file}: not a regular file, skipped")
                continue
            if base_of(file) in there:
                work.already += 1
                continue
            there.add(base_of(file))
            work.files.append((sub, file, st.st_size))
    return work


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _import_folder(work: Work, owner: Owner | None, progress: Progress,
                   totals: Totals) -> None:
    _make_dirs(work.dest, work.name != "", owner)
    for stale in _listdir(work.dest / "tmp"):
        if ".import." in stale:  # a copy a killed run left half done
            os.unlink(work.dest / "tmp" / stale)
    if not work.in_use:
        for meta in (DOVECOT_UIDLIST, KEYWORDS_FILE):
            if refuse_link(work.source / meta):
                _copy_file(work.source / meta, work.dest / meta, owner, work.dest)
    for sub, name, size in work.files:
        src, dst = work.source / sub / name, work.dest / sub / name
        try:
            linked = _bring(src, dst, owner, work.dest)
        except FileNotFoundError:
            continue  # gone from Dovecot's tree meanwhile (expunged, or renamed: next run)
        if linked:
            totals.linked += 1
        else:
            totals.copied += 1
        totals.messages += 1
        totals.bytes += size
        progress.step(size)
    for sub in ("new", "cur"):
        fsync_dir(work.dest / sub)
    # Our list now (the takeover), owned like the rest: the server must rewrite it.
    uidlist = UidList(work.dest, mailbox_root(work))
    uidlist.refresh()
    if work.records and uidlist.validity == work.validity:
        uidlist.adopt(work.records)
    for path in (work.dest / UIDLIST_FILE, work.dest / LOCK_FILE,
                 mailbox_root(work) / VALIDITY_FILE):
        if refuse_link(path):
            give(path, owner)


def mailbox_root(work: Work) -> Path:
    return work.dest.parent if work.name else work.dest


def _keywords_differ(source: Path, dest: Path) -> bool:
    """Whether the two folders' keyword files map letters differently."""
    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
    theirs = read(source / KEYWORDS_FILE)
    return bool(theirs) and read(dest / KEYWORDS_FILE) not in (b"", theirs)


def _make_dirs(dest: Path, is_folder: bool, owner: Owner | None) -> None:
    """dest and its cur/ new/ tmp/ (and the parents up to it), never through a link."""
    missing = []
    path = dest
    while not refuse_link(path):
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        os.mkdir(path, DIR_MODE)
        give(path, owner)
    for sub in ("tmp", "cur", "new"):
        if not refuse_link(dest / sub):
            os.mkdir(dest / sub, DIR_MODE)
            give(dest / sub, owner)
    if is_folder and not refuse_link(dest / "maildirfolder"):
        fd = open_nofollow(dest / "maildirfolder", os.O_WRONLY | os.O_CREAT, FILE_MODE)
        give_fd(fd, owner)
        os.close(fd)


def _bring(src: Path, dst: Path, owner: Owner | None, folder: Path) -> bool:
    """Hard-link src to dst when the file's owner is already the right one (else copy
    it: a chown of a link would change Dovecot's file too); True if linked."""
    st = os.lstat(src)
    if not stat.S_ISREG(st.st_mode):
        return False
    if owner is None or (st.st_uid, st.st_gid) == owner:
        try:
            os.link(src, dst, follow_symlinks=False)
            return True
        except FileExistsError:
            return True  # linked by a run killed before it counted it
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
    _copy_file(src, dst, owner, folder, mtime=st.st_mtime_ns)
    return False


def _copy_file(src: Path, dst: Path, owner: Owner | None, folder: Path,
               mtime: int | None = None) -> None:
    """Copy through folder/tmp (fsync'd, then renamed): dst is whole or absent."""
    tmp = folder / "tmp" / f"{dst.name.partition(':')[0]}.import.{os.getpid()}"
    src_fd = open_nofollow(src, os.O_RDONLY)
    try:
        out = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            while chunk := os.read(src_fd, CHUNK):
                os.write(out, chunk)
            os.fsync(out)
            give_fd(out, owner)
        finally:
            os.close(out)
    finally:
        os.close(src_fd)
    if mtime is not None:
        os.utime(tmp, ns=(mtime, mtime), follow_symlinks=False)
    os.rename(tmp, dst)


def _import_subscriptions(source_root: Path, dest_root: Path, owner: Owner | None) -> None:
    """Dovecot's subscriptions added to ours (ours first), written in version 1 form."""
    try:
        theirs = read_subscriptions((source_root / DOVECOT_SUBSCRIPTIONS).read_text(
            "utf-8", errors="replace"))
    except FileNotFoundError:
        return
    _make_dirs(dest_root, False, owner)
    path = dest_root / DOVECOT_SUBSCRIPTIONS
    lock = dest_root / f"{DOVECOT_SUBSCRIPTIONS}.lock"  # folders.py's, for SUBSCRIBE
    refuse_link(path)
    refuse_link(lock)
    with locked(lock):
        give(lock, owner)
        try:
            ours = read_subscriptions(path.read_text("utf-8", errors="replace"))
        except FileNotFoundError:
            ours = []
        merged = list(dict.fromkeys(ours + theirs))
        if merged == ours and path.exists():
            return
        tmp = dest_root / f"{DOVECOT_SUBSCRIPTIONS}.tmp.{os.getpid()}"
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, "".join(n + "\n" for n in merged).encode("utf-8"))
            os.fsync(fd)
            give_fd(fd, owner)
        finally:
            os.close(fd)
        os.rename(tmp, path)

