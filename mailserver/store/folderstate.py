"""What one process knows of one Maildir folder, shared by every session that opens it.

A `FolderState` maps the folder's files to UIDs and MessageInfo, and notices what
changed on disk since it last looked: files delivered (by our SMTP in another process,
by Dovecot's tools, by anything), renamed (flags, new/ -> cur/) or removed (expunged by
another session or process, POP3 DELE). All sessions of the process share one state
per folder, so a warm SELECT of 100,000 messages copies a list instead of reading a
directory, and each session's sync only looks at the change log since its last sync.

Threads: every method is called with `lock` held (a threading.Lock: the IMAP sessions
call in from several disk threads). Other processes are handled by the file system: the
UID list has its cross-process lock, renames and unlinks are atomic, and a rename that
fails with ENOENT means another process renamed the file first (we rescan and retry).

Change detection: Maildir changes only by entries in new/ and cur/ appearing and going,
and that changes the directory's mtime. A refresh stats both directories and lists only
one that changed, or one that changed too shortly before its last listing to be trusted:
timestamps are coarse, so a second change in the same tick would leave the mtime as it
was (Dovecot's guard: one second where mtimes are whole seconds; 25 ms, more than a
clock tick, where they have nanoseconds). A listing is compared with the last as sets
(in C), so only the names that came or went are parsed.
"""

from __future__ import annotations

import bisect
import gc
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from mailserver.interfaces import MessageInfo
from mailserver.logs import logger
from mailserver.store.flags import Keywords
from mailserver.store.index import FolderIndex
from mailserver.store.messagefile import (  # noqa: F401 - importable from here too
    Entry,
    crlf_length,
    file_crlf_size,
    make_info,
    to_crlf,
)
from mailserver.store.modseq import FolderModseqs
from mailserver.store.names import COMMON_NAME, base_of, crlf_size_of, name_time, split_name
from mailserver.store.uidlist import UidList

log = logger(__name__)

#: A directory modified within this many ns of our look is listed again next time.
_SETTLE_NS = 1_100_000_000
_FINE_SETTLE_NS = 25_000_000  # > one tick of the coarse clock at HZ=100
#: The change log keeps this many records before it forgets the older half.
_LOG_LIMIT = 200_000


# --------------------------------------------------------------------------- state


