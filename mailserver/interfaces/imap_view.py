"""The IMAP view of a Maildir: IUserStore, IMailboxView and what they return.

Implemented by mailserver.store (folders, UID lists, index, notify); used by
mailserver.imap. Folder names are IMAP mailbox names exactly as on the wire after
quoting is undone: modified UTF-7 (RFC 3501 5.1.3), "." as the hierarchy delimiter
(Maildir++ and Dovecot's default), "INBOX" in any case for the root Maildir. On disk a
folder "a.b" is the directory ".a.b" (Maildir++), named in the same modified UTF-7.

Every method that touches the disk blocks: the IMAP session calls it in a disk thread
(context.disk), one call at a time per session. Implementations are thread-safe
across sessions and processes (UID lists are updated under a lock file).

Part of mailserver.interfaces, which re-exports every name here: import them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zope.interface import Attribute, Interface


class StoreError(Exception):
    """A refused store operation; `code` is the IMAP response code to send.

    NONEXISTENT, ALREADYEXISTS, CANNOT, TRYCREATE, LIMIT, OVERQUOTA, SERVERBUG, or ""
    (plain NO). `text` is one human line.
    """

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What the index knows of one message without opening it."""

    uid: int
    #: System flags as "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft" (this
    #: case), plus keywords as first stored. Never "\\Recent": see `recent`.
    flags: frozenset[str]
    #: RFC822.SIZE: octets as sent to clients (CRLF line ends).
    size: int
    #: INTERNALDATE as seconds since the epoch (UTC); the arrival time.
    internal_date: float
    #: This session is the one that holds \Recent for it (RFC 3501 2.3.2).
    recent: bool = False


#: What CREATE ... (USE (...)) may give a folder (RFC 6154 5.2): the attributes of real
#: folders (\All and \Flagged name virtual ones, which we do not have).
SETTABLE_USES = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")


@dataclass(frozen=True)
class FolderInfo:
    name: str
    #: RFC 6154 attribute ("\\Sent", "\\Drafts", "\\Trash", "\\Junk") or None.
    special_use: str | None = None
    has_children: bool = False
    #: False for a hierarchy placeholder (\Noselect): "a" when only "a.b" exists.
    selectable: bool = True
    subscribed: bool = False


@dataclass(frozen=True)
class FolderStatus:
    messages: int
    recent: int
    unseen: int
    uid_next: int
    uid_validity: int
    #: RFC 8438 STATUS SIZE: the messages' RFC822.SIZEs added up.
    size: int = 0
    #: RFC 9051 STATUS DELETED: messages with \Deleted.
    deleted: int = 0


@dataclass(frozen=True)
class Changes:
    """What changed since the view last synced, in the order to report it."""

    #: Sequence numbers to send as `* n EXPUNGE`, in sending order (each one already
    #: accounts for those before it).
    expunged: tuple[int, ...] = ()
    #: The new EXISTS count, or None if no message was added.
    exists: int | None = None
    #: Messages whose flags changed (their new MessageInfo), for `* n FETCH (FLAGS ...)`.
    flags_changed: tuple[MessageInfo, ...] = ()
    #: How many of the added messages are \Recent for this view.
    recent: int = 0
    #: The UIDs of `expunged`, ascending: QRESYNC reports them as VANISHED (RFC 7162 3.2.10).
    expunged_uids: tuple[int, ...] = ()
    #: uid -> modseq of `flags_changed`, when the session uses CONDSTORE (RFC 7162 3.2.4).
    modseqs: dict[int, int] | None = None


@dataclass(frozen=True)
class CopyResult:
    """For UIDPLUS's COPYUID/APPENDUID (RFC 4315)."""

    uid_validity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]


