"""`mailserver doctor [--user ADDRESS]`: check the Maildirs against their UID lists.

Read-only (nothing is created, renamed or numbered), so it is safe while the server
runs; a folder changing under it may show a passing "unlisted" file. Per folder:

- error: one UID given to two names in mailserver-uidlist (RFC 3501 2.3.1.1: a UID
  names one message for the life of a UIDVALIDITY), or one name listed twice;
- error: a message present twice (one base name in new/ and cur/, or under two flag
  suffixes): clients would see it once, and which file wins is luck;
- note: unlisted files (numbered at the next open: mail delivered since), orphan
  records (files gone; dropped at the next compaction, their UIDs never reused);
- note: a dovecot-uidlist with another UIDVALIDITY than ours (rolling back to Dovecot
  would make clients download that folder again), or one not yet taken over.

Per Maildir, the quota count (store/quota.py) against a scan of its files: a count that
is off (a crash between a file operation and its count, mail put there behind the
server's back) is a note naming the file to remove; the server counts again at its next
use. Mail arriving while doctor runs can show as a difference too.

Exit status 1 when an error was found, else 0; one line per finding and a summary.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mailserver.admin.commands import Admin, Refused
from mailserver.auth.names import InvalidAddress
from mailserver.store import quota
from mailserver.store.dovecot import DOVECOT_UIDLIST, DovecotFormatError, read_uidlist
from mailserver.store.maildir import mailbox_path
from mailserver.store.names import base_of
from mailserver.store.uidlist import UIDLIST_FILE, read_records


@dataclass
class Findings:
    folders: int = 0
    messages: int = 0
    errors: int = 0
    notes: int = 0


def doctor(admin: Admin, address: str | None) -> bool:
    """Check one user's Maildir, or every one under mail_dir; True if no error."""
    mail_dir = admin.config.mail_dir
    if address is not None:
        try:
            roots = [mailbox_path(mail_dir, admin.directory.mailbox_id(address))]
        except InvalidAddress as e:
            raise Refused(str(e)) from None
        if not roots[0].is_dir():
            raise Refused(f"{roots[0]}: no Maildir")
    else:
        roots = [mail_dir / d / u for d in _dirs(mail_dir) for u in _dirs(mail_dir / d)
                 if (mail_dir / d / u / "cur").is_dir()]
    found = Findings()
    started = last = time.monotonic()
    for n, root in enumerate(roots, start=1):
        for name in [""] + sorted(d for d in _dirs(root) if d.startswith(".")):
            folder = root / name if name else root
            if (folder / "cur").is_dir():
                _check_folder(admin, folder, found)
        _check_quota(admin, root, found)
        now = time.monotonic()
        if now - last > 2:  # a big tree: say how far we are
            last = now
            print(f"{n}/{len(roots)} Maildirs, {found.messages} messages, "
                  f"{now - started:.0f} s", file=admin.stderr)
    admin.say(f"doctor: {len(roots)} Maildirs, {found.folders} folders, {found.messages} "
              f"messages: {found.errors} errors, {found.notes} notes")
    return found.errors == 0


def _dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _check_folder(admin: Admin, folder: Path, found: Findings) -> None:
    found.folders += 1

    def error(text: str) -> None:
        found.errors += 1
        admin.say(f"error: {folder}: {text}")

    def note(text: str) -> None:
        found.notes += 1
        admin.say(f"note: {folder}: {text}")

    files = Counter(base_of(name) for sub in ("new", "cur")
                    for name in _listdir(folder / sub) if not name.startswith("."))
    found.messages += len(files)
    twice = sorted(base for base, count in files.items() if count > 1)
    if twice:
        error(f"{len(twice)} messages present more than once, e.g. {twice[0]}")
    ours = read_records(folder / UIDLIST_FILE)
    dovecot = _dovecot(folder)
    if ours is None:
        if dovecot is not None:
            note(f"not opened yet: Dovecot's UIDs (UIDVALIDITY {dovecot}) are taken "
                 "over at the first open")
        elif files:
            note("no UID list yet: numbered at the first open")
        return
    validity, records = ours
    by_uid = Counter(uid for uid, _ in records)
    by_name = Counter(base for _, base in records)
    reused = sorted(uid for uid, count in by_uid.items() if count > 1)
    if reused:
        error(f"{len(reused)} UIDs given to more than one name, e.g. UID {reused[0]}")
    doubled = sorted(base for base, count in by_name.items() if count > 1)
    if doubled:
        error(f"{len(doubled)} names listed more than once, e.g. {doubled[0]}")
    listed = set(by_name)
    unlisted = len(files.keys() - listed)
    if unlisted:
        note(f"{unlisted} unlisted files (numbered at the next open)")
    orphans = len(listed - files.keys())
    if orphans:
        note(f"{orphans} orphan records (files gone; their UIDs are not reused)")
    if dovecot is not None and dovecot != validity:
        note(f"dovecot-uidlist has UIDVALIDITY {dovecot}, ours {validity}: rolling back "
             "to Dovecot would make clients download this folder again")


def _check_quota(admin: Admin, root: Path, found: Findings) -> None:
    counted = quota.peek(root)
    if counted is None:
        return  # counted by a scan at the first use
    actual = quota.scan(root)
    if counted != actual:
        found.notes += 1
        admin.say(f"note: {root}: quota count says {counted.messages} messages, "
                  f"{counted.storage} octets; the files are {actual.messages}, "
                  f"{actual.storage}: remove {root / quota.QUOTA_FILE} to count again")


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _dovecot(folder: Path) -> int | None:
    """The UIDVALIDITY of the folder's dovecot-uidlist, if it has a usable one."""
    try:
        taken = read_uidlist(folder / DOVECOT_UIDLIST)
    except DovecotFormatError:
        return None
    return None if taken is None else taken.validity
