"""All folders of one user (IUserStore): the entry point of the IMAP side of the store.

    store = opener.open_user_store(mailbox)        # store/opener.py; in a disk thread
    view = store.select("INBOX")                   # IMailboxView
    ...
    view.close()

Every method blocks (file-system work): the IMAP session calls it through the disk
executor, one call at a time per session. `watch` is the exception: reactor thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from zope.interface import implementer

from mailserver.config import LimitsConfig
from mailserver.interfaces import (
    CopyResult,
    FolderInfo,
    FolderStatus,
    IUserStore,
    QuotaLimits,
    QuotaUsage,
    StoreError,
)
from mailserver.logs import logger
from mailserver.store import mailboxid, notify, quota, urlauthkey
from mailserver.store.flags import Keywords
from mailserver.store.folders import Folders, normalize, parent_names
from mailserver.store.folderstate import FolderState, to_crlf
from mailserver.store.maildir import fsync_dir
from mailserver.store.modseq import ModseqUnavailable
from mailserver.store.names import crlf_size_of, split_name, stored_size_of
from mailserver.store.registry import acquire_state, forget_folders, release_state
from mailserver.store.transfer import link_into, move_into, write_all_new, write_new
from mailserver.store.uidlist import locked
from mailserver.store.view import MailboxView, header_block_of

log = logger(__name__)

#: APPENDed messages up to this size have their FETCH items kept at once (a bigger one
#: would be held twice more in memory; its items are computed at its first FETCH).
MAX_KEPT_AT_APPEND = 1 << 20


#: Folders besides INBOX a user may have when the caller names no limit (the default
#: of limits.folders_per_user, defined once in config.py).
FOLDER_LIMIT: int = LimitsConfig.folders_per_user


@implementer(IUserStore)
class UserStore:
    """The folders of the Maildir at `root`; at most `folder_limit` besides INBOX."""

    def __init__(self, root: Path, folder_limit: int = FOLDER_LIMIT,
                 limits: Callable[[], QuotaLimits] = QuotaLimits) -> None:
        self.root = root
        self.location = str(root)
        self.tree = Folders(root)
        self.folder_limit = folder_limit
        #: The user's quota, looked up at each use (the users file may change).
        self.limits = limits

    # ----------------------------------------------------------------- helpers

    def _existing(self, name: str, missing: str = "NONEXISTENT") -> tuple[str, Path]:
        name = normalize(name)
        if not self.tree.exists(name):
            text = ("Mailbox does not exist" if missing == "NONEXISTENT"
                    else "Mailbox does not exist (create it first)")
            raise StoreError(missing, text)
        return name, self.tree.path(name)

    def _state(self, path: Path) -> FolderState:
        return acquire_state(path, self.root)

    # ----------------------------------------------------------------- folders

    def folders(self) -> list[FolderInfo]:
        return self.tree.listing()

    def _check_room(self, names: list[str]) -> None:
        """StoreError LIMIT (RFC 5530) if making the folders `names` (those that do not
        exist yet) would take the user past `folder_limit`. Every folder costs a
        directory, a UID list and an index, and LIST answers with all of them.

        Not atomic with the mkdir: sessions of the user creating at the same moment
        may each pass the check, so the count can exceed the limit by what they make
        at once (a few), never grow without bound."""
        existing = set(self.tree.names())
        fresh = {n for n in names if n != "INBOX" and n not in existing}
        if fresh and len(existing) + len(fresh) > self.folder_limit:
            raise StoreError("LIMIT", f"Too many folders ({self.folder_limit} at most)")

    def create(self, name: str, special_use: str | None = None) -> None:
        name = normalize(name, create=True)
        if name != "INBOX" and not self.tree.exists(name):
            self._check_room([*parent_names(name), name])
        self.tree.create(name, special_use)

    def delete(self, name: str) -> None:
        name = normalize(name)
        path = self.tree.path(name)
        counted = [quota.folder_usage(path / sub) for sub in ("new", "cur")]
        self.tree.delete(name)
        forget_folders([path])
        if not self.tree.exists(name):
            quota.change(self.root, -sum(o for _, o in counted), -sum(n for n, _ in counted))

    def rename(self, old: str, new: str) -> None:
        old, new = normalize(old), normalize(new)
        if new != "INBOX" and self.tree.exists(old) and not self.tree.exists(new):
            # RENAME makes the new name's missing superiors (and, for INBOX, the new
            # folder itself); the folders it moves are no more than before.
            self._check_room([*(p for p in parent_names(new) if not p.startswith(old)),
                              *([new] if old == "INBOX" else [])])
        if old == "INBOX":
            self._rename_inbox(new)
        else:
            moved = self.tree.rename(old, new)
            forget_folders(path for pair in moved for path in pair)

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: INBOX's messages move to `new`; INBOX stays, empty."""
        if new == "INBOX" or self.tree.exists(new):
            raise StoreError("ALREADYEXISTS", "Target mailbox already exists")
        self.tree.create(new)
        target = self.tree.path(new)
        for sub in ("new", "cur"):
            for name in os.listdir(self.root / sub):
                try:
                    os.rename(self.root / sub / name, target / sub / name)
                except FileNotFoundError:
                    continue  # expunged or claimed meanwhile
            fsync_dir(target / sub)

    def subscribe(self, name: str) -> None:
        self.tree.set_subscribed(normalize(name), True)

    def unsubscribe(self, name: str) -> None:
        self.tree.set_subscribed(normalize(name), False)

    def subscriptions(self) -> list[str]:
        """Every subscribed name, existing or not (LSUB keeps listing names whose
        folder is gone: RFC 3501 6.3.9). Not in IUserStore: an addition."""
        return self.tree.subscriptions()

    def status(self, name: str) -> FolderStatus:
        _, path = self._existing(name)
        state = self._state(path)
        try:
            with state.lock:
                state.refresh()
                return FolderStatus(messages=len(state.uids), recent=state.recent_count(),
                                    unseen=state.unseen_count(), uid_next=state.uid_next,
                                    uid_validity=self._validity(state),
                                    size=state.total_size(),
                                    deleted=state.deleted_count())
        finally:
            release_state(state)

    def highest_modseq(self, name: str) -> int:
        """HIGHESTMODSEQ of a folder (STATUS, RFC 7162 3.1.9); starts recording its
        modseqs in this process (store/modseq.py)."""
        _, path = self._existing(name)
        state = self._state(path)
        try:
            with state.lock:
                state.refresh()
                self._validity(state)
                try:
                    state.modseqs.activate(state)
                except ModseqUnavailable:
                    raise StoreError("INUSE", "Mod-sequence database busy; try again") from None
                return state.modseqs.highest
        finally:
            release_state(state)

    def url_key(self, name: str) -> bytes:
        """URLAUTH (RFC 4467 7): the access key of mailbox `name` as it is now (its
        UIDVALIDITY is part of it: store/urlauthkey.py)."""
        name, _ = self._existing(name)
        return urlauthkey.mailbox_key(self.root, name, self.status(name).uid_validity)

    def reset_url_keys(self, name: str | None) -> None:
        """RESETKEY (RFC 4467 6.1) of one mailbox, or of all with None."""
        if name is not None:
            name, _ = self._existing(name)
        urlauthkey.reset(self.root, name, set(self.tree.names()) | {"INBOX"})

    def mailbox_id(self, name: str) -> str:
        """MAILBOXID (RFC 8474 4): store/mailboxid.py."""
        _, path = self._existing(name)
        return mailboxid.mailbox_id(path)

    @staticmethod
    def _validity(state: FolderState) -> int:
        if not state.validity:
            state.uidlist.refresh()  # an empty folder never needed its UID list yet
        return state.validity

    def select(self, name: str, read_only: bool = False) -> MailboxView:
        name, path = self._existing(name)
        state = self._state(path)
        try:
            with state.lock:
                self._validity(state)
            return MailboxView(self, name, state, read_only)
        except BaseException:
            release_state(state)
            raise

    # ----------------------------------------------------------------- writing

    def append(self, name: str, message: bytes | bytearray, flags: Sequence[str] = (),
               internal_date: float | None = None,
               items: Callable[[bytes], Mapping[str, bytes]] | None = None) -> CopyResult:
        """`items`, if given, renders FETCH items (ENVELOPE, BODYSTRUCTURE...) of the
        message as read back; they and its header block go into the folder's index now,
        while the bytes are in hand, so its first FETCH or SEARCH opens no file."""
        _, path = self._existing(name, missing="TRYCREATE")
        # The size as stored (W=): LF line ends, each counted as CRLF.
        size = len(message) - message.count(b"\r\n") + message.count(b"\n")
        self.check_quota(size, 1)
        state = self._state(path)
        try:
            with state.lock:
                letters = self._letters(state, flags)
            try:
                final = write_new(path, message, letters, internal_date)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreError("OVERQUOTA", "Not enough disk space") from None
                raise
            quota.change(self.root, crlf_size_of(final) or size, 1)
            with state.lock:
                uids = state.uidlist.assign([split_name(final)[0]])
                validity = self._validity(state)
            if items is not None and len(message) <= MAX_KEPT_AT_APPEND:
                _keep_items(state, validity, split_name(final)[0], message, items)
            return CopyResult(uid_validity=validity, source_uids=(),
                              dest_uids=tuple(uids.values()))
        finally:
            release_state(state)

    def append_many(self, name: str,
                    messages: Sequence[tuple[bytes | bytearray, Sequence[str], float | None]]
                    ) -> CopyResult:
        """MULTIAPPEND (RFC 3502): every (message, flags, date) or none; UIDs in order.
        The quota is checked for all of them at once (RFC 9208 4.3 with RFC 3502's all
        or nothing: NO [OVERQUOTA] and none stored)."""
        _, path = self._existing(name, missing="TRYCREATE")
        sizes = [len(m) - m.count(b"\r\n") + m.count(b"\n") for m, _, _ in messages]
        self.check_quota(sum(sizes), len(messages))
        state = self._state(path)
        try:
            with state.lock:
                staged = [(message, self._letters(state, flags), when)
                          for message, flags, when in messages]
            try:
                finals = write_all_new(path, staged)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreError("OVERQUOTA", "Not enough disk space") from None
                raise
            stored = sum(crlf_size_of(f) or n for f, n in zip(finals, sizes, strict=True))
            quota.change(self.root, stored, len(finals))
            with state.lock:
                bases = [split_name(final)[0] for final in finals]
                uids = state.uidlist.assign(bases)
                validity = self._validity(state)
            return CopyResult(uid_validity=validity, source_uids=(),
                              dest_uids=tuple(uids[base] for base in bases))
        finally:
            release_state(state)

    @staticmethod
    def _letters(state: FolderState, flags: Sequence[str] | frozenset[str]) -> str:
        """Info letters for `flags` in the folder of `state` (new keywords defined)."""
        keywords: Keywords = state.keywords
        keywords.reload()
        letters = keywords.letters_of(flags)
        if letters is None:
            with locked(state.uidlist.lock_path):
                keywords.add(flags)
            letters = keywords.letters_of(flags) or ""
        return letters

    def transfer(self, view: MailboxView, uids: Sequence[int], dest: str,
                 move: bool) -> CopyResult:
        """COPY or MOVE `uids` of `view` into `dest`, keeping flags and dates.

        Holds one folder's lock at a time (never both), so two sessions copying in
        opposite directions cannot deadlock.
        """
        _, dest_path = self._existing(dest, missing="TRYCREATE")
        source = view.state
        wanted = set(uids)
        with source.lock:
            view.check_uid_space()
            items = [(e.uid, e) for uid in sorted(wanted)
                     if (e := source.entries.get(uid)) is not None
                     and view.seq_of(uid) is not None and not view.is_vanished(uid)]
        if not move:
            # One quota root per user: a MOVE changes no usage, a COPY adds the copies
            # (RFC 9208 4.3: all or nothing, so it is checked before the first link).
            self.check_quota(sum(e.info.size for _, e in items), len(items))
        dest_state = self._state(dest_path)
        try:
            done: list[tuple[int, str]] = []
            for uid, entry in items:
                with dest_state.lock:
                    letters = self._letters(dest_state, entry.info.flags)
                name = self._transfer_one(source, uid, entry, dest_path, letters, move)
                if name is not None:
                    done.append((uid, name))
            if done:
                fsync_dir(dest_path / "new")
                if move:
                    fsync_dir(source.path / "cur")
                else:
                    quota.change(self.root, sum(crlf_size_of(n) or 0 for _, n in done),
                                 len(done))
            with dest_state.lock:
                assigned = dest_state.uidlist.assign([split_name(n)[0] for _, n in done])
                validity = self._validity(dest_state)
            pairs = [(uid, assigned[split_name(n)[0]]) for uid, n in done
                     if split_name(n)[0] in assigned]
            if move:
                with source.lock:
                    source.index.forget([e.base for u, e in items if u in dict(pairs)])
            return CopyResult(uid_validity=validity,
                              source_uids=tuple(u for u, _ in pairs),
                              dest_uids=tuple(d for _, d in pairs))
        finally:
            release_state(dest_state)

    @staticmethod
    def _transfer_one(source: FolderState, uid: int, entry: object, dest: Path,
                      letters: str, move: bool) -> str | None:
        """Link or rename one message; follows renames by others; None if it is gone."""
        for _ in range(3):
            with source.lock:
                current = source.entries.get(uid)
                if current is None:
                    return None
                path = source.path_of(current)
                info = current.info
                size_s = stored_size_of(current.name)
            try:
                if move:
                    return move_into(path, dest, size_s, info.size, letters, info.internal_date)
                return link_into(path, dest, size_s, info.size, letters, info.internal_date)
            except FileNotFoundError:
                with source.lock:
                    source.locate(uid)
        return None

    # ----------------------------------------------------------------- quota

    def quota(self) -> tuple[QuotaUsage, QuotaLimits]:
        return quota.usage(self.root), self.limits()

    def check_quota(self, octets: int, messages: int) -> None:
        """StoreError OVERQUOTA (RFC 9208 4.3) if `messages` more messages of `octets`
        in all would not fit; nothing is written then."""
        limits = self.limits()
        if limits.storage is None and limits.messages is None:
            return
        resource = quota.over(quota.usage(self.root), limits, octets, messages)
        if resource is not None:
            raise StoreError("OVERQUOTA", f"Quota exceeded ({resource})")

    # ----------------------------------------------------------------- notification

    def watch(self, name: str, callback: Callable[[], None]) -> Callable[[], None]:
        name = normalize(name)
        return notify.watch(self.tree.path(name), callback)


def _keep_items(state: FolderState, validity: int, base: str, message: bytes | bytearray,
                items: Callable[[bytes], Mapping[str, bytes]]) -> None:
    """Put the header block and the FETCH items of an APPENDed message into the folder's
    index, from the bytes as a later read gives them (stored with LF ends, served with
    CRLF: view.read), so they equal what its first FETCH would have computed. Only when
    the index serves the folder's current UIDVALIDITY (a session has it open)."""
    index = state.index
    if index.validity != validity:
        return
    stored = bytes(message).replace(b"\r\n", b"\n")  # what transfer.write_new wrote
    try:
        values = items(to_crlf(stored))
    except Exception as e:  # noqa: BLE001 - stored already: its first FETCH says why
        log.warn("items of appended {base} not kept: {error}", base=base, error=repr(e))
        return
    index.put_header(base, header_block_of(stored))
    for name, value in values.items():
        index.put_items(name, [(base, value)])