class IMailboxView(Interface):
    """One session's open (SELECTed or EXAMINEd) folder."""

    uid_validity = Attribute("int")
    uid_next = Attribute("int: the next UID to be assigned")
    read_only = Attribute("bool")
    messages = Attribute(
        "list[MessageInfo]: the messages as this session knows them, sequence number "
        "n at index n-1. Changes only in sync() and in this view's own operations.")

    def sync(report_expunges: bool = True) -> Changes:
        """Look at the disk (new deliveries, other sessions' flag changes and
        expunges) and bring `messages` up to date. With report_expunges False (during
        FETCH, STORE, SEARCH: RFC 3501 7.4.1) vanished messages stay in `messages`."""

    def read(uid: int) -> bytes:
        """The whole message, CRLF line ends (StoreError NONEXISTENT if it is gone)."""

    def header(uid: int) -> bytes:
        """The header block including the blank line, CRLF; from the index cache when
        it has it, so header FETCHes on big folders do not open every file."""

    def cached_items(name: str, uids: Sequence[int]) -> dict[int, bytes]:
        """uid -> the kept value of FETCH item `name` (ENVELOPE, BODYSTRUCTURE, a
        HEADER.FIELDS list, as rendered) for those of `uids` the folder's cache has."""

    def remember_items(name: str, values: Sequence[tuple[int, bytes]]) -> None:
        """Keep these (uid, rendered value) of item `name` in the folder's cache, shared
        by every session and process and kept across restarts (a cache: may drop them)."""

    def store(uids: Sequence[int], mode: str, flags: Sequence[str]) -> list[MessageInfo]:
        """mode "+", "-" or "=". Returns the new MessageInfo of each message whose
        flags changed, and updates `messages`. Flags compared case-insensitively."""

    def expunge(uids: Sequence[int] | None = None) -> Changes:
        """Remove the \\Deleted messages (only those among `uids` if given: UID
        EXPUNGE); returns what to report, `messages` updated."""

    def copy(uids: Sequence[int], dest: str) -> CopyResult:
        """Copy with flags (StoreError TRYCREATE if dest does not exist)."""

    def move(uids: Sequence[int], dest: str) -> tuple[CopyResult, Changes]:
        """RFC 6851: copy, then expunge the sources; the Changes report the expunges."""

    def close() -> None:
        """The session deselects; stop watching."""

    recent_count = Attribute("int: messages \\Recent for this view (SELECT's RECENT)")
    keywords = Attribute("Sequence[str]: the folder's keywords, for FLAGS and PERMANENTFLAGS")
    can_create_keywords = Attribute("bool: room for another keyword (26 letters at most)")
    validity_changed = Attribute(
        "bool: the UID list was lost and the folder got a new UIDVALIDITY; after sync() "
        "the session must end (* BYE): its UIDs mean nothing any more")

    def first_unseen() -> int | None:
        """Sequence number of the first message without \\Seen (SELECT's [UNSEEN n])."""

    def seq_of(uid: int) -> int | None:
        """The sequence number of `uid` in `messages`, or None."""

    def is_vanished(uid: int) -> bool:
        """Expunged by someone else, but still in `messages` until reported."""

    def uid_of_base(base: str) -> int | None:
        """The UID of the message whose Maildir file name starts with `base` (the part
        before ":2,", which names one message for good), or None if this view does not
        have it (not numbered yet, expunged, another folder). For the JSON API: a
        webhook's "received" event names a message so, before any UID is known."""


