"""Folder names and their Maildir++ directories: validate, list, create, delete, rename.

Names are IMAP mailbox names in modified UTF-7 (RFC 3501 5.1.3) with "." as the
hierarchy delimiter; "INBOX" in any case is the root Maildir, and a leading "INBOX."
component is spelled "INBOX" too (so "inbox.x" and "INBOX.x" are one folder). A folder
"a.b" is the directory ".a.b" in the user's root (Maildir++, as Dovecot and Courier),
marked with an empty `maildirfolder` file.

Decisions (docs/decisions/0007-imap-uids-and-index.md):
- CREATE "a.b" also creates "a" (RFC 3501 6.3.3: the server SHOULD create superior
  names). Directories made by other tools may still leave "a" missing: LIST then shows
  it as a \\Noselect placeholder.
- DELETE of a folder with children follows RFC 3501 6.3.4: its messages go and it
  becomes a \\Noselect placeholder; deleting a placeholder is refused (CANNOT).
- RENAME moves the children with it; RENAME INBOX moves INBOX's messages into the new
  folder and leaves INBOX (and its children) in place (RFC 3501 6.3.5).
- Names are refused (CANNOT) unless valid modified UTF-7 without control characters,
  "/", "\\", "*", "%", empty components, or "~" first; longer than 250 bytes (a Maildir++
  directory name holds the whole path in one component) is LIMIT.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mailserver.core.ownfiles import write_atomically
from mailserver.interfaces import SETTABLE_USES, FolderInfo, StoreError
from mailserver.logs import logger
from mailserver.store.dovecot import read_subscriptions
from mailserver.store.maildir import DIR_MODE, FILE_MODE, fsync_dir
from mailserver.store.uidlist import locked

log = logger(__name__)

DELIMITER = "."
#: A Maildir++ directory name is "." + the name, one path component (NAME_MAX 255).
MAX_NAME_BYTES = 250
SUBSCRIPTIONS_FILE = "subscriptions"
SPECIAL_USE: dict[str, str] = {
    "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
}
#: A folder's RFC 6154 attribute given at CREATE (CREATE-SPECIAL-USE), kept in the
#: folder's own directory so that RENAME moves it and DELETE removes it.
SPECIAL_USE_FILE = "mailserver-special-use"
_FORBIDDEN = set("/\\*%") | {chr(c) for c in range(0x20)} | {"\x7f"}


# --------------------------------------------------------------------------- names


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def check_mutf7(name: str) -> None:
    """Raise StoreError CANNOT unless `name` is valid modified UTF-7 (RFC 3501 5.1.3).

    Printable ASCII stands for itself except "&", which starts a base64 run (modified:
    "," for "/", no padding) of UTF-16 ended by "-"; "&-" is "&". A run must not
    encode printable ASCII, and must decode to whole, well-formed UTF-16.
    """
    i = 0
    while i < len(name):
        c = name[i]
        if not " " <= c <= "~":
            raise StoreError("CANNOT", "Mailbox name must be 7-bit modified UTF-7")
        if c != "&":
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise StoreError("CANNOT", "Invalid modified UTF-7 in mailbox name")
        run = name[i + 1:end]
        if run:
            _check_run(run)
        i = end + 1


def _check_run(run: str) -> None:
    bad = StoreError("CANNOT", "Invalid modified UTF-7 in mailbox name")
    if len(run) % 4 == 1 or not all(ch.isalnum() or ch in "+," for ch in run):
        raise bad
    try:
        raw = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if len(raw) % 2:
        raise bad
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise bad from None
    if any(" " <= ch <= "~" for ch in text):
        raise bad  # printable ASCII must not be encoded


def normalize(name: str, create: bool = False) -> str:
    """The canonical form of a folder name, or StoreError if it is not acceptable.

    `create`: a trailing delimiter is dropped (RFC 3501 6.3.3, CREATE "a." makes "a").
    """
    if create and name.endswith(DELIMITER) and len(name) > 1:
        name = name[:-1]
    if is_inbox(name):
        return "INBOX"
    if not name:
        raise StoreError("CANNOT", "Empty mailbox name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise StoreError("LIMIT", "Mailbox name too long")
    if any(c in _FORBIDDEN for c in name):
        raise StoreError("CANNOT", "Mailbox name contains invalid characters")
    parts = name.split(DELIMITER)
    if any(not p for p in parts):
        raise StoreError("CANNOT", "Mailbox name has an empty hierarchy level")
    if parts[0].startswith("~"):
        raise StoreError("CANNOT", "Mailbox name must not start with ~")
    check_mutf7(name)
    if is_inbox(parts[0]):
        parts[0] = "INBOX"
    return DELIMITER.join(parts)


def parent_names(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b"]."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Folders:
    """The folders of one user's Maildir at `root` (blocking file-system work)."""

    root: Path

    def path(self, name: str) -> Path:
        """The directory of a normalized name (INBOX is the root itself)."""
        if name == "INBOX":
            return self.root
        path = self.root / (DELIMITER + name)
        # Belt and braces: normalize() already refused "/" and empty components.
        if path.parent != self.root:
            raise StoreError("CANNOT", "Invalid mailbox name")
        return path

    def exists(self, name: str) -> bool:
        return os.path.isdir(self.path(name) / "cur")

    def names(self) -> list[str]:
        """Every selectable folder except INBOX, from the directory listing."""
        found = []
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.startswith(DELIMITER) or entry in (".", ".."):
                continue
            name = entry[1:]
            try:
                if normalize(name) != name:
                    continue
            except StoreError:
                log.info("skipping folder directory {entry}: not a valid name", entry=entry)
                continue
            if os.path.isdir(self.root / entry / "cur"):
                found.append(name)
        return found

    def listing(self) -> list[FolderInfo]:
        """INBOX first, then the others sorted, with \\Noselect placeholders."""
        real = set(self.names())
        every = set(real)
        for name in real:
            every.update(parent_names(name))
        subscribed = set(self.subscriptions())
        parents = set()
        for name in every:
            parents.update(parent_names(name))
        result = [FolderInfo(name="INBOX", has_children="INBOX" in parents,
                             subscribed="INBOX" in subscribed)]
        for name in sorted(every - {"INBOX"}):
            result.append(FolderInfo(
                name=name, has_children=name in parents,
                special_use=SPECIAL_USE.get(name) or (
                    self.special_use(name) if name in real else None),
                selectable=name in real, subscribed=name in subscribed))
        return result

    def has_children(self, name: str) -> bool:
        prefix = name + DELIMITER
        return any(n.startswith(prefix) for n in self.names())

    # ----------------------------------------------------------------- create

    def special_use(self, name: str) -> str | None:
        """The attribute CREATE gave the folder (RFC 6154 5.2), or None."""
        try:
            text = (self.path(name) / SPECIAL_USE_FILE).read_text("ascii", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return text.strip() if text.strip() in SETTABLE_USES else None

    def create(self, name: str, special_use: str | None = None) -> None:
        """CREATE (RFC 3501 6.3.3), superiors included; `special_use` one of
        SETTABLE_USES (RFC 6154 5.2 CREATE-SPECIAL-USE)."""
        if name == "INBOX":
            raise StoreError("ALREADYEXISTS", "INBOX always exists")
        if self.exists(name):
            raise StoreError("ALREADYEXISTS", "Mailbox already exists")
        for parent in parent_names(name):
            if parent != "INBOX" and not self.exists(parent):
                self._make(parent)
        self._make(name)
        if special_use is not None:
            write_atomically(self.path(name) / SPECIAL_USE_FILE, special_use.encode() + b"\n",
                             FILE_MODE)

    def _make(self, name: str) -> None:
        path = self.path(name)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise StoreError("CANNOT", "Mailbox name is in use by a file") from None
        for sub in ("tmp", "new", "cur"):  # cur/ last: it marks the folder as complete
            try:
                os.mkdir(path / sub, DIR_MODE)
            except FileExistsError:
                pass
        os.close(os.open(path / "maildirfolder", os.O_WRONLY | os.O_CREAT, FILE_MODE))
        fsync_dir(path)
        fsync_dir(self.root)

    # ----------------------------------------------------------------- delete

    def delete(self, name: str) -> None:
        """DELETE (RFC 3501 6.3.4)."""
        if name == "INBOX":
            raise StoreError("CANNOT", "INBOX cannot be deleted")
        if not self.exists(name):
            if self.has_children(name):
                raise StoreError("CANNOT", "Mailbox has inferior names and is \\Noselect")
            raise StoreError("NONEXISTENT", "Mailbox does not exist")
        self._remove_tree(self.path(name))

    def _remove_tree(self, path: Path) -> None:
        """Rename out of sight first (atomic for every reader), then remove."""
        trash = self.root / f"mailserver-deleting.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise StoreError("NONEXISTENT", "Mailbox does not exist") from None
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    # ----------------------------------------------------------------- rename

    def rename(self, old: str, new: str) -> list[tuple[Path, Path]]:
        """RENAME (RFC 3501 6.3.5) of a non-INBOX folder and its children.

        Returns the (old, new) directory pairs moved, for the caller's bookkeeping.
        """
        if new == "INBOX":
            raise StoreError("ALREADYEXISTS", "INBOX already exists")
        if self.exists(new):
            raise StoreError("ALREADYEXISTS", "Target mailbox already exists")
        if new.startswith(old + DELIMITER):
            raise StoreError("CANNOT", "Cannot rename a mailbox to its own child")
        if not self.exists(old):
            raise StoreError("NONEXISTENT", "Mailbox does not exist")
        moves = [(old, new)]
        prefix = old + DELIMITER
        moves += [(n, new + n[len(old):]) for n in self.names() if n.startswith(prefix)]
        for _, target in moves:
            if os.path.lexists(self.path(target)):
                raise StoreError("ALREADYEXISTS", f"Mailbox {target} already exists")
            if len(target.encode()) > MAX_NAME_BYTES:
                raise StoreError("LIMIT", "Mailbox name too long")
        for parent in parent_names(new):
            if parent != "INBOX" and not self.exists(parent) and not parent.startswith(old):
                self._make(parent)
        done = []
        for source, target in moves:
            os.rename(self.path(source), self.path(target))
            done.append((self.path(source), self.path(target)))
        fsync_dir(self.root)
        return done

    # ----------------------------------------------------------------- subscriptions

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS_FILE).read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        # Dovecot 2.3's "V\t2" form too (a tree Dovecot served); we write version 1,
        # which every Dovecot reads.
        return read_subscriptions(text)

    def set_subscribed(self, name: str, on: bool) -> None:
        """SUBSCRIBE/UNSUBSCRIBE (RFC 3501 6.3.6/6.3.7): independent of existence.

        The file is Dovecot's (one name per line), rewritten by temp-and-rename under
        a lock so two sessions subscribing at once both win.
        """
        path = self.root / SUBSCRIPTIONS_FILE
        with locked(self.root / (SUBSCRIPTIONS_FILE + ".lock")):
            names = self.subscriptions()
            if on and name not in names:
                names.append(name)
            elif not on and name in names:
                names = [n for n in names if n != name]
            else:
                if not on:
                    raise StoreError("NONEXISTENT", "Not subscribed to that mailbox")
                return
            tmp = path.with_name(f"{SUBSCRIPTIONS_FILE}.tmp.{os.getpid()}")
            tmp.write_text("".join(n + "\n" for n in names), "utf-8")
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