class FolderState:
    """The shared, in-process view of one folder's files (see module docstring)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        #: `path` as a str: os.path.join on the read path costs ~1 us, Path / ~20 us.
        self.path_str = os.fspath(path)
        self.root = root
        self.lock = threading.Lock()
        self.uidlist = UidList(path, root)
        self.keywords = Keywords(path)
        self.index = FolderIndex(path)
        #: RFC 7162 modseqs, shared with other processes (store/modseq.py).
        self.modseqs = FolderModseqs(path)
        #: Bulk loads and forgets so far: the change log does not name what they did.
        self.loads = 0
        self.entries: dict[int, Entry] = {}
        #: Ascending UIDs and their MessageInfo, in step (a session copies `infos`).
        self.uids: list[int] = []
        self.infos: list[MessageInfo] = []
        self.names: dict[str, dict[str, int]] = {"new": {}, "cur": {}}
        #: Every change (add, flags, expunge) bumps modseq and logs (modseq, uid).
        self.modseq = 0
        self.log: list[tuple[int, int]] = []
        self.log_floor = 0
        #: (inode, mtime) of new/ and cur/ when last listed, and whether that listing
        #: came late enough after the mtime to trust an unchanged mtime later.
        self._dirs: dict[str, tuple[int, int] | None] = {"new": None, "cur": None}
        self._settled = {"new": False, "cur": False}
        self._list_stamp: tuple[int, int] | None = None
        self._unseen: tuple[int, int] = (-1, 0)
        self._size: tuple[int, int] = (-1, 0)
        self._deleted: tuple[int, int] = (-1, 0)
        #: The UIDVALIDITY that `entries` (and `names`, and the index) were numbered
        #: under: every UID in them means something only in that UID space.
        self.numbered_validity = 0
        #: Sessions and watchers holding this state (the registry keeps it while > 0).
        self.users = 0

    # ----------------------------------------------------------------- public helpers

    @property
    def validity(self) -> int:
        return self.uidlist.validity

    @property
    def uid_next(self) -> int:
        return max(self.uidlist.next_uid, (self.uids[-1] + 1) if self.uids else 1)

    def exists(self) -> bool:
        return os.path.isdir(self.path / "cur")

    def unseen_count(self) -> int:
        if self._unseen[0] != self.modseq:
            count = sum(1 for info in self.infos if "\\Seen" not in info.flags)
            self._unseen = (self.modseq, count)
        return self._unseen[1]

    def deleted_count(self) -> int:
        """STATUS DELETED (RFC 9051 6.3.11): messages with \\Deleted, once per change."""
        if self._deleted[0] != self.modseq:
            count = sum(1 for info in self.infos if "\\Deleted" in info.flags)
            self._deleted = (self.modseq, count)
        return self._deleted[1]

    def total_size(self) -> int:
        """STATUS SIZE (RFC 8438): the RFC822.SIZEs added up, once per change."""
        if self._size[0] != self.modseq:
            self._size = (self.modseq, sum(info.size for info in self.infos))
        return self._size[1]

    def recent_count(self) -> int:
        """Messages nobody has claimed yet (still in new/): STATUS RECENT."""
        return len(self.names["new"])

    def path_of(self, entry: Entry) -> str:
        return f"{self.path_str}/{entry.sub}/{entry.name}"

    def position(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def changes_since(self, modseq: int) -> set[int] | None:
        """UIDs changed after `modseq`; None if the log no longer reaches back that far."""
        if modseq < self.log_floor:
            return None
        start = bisect.bisect_right(self.log, (modseq, 2**32))
        return {uid for _, uid in self.log[start:]}

    def record_modseqs(self) -> None:
        """Give the changes seen since the last call their modseqs (store/modseq.py;
        nothing unless a client used CONDSTORE on this folder in this process)."""
        self.modseqs.record(self)

    def _bump(self, uid: int) -> None:
        self.modseq += 1
        self.log.append((self.modseq, uid))
        if len(self.log) > _LOG_LIMIT:
            half = len(self.log) // 2
            self.log_floor = self.log[half - 1][0]
            del self.log[:half]

    # ----------------------------------------------------------------- refresh

    def refresh(self, force: bool = False) -> bool:
        """Bring the state up to date with the disk; True if anything changed."""
        try:
            st_new = os.stat(self.path / "new")
            st_cur = os.stat(self.path / "cur")
        except (FileNotFoundError, NotADirectoryError):
            self._dirs = {"new": None, "cur": None}
            return self._apply(set(), set())  # the folder was deleted: all expunged
        list_stamp = self._uidlist_stamp()
        if list_stamp is None or list_stamp != self._list_stamp:
            # The UID list changed (another process numbered files) or was replaced
            # (folder deleted and created again, list lost).
            self.uidlist.refresh()
            self._list_stamp = self._uidlist_stamp()
        # Compared with the UIDVALIDITY our entries were numbered under, not with the
        # list's before this refresh: APPEND, COPY and STATUS re-read the list too, so
        # a new list (the folder deleted and created again) is often read first there,
        # and the new UID 1 must not be taken for a rename of the old UID 1 (which kept
        # the old message's RFC822.SIZE and INTERNALDATE).
        self._check_validity()
        stamps = {"new": (st_new.st_ino, st_new.st_mtime_ns),
                  "cur": (st_cur.st_ino, st_cur.st_mtime_ns)}
        if any(old is not None and old[0] != stamps[sub][0]
               for sub, old in self._dirs.items()):
            self._forget_all()  # the folder was deleted and created again
        todo = [sub for sub in ("new", "cur")
                if force or stamps[sub] != self._dirs[sub] or not self._settled[sub]]
        if not todo:
            return False
        now = time.time_ns()
        listings: dict[str, set[str] | None] = {"new": None, "cur": None}
        # new/ before cur/: a file moved new/ -> cur/ meanwhile is seen at least once
        # (or, if only new/ is listed, looked for again before it counts as expunged).
        for sub in todo:
            mtime = stamps[sub][1]
            # Whole-second mtimes (ext3, some NFS) need the full second; a file system
            # with fine timestamps only the kernel's tick (ms), rounded up generously.
            window = _SETTLE_NS if mtime % 1_000_000_000 == 0 else _FINE_SETTLE_NS
            self._settled[sub] = now - mtime > window
            self._dirs[sub] = stamps[sub]
            listings[sub] = _listdir(self.path / sub)
        return self._apply(listings["new"], listings["cur"])

    def _uidlist_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.uidlist.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size)

    def unsettle(self, *subs: str) -> None:
        """Our own renames changed these directories (default both): list them again
        next time (another process may have changed them in the same tick)."""
        for sub in subs or ("new", "cur"):
            self._settled[sub] = False

    def _check_validity(self) -> bool:
        """Forget everything numbered under another UIDVALIDITY than the list's now
        (RFC 3501 2.3.1.1: the old UIDs are void); True if something was forgotten."""
        validity = self.uidlist.validity
        if not validity or validity == self.numbered_validity:
            return False
        forgot = bool(self.numbered_validity)
        if forgot:
            log.info("UIDVALIDITY of {path} changed from {old} to {new}: its messages "
                     "are numbered again", path=self.path_str, old=self.numbered_validity,
                     new=validity)
            self._forget_all()
        self.numbered_validity = validity
        self.index.bind(validity)
        return forgot

    def _forget_all(self) -> None:
        """Every message we knew is gone (the UIDs are void): views see them expunged
        and the files, listed again, come back with UIDs of the new UIDVALIDITY. The
        folder's other caches go too: keyword letters and the header/size index
        describe the old folder, and their files may be the same size and age."""
        for uid in list(self.entries):
            self._remove(uid)
        self.names = {"new": {}, "cur": {}}
        self._dirs = {"new": None, "cur": None}
        self._settled = {"new": False, "cur": False}
        self.index.discard()
        self.index = FolderIndex(self.path)
        self.loads += 1
        self.modseqs.forget()
        self.keywords = Keywords(self.path)

    def _apply(self, new_names: set[str] | None, cur_names: set[str] | None) -> bool:
        """Take in fresh listings of new/ and cur/ (None: that one did not change)."""
        if not self.entries and (new_names or cur_names):
            self._load(new_names or set(), cur_names or set())  # the rest: one by one
            self._check_validity()  # nothing to forget: it only records the list's
        gone: dict[int, Entry] = {}
        added: list[tuple[str, str]] = []
        for sub, listing in (("new", new_names), ("cur", cur_names)):
            if listing is None:
                continue
            known = self.names[sub]
            for name in known.keys() - listing:
                old_uid = known.pop(name)
                entry = self.entries.get(old_uid)
                if entry is not None and entry.sub == sub and entry.name == name:
                    gone[old_uid] = entry
            added.extend((sub, name) for name in listing - known.keys()
                         if not name.startswith("."))
        if not gone and not added:
            return False
        unknown: list[tuple[str, str, str]] = []
        found: list[tuple[int, str, str, str]] = []
        refreshed = False
        for sub, name in added:
            base = base_of(name)
            uid: int | None = self.uidlist.by_base.get(base)
            if uid is None and not refreshed:
                self.uidlist.refresh()
                refreshed = True
                uid = self.uidlist.by_base.get(base)
            if uid is None:
                unknown.append((sub, name, base))
            else:
                found.append((uid, sub, name, base))
        if unknown:
            found.extend(self._number(unknown))
        if refreshed or unknown:
            # Reading the list again found it replaced (another process deleted the
            # folder and made it again): these UIDs are of the new list, ours of the
            # old one. Start over with the new list.
            if self._check_validity():
                return self._relist()
        found.sort()
        for uid, sub, name, base in found:
            self._place(uid, sub, name, base, gone)
        if gone:
            self._confirm_gone(gone)
        return True

    def _relist(self) -> bool:
        """List new/ and cur/ afresh after _forget_all (the listing in hand was
        diffed against the old UID space)."""
        for sub in ("new", "cur"):
            try:
                st = os.stat(self.path / sub)
            except OSError:
                continue
            self._dirs[sub] = (st.st_ino, st.st_mtime_ns)
        self._apply(_listdir(self.path / "new"), _listdir(self.path / "cur"))
        return True

    def _load(self, new_names: set[str], cur_names: set[str]) -> None:
        """The first listing of a folder, in bulk: names of the common form whose UIDs
        the list already has are parsed in C and placed at once; the caller's diff
        then sees only the rest (new files, foreign names)."""
        self.uidlist.refresh()
        self.keywords.reload()
        by_base = self.uidlist.by_base
        flags_of = self.keywords.flags_of
        names_of = self.names
        found: dict[int, tuple[str, tuple[str, str, str, str, str, str]]] = {}
        fresh: list[tuple[str, tuple[str, str, str, str, str, str]]] = []
        for sub, names in (("new", new_names), ("cur", cur_names)):  # cur/ wins a tie
            known = names_of[sub]
            for match in COMMON_NAME.findall("\n".join(names)):
                uid = by_base.get(match[1])
                if uid is not None:
                    known[match[0]] = uid
                    found[uid] = (sub, match)
                else:
                    fresh.append((sub, match))
        if fresh:
            # A folder seen for the first time (or a big delivery burst): number its
            # files in one go, in order of the time in their names. (Foreign names,
            # if any, follow one by one, after these.)
            fresh.sort(key=lambda item: (int(item[1][2]), int(item[1][3]), item[1][0]))
            assigned = self.uidlist.assign([match[1] for _, match in fresh])
            for sub, match in fresh:
                uid = assigned.get(match[1])
                if uid is not None:
                    names_of[sub][match[0]] = uid
                    found[uid] = (sub, match)
        if not found:
            return
        entries = self.entries
        ordered = sorted(found)
        infos = []
        known_flags: dict[str, frozenset[str]] = {}
        # 200k objects at once: the cyclic GC would walk the growing heap again and
        # again meanwhile (~20% of the time) although none of them can form a cycle.
        paused = gc.isenabled()
        gc.disable()
        try:
            for uid in ordered:
                sub, (name, base, secs, usecs, size, letters) = found[uid]
                flags = known_flags.get(letters)
                if flags is None:
                    flags = known_flags[letters] = flags_of(letters)
                info = make_info(uid, flags, int(size), int(secs) + int(usecs) / 1e6)
                entries[uid] = Entry(uid, base, sub, name, info)
                infos.append(info)
        finally:
            if paused:
                gc.enable()
        self.loads += 1
        self.uids.extend(ordered)  # empty before: _load runs on an empty state only
        self.infos.extend(infos)
        self.modseq += 1  # views compare against uids, not the log, for additions

    def _number(self, unknown: list[tuple[str, str, str]]) -> list[tuple[int, str, str, str]]:
        """Give new files UIDs in order of delivery time (the name's, else the mtime)."""
        def arrival(item: tuple[str, str, str]) -> tuple[float, str]:
            sub, name, _ = item
            when = name_time(name)
            if when is None:
                when = self._mtime(sub, name) or 0.0
            return (when, name)

        unknown.sort(key=arrival)
        uids = self.uidlist.assign([base for _, _, base in unknown])
        return [(uids[base], sub, name, base) for sub, name, base in unknown if base in uids]

    def _mtime(self, sub: str, name: str) -> float | None:
        try:
            return os.stat(self.path / sub / name).st_mtime
        except OSError:
            return None

    def _place(self, uid: int, sub: str, name: str, base: str, gone: dict[int, Entry]) -> None:
        entry = self.entries.get(uid)
        if entry is not None:
            if uid not in gone and entry.sub == "cur" and sub == "new":
                # Listed in both (moved new/ -> cur/ while we listed): cur/ wins.
                self.names[sub][name] = uid
                return
            gone.pop(uid, None)
            self.names[sub][name] = uid
            self._rename_entry(entry, sub, name)
            return
        if base != base_of(name) or uid in self.entries:
            return
        self.names[sub][name] = uid
        info = self._new_info(uid, sub, name, base)
        if info is None:
            del self.names[sub][name]
            return
        entry = Entry(uid, base, sub, name, info)
        self.entries[uid] = entry
        if not self.uids or uid > self.uids[-1]:
            self.uids.append(uid)
            self.infos.append(info)
        else:
            i = bisect.bisect_left(self.uids, uid)
            self.uids.insert(i, uid)
            self.infos.insert(i, info)
        self._bump(uid)

    def _new_info(self, uid: int, sub: str, name: str, base: str) -> MessageInfo | None:
        letters = split_name(name)[1]
        if not letters.isupper() and self.keywords.missing_letters(letters):
            self.keywords.reload()
        flags = self.keywords.flags_of(letters)
        size = crlf_size_of(name)
        when = name_time(name)
        if size is None or when is None:
            cached = self.index.meta(base)
            if cached is not None:
                size = size if size is not None else cached[0]
                when = when if when is not None else cached[1]
        if size is None or when is None:
            path = self.path / sub / name
            try:
                if size is None:
                    size = file_crlf_size(path)
                if when is None:
                    when = os.lstat(path).st_mtime
            except FileNotFoundError:
                return None  # gone again already: the next refresh finds its new name
            except OSError:
                size, when = size or 0, when or 0.0  # a symlink, a directory: unreadable
            self.index.put_meta(base, size, when)
        return make_info(uid, flags, size, when)

    def _rename_entry(self, entry: Entry, sub: str, name: str) -> None:
        """The file of `entry` is now sub/name: update its flags if they changed."""
        old = self.names[entry.sub]
        if old.get(entry.name) == entry.uid and (entry.sub, entry.name) != (sub, name):
            del old[entry.name]
        entry.sub, entry.name = sub, name
        letters = split_name(name)[1]
        if not letters.isupper() and self.keywords.missing_letters(letters):
            self.keywords.reload()
        flags = self.keywords.flags_of(letters)
        if flags != entry.info.flags:
            info = entry.info
            self._set_info(entry, make_info(info.uid, flags, info.size, info.internal_date))

    def _set_info(self, entry: Entry, info: MessageInfo) -> None:
        entry.info = info
        i = self.position(entry.uid)
        if i is not None:
            self.infos[i] = info
        self._bump(entry.uid)

    def _confirm_gone(self, gone: dict[int, Entry]) -> None:
        """Before calling messages expunged, list again: a rename racing with our
        readdir may hide a file from one listing (POSIX leaves that open)."""
        listing = {}
        for sub in ("new", "cur"):
            for name in _listdir(self.path / sub):
                listing[base_of(name)] = (sub, name)
        expunged = []
        for uid, entry in gone.items():
            where = listing.get(entry.base)
            if where is not None:
                sub, name = where
                self.names[sub][name] = uid
                self._rename_entry(entry, sub, name)
            else:
                self._remove(uid)
                expunged.append(entry.base)
        self.index.forget(expunged)  # expunged elsewhere: their cached headers go too

    def _remove(self, uid: int) -> None:
        entry = self.entries.pop(uid, None)
        if entry is None:
            return
        names = self.names[entry.sub]
        if names.get(entry.name) == uid:
            del names[entry.name]
        i = self.position(uid)
        if i is not None:
            del self.uids[i]
            del self.infos[i]
        self._bump(uid)

    # ----------------------------------------------------------------- our own changes

    def forget(self, uids: Iterable[int]) -> None:
        """We removed these files ourselves (EXPUNGE, MOVE)."""
        subs = set()
        for uid in uids:
            entry = self.entries.get(uid)
            if entry is not None:
                subs.add(entry.sub)
                self._remove(uid)
        if subs:
            self.unsettle(*subs)

    def moved(self, entry: Entry, sub: str, name: str, flags: frozenset[str]) -> MessageInfo:
        """We renamed entry's file to sub/name (with `flags`); returns its new info."""
        old = self.names[entry.sub]
        if old.get(entry.name) == entry.uid:
            del old[entry.name]
        self.names[sub][name] = entry.uid
        self.unsettle(entry.sub, sub)
        entry.sub, entry.name = sub, name
        if flags != entry.info.flags:
            info = entry.info
            self._set_info(entry, make_info(info.uid, flags, info.size, info.internal_date))
        return entry.info

    def unclaimed(self) -> list[int]:
        """The UIDs still in new/: \\Recent, but nobody's yet. A read-only view (EXAMINE)
        shows them as \\Recent without claiming them (RFC 3501 6.3.2: EXAMINE returns
        the same output as SELECT and MUST NOT cause messages to lose \\Recent)."""
        return [uid for name, uid in self.names["new"].items()
                if (entry := self.entries.get(uid)) is not None
                and entry.sub == "new" and entry.name == name]

    def claim_new(self) -> list[int]:
        """Move every known file of new/ to cur/: each rename that succeeds is a \\Recent
        claim for the caller (RFC 3501 2.3.2: one session only, across processes too)."""
        claimed = []
        for name, uid in list(self.names["new"].items()):
            entry = self.entries.get(uid)
            if entry is None or entry.sub != "new" or entry.name != name:
                del self.names["new"][name]
                continue
            target = name if ":" in name else name + ":2,"
            try:
                os.rename(self.path / "new" / name, self.path / "cur" / target)
            except FileNotFoundError:
                continue  # another session or process claimed it; a rescan finds it
            self.moved(entry, "cur", target, entry.info.flags)
            claimed.append(uid)
        return claimed

    def locate(self, uid: int) -> Entry | None:
        """The entry of `uid` after a rescan (its file was renamed under us), or None."""
        self.refresh(force=True)
        return self.entries.get(uid)


def _listdir(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return set()