class IModseqView(IMailboxView):
    """A view with mod-sequences (RFC 7162 CONDSTORE/QRESYNC): every flag change,
    arrival and expunge, by any session, process or POP3, gets a higher modseq.
    Every method blocks (a disk thread)."""

    condstore = Attribute("bool: the session enabled CONDSTORE (syncs carry modseqs)")
    highest_modseq = Attribute("int: HIGHESTMODSEQ as of the last sync")

    def enable_condstore() -> int:
        """Track modseqs from now on; returns HIGHESTMODSEQ."""

    def modseqs_of(uids: Sequence[int]) -> dict[int, int]:
        """uid -> modseq of these UIDs (ascending), for FETCH MODSEQ."""

    def changed_since(modseq: int) -> dict[int, int]:
        """uid -> modseq of the messages changed after `modseq` (from an index)."""

    def vanished_since(modseq: int, known: list[tuple[int, int]] | None
                       ) -> list[tuple[int, int]]:
        """UID ranges expunged after `modseq` within `known` (None: all below UIDNEXT)."""

    def store_unchanged_since(uids: Sequence[int], mode: str, flags: Sequence[str],
                              unchanged_since: int) -> tuple[list[MessageInfo], list[int]]:
        """STORE (UNCHANGEDSINCE n): (changed infos, UIDs refused as MODIFIED)."""


class IUserStore(Interface):
    """All folders of one user (data_dir/mail/DOMAIN/LOCALPART/)."""

    def highest_modseq(name: str) -> int:
        """HIGHESTMODSEQ of folder `name` (RFC 7162 3.1.9 STATUS)."""

    def mailbox_id(name: str) -> str:
        """MAILBOXID of folder `name` (RFC 8474 4): kept across RENAME, new after
        DELETE and CREATE. May write (the first time)."""

    location = Attribute(
        "str: where the folders live (the Maildir's path); in cache keys, so that a "
        "Maildir made again from scratch never meets entries of the old one")

    def folders() -> list[FolderInfo]:
        """Every folder, INBOX first, with hierarchy placeholders."""

    def create(name: str, special_use: str | None = None) -> None:
        """CREATE; `special_use` (RFC 6154 CREATE-SPECIAL-USE) kept with the folder."""

    def delete(name: str) -> None: ...

    def rename(old: str, new: str) -> None:
        """Children move too; RENAME INBOX moves its messages into `new` (RFC 3501)."""

    def subscribe(name: str) -> None: ...

    def unsubscribe(name: str) -> None: ...

    def subscriptions() -> list[str]:
        """Subscribed names, existing or not (LSUB keeps deleted ones: RFC 3501 6.3.9)."""

    def status(name: str) -> FolderStatus: ...
    def url_key(name: str) -> bytes:
        """URLAUTH (RFC 4467 7): the mailbox access key of folder `name` (NONEXISTENT)."""

    def reset_url_keys(name: str | None) -> None:
        """RESETKEY (RFC 4467 6.1): new access key of folder `name`, or of every one."""


    def select(name: str, read_only: bool = False) -> IMailboxView: ...

    def append(name: str, message: bytes, flags: Sequence[str] = (),
               internal_date: float | None = None,
               items: Callable[[bytes], Mapping[str, bytes]] | None = None) -> CopyResult:
        """Store `message` (CRLF as the client sent it) durably; TRYCREATE if missing.
        `items` renders FETCH items of it (as read back) to keep in the folder's cache."""

    def append_many(name: str,
                    messages: Sequence[tuple[bytes | bytearray, Sequence[str], float | None]]
                    ) -> CopyResult:
        """MULTIAPPEND (RFC 3502): store every (message, flags, date), or none of them."""

    def watch(name: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` in the reactor thread soon after anything in the folder
        changes on disk (inotify when available, else a cheap poll); coalesced.
        Returns a function that stops watching. Does not block."""

    def quota() -> tuple[QuotaUsage, QuotaLimits]:
        """The user's usage and limits (RFC 9208 GETQUOTA); blocks (disk)."""


@dataclass(frozen=True)
class QuotaLimits:
    """A user's quota (RFC 9208 5.1, 5.2), from the users file; None: no limit."""

    #: Octets: the sum of the messages' sizes with CRLF line ends (RFC822.SIZE).
    storage: int | None = None
    messages: int | None = None


@dataclass(frozen=True)
class QuotaUsage:
    """What a user's messages take, in all folders: octets (CRLF sizes) and count."""

    storage: int = 0
    messages: int = 0
