"""The seams of the system, documented: read this file first.

Data flows one way (docs/architecture.md draws the whole picture):

    client bytes -> grammar (pure: bytes -> typed commands)        smtp/grammar.py, smtp/data.py
                 -> session (one state machine per connection)      smtp/server.py
                 -> IDeliveryRouter.route (is it local? may it be   delivery/router.py,
                    relayed? aliases via IRecipientDirectory)       auth/directory.py
                 -> IDeliveryRouter.begin -> IDeliveryTransaction   delivery/router.py
                    (write, commit, abort: one shape for all mail)
                 -> ILocalDelivery (Maildir copies)                 store/delivery.py
                    and/or IOutboundQueue (the relay queue)         queue/outbound.py

The SMTP session never knows where mail ends: it asks the router whether a recipient is
acceptable and hands the message to one IDeliveryTransaction. The router owns the split
into local mailboxes and remote recipients and commits both halves in the order that
leaves nothing behind on failure. Nothing a transaction writes is visible before its
`commit` is called; a commit that fails, or an abort before commit, leaves nothing.

The IMAP session stands on IUserStore / IMailboxView, the POP3 session on IMaildrop;
both open a user's mail through IMailboxOpener (the bottom of this file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


@dataclass(frozen=True, order=True)
class MailboxId:
    """A hosted user, as stored on disk: data_dir/mail/DOMAIN/LOCALPART/.

    Both parts are lower case and validated as safe path components (no `/`, no leading
    `.`, no NUL) by whoever builds one from user input (auth.directory.mailbox_id).
    """

    domain: str
    localpart: str

    @property
    def address(self) -> str:
        return f"{self.localpart}@{self.domain}"


@dataclass(frozen=True)
class Resolution:
    """What one recipient address expands to after aliases and plus-addressing."""

    #: Local users whose INBOX gets a copy (deduplicated, sorted).
    mailboxes: tuple[MailboxId, ...] = ()
    #: Remote addresses: an alias that forwards elsewhere, or a recipient in another
    #: domain (IDeliveryRouter.route); the relay queue delivers them.
    remote: tuple[str, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        return not self.mailboxes and not self.remote


class ISubmitUrls(Interface):
    """BURL (RFC 4468): what a URLAUTH URL of our own IMAP store names, for the
    submission server (imap/urlauth.SubmitUrls; app/ puts one in the ServerContext)."""

    def fetch(config: Any, url: str, submitter: str) -> Deferred[bytes]:
        """The octets of a `submit+SUBMITTER` URL that verifies (hosts: config's hostname
        and local domains); fails (any exception) for every other URL."""


class IRecipientDirectory(Interface):
    """Users and aliases; re-reads its files when they change (no restart needed)."""

    def resolve(address: str) -> Resolution:
        """Expand `localpart@domain` (a local domain) through plus-addressing and aliases.

        Synchronous and cheap: the files are held in memory, a stat() per call notices
        edits. An unknown user gives an empty Resolution.
        """

    def user_exists(address: str) -> bool:
        """True for a user in the users file (not an alias)."""

    def login_allowed(address: str) -> bool:
        """True for a user who may log in: in the users file and not marked `nologin`
        or `deny` (Dovecot's fields). API tokens ask this on every use."""

    def login_key(username: str) -> str:
        """The address a login name stands for, as the password checker takes it (lower
        case; a bare name in the first local domain). XCLIENT LOGIN= asks this too."""

    def unavailable() -> str | None:
        """Why the directory cannot answer for certain now (a users or aliases file that
        exists but cannot be read, and no earlier reading of it), else None. An empty
        Resolution then means "unknown for now", never "no such user"."""

    def may_send_as(user: str, address: str) -> bool:
        """May the authenticated `user` use `address` as a sender (RFC 6409 6.1)? Its
        own address, any +extension of it, or an alias whose expansion reaches it."""


@dataclass(frozen=True)
class RecipientDsn:
    """One recipient's DSN request (RFC 3461 4.1, 4.2), from RCPT to the queue's report.

    `address` is the recipient the entry is about: the RCPT TO address in the session,
    a remote target (forwarding) in the queue. `notify` is () when NOTIFY was not given
    (RFC 3461 4.1's default applies), ("NEVER",) or some of SUCCESS, DELAY, FAILURE.
    `orcpt_type` ("rfc822" or "utf-8", RFC 6533) and `orcpt` (decoded) are the ORCPT,
    "" when none. `mailboxes` and `remote` are what this RCPT resolved to (session side).
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt_type: str = ""
    orcpt: str = ""
    mailboxes: tuple[MailboxId, ...] = ()
    remote: tuple[str, ...] = ()

    def wants(self, event: str) -> bool:
        """Is a DSN wanted for `event` ("SUCCESS", "DELAY", "FAILURE")? Without NOTIFY
        RFC 3461 4.1 says FAILURE, and DELAY at the MTA's choice: we send it."""
        if not self.notify:
            return event in ("FAILURE", "DELAY")
        return event in self.notify


@dataclass(frozen=True)
class DeliveryEnvelope:
    """One message's envelope (RFC 5321 2.3.1) as a delivery target takes it: the
    recipients already split by IDeliveryRouter.route into local and remote."""

    #: The reverse-path as given in MAIL FROM, "" for the null sender <>.
    sender: str
    #: Local users whose INBOX gets a copy (each once).
    mailboxes: tuple[MailboxId, ...] = ()
    #: Remote addresses for the relay queue, in the order given, each once.
    remote: tuple[str, ...] = ()
    #: MAIL FROM had SMTPUTF8 / BODY=8BITMIME (the relay must honour them, see
    #: OutboundEnvelope).
    smtputf8: bool = False
    body_8bit: bool = False
    #: MAIL FROM had REQUIRETLS (RFC 8689): relayed over verified TLS only.
    requiretls: bool = False
    #: Who submitted it (the authenticated user), for logs and `queue show`; "" if none.
    submitter: str = ""
    #: DSN (RFC 3461 4.3, 4.4): RET ("FULL", "HDRS", "") and the decoded ENVID.
    ret: str = ""
    envid: str = ""
    #: One per accepted RCPT that gave NOTIFY or ORCPT or resolved to a remote target
    #: (in RCPT order); the router passes them on to the queue and sends the success
    #: reports of the local copies (NOTIFY=SUCCESS).
    dsn: tuple[RecipientDsn, ...] = ()


class IDeliveryTransaction(Interface):
    """One message on its way to every recipient of its DeliveryEnvelope: the one shape
    every producer of mail (SMTP sessions, the queue's local delivery) writes to."""

    def write(data: bytes) -> None:
        """Append message bytes as they are to be stored: LF line ends, trace headers
        first. Never Return-Path: the target adds it to the local copies only (RFC 5321
        4.4: the final delivery adds it, a relay must not).

        Called on the reactor thread; never blocks and never raises: small messages stay
        in memory, large ones are spilled to a temporary file by a disk thread, and a
        failure to do so shows at `commit`.
        """

    def commit() -> Deferred[str | None]:
        """Make the message durable everywhere, then visible (local copies in new/) and
        handed over (the queue copy to the scheduler).

        Fires with the queue id when a queue copy was made (the 250 names it), else
        None. On failure it errbacks with ReplyError (451 4.3.0, or 452 4.3.1 when the
        disk is full) and no copy is left anywhere: the client retries the whole message.
        """

    def abort() -> None:
        """Drop the message; nothing becomes visible. Safe to call at any point, also
        after a failed commit; after a successful commit it changes nothing."""


class IQueueReleaseStep(Interface):
    """A delivery transaction (the router's) that lets its producer do one step of its
    own with the queue id before the queue may act on the message: the API records
    which user sent which queue id there, so the queue's "delivered" event, published
    as soon as the scheduler is done, finds the record (api/send.py)."""

    def before_release(step: Callable[[str], Deferred[None]]) -> None:
        """Call `step(queue_id)` once the queue copy is durable, before the local
        copies are committed and the queue copy released, and wait for it. If it
        fails, every copy is aborted and commit errbacks with 451 4.3.0 (nothing was
        visible or sent). Never called for a message without a queue copy."""


class IDeliveryTarget(Interface):
    """Somewhere a message can be delivered, in two phases (write, then commit)."""

    def begin(envelope: DeliveryEnvelope) -> IDeliveryTransaction:
        """Start a transaction for every recipient of `envelope` (it has at least one).

        Never raises: a target that cannot take the message returns a transaction whose
        commit fails, so a session in the middle of a BDAT chunk stays in step.
        """


class IDeliveryRouter(IDeliveryTarget):
    """The delivery target of the server (delivery/router.py): it also says, one
    recipient at a time, where mail for an address goes, before any byte is sent."""

    def route(address: str, relay: bool) -> Resolution:
        """Local mailboxes and remote addresses for `localpart@domain`, or ReplyError.

        `relay`: the client may send to other domains (authenticated submission, RFC
        6409 3.3); the caller decides that, the router only knows which domains are ours.
        Refusals: 550 5.7.1 (relaying denied), 550 5.1.1 (no such local user), 451 4.3.0
        (the directory cannot answer now: IRecipientDirectory.unavailable), 451 4.3.5
        (a remote recipient when this server has no relay queue).
        """


class IHeldTransaction(IDeliveryTransaction):
    """An IDeliveryTransaction that holds the message content until its commit, so a
    hook can look at the whole message (check it, sign it) before any byte reaches the
    transaction it wraps. What is written before `hold` (the session's trace fields)
    is kept apart and goes first."""

    def hold() -> None:
        """Everything written from now on is the content (the header and the body as
        received); before it only trace fields (Received) were written."""


class IMessageHook(Interface):
    """What a listener may do to each message it receives before it is delivered
    (senderauth: the sender-authentication checks on port 25, DKIM signing on
    submission). Set per listener by app/ (ServerContext.message_hooks)."""

    def wrap(transaction: IDeliveryTransaction, session: Any, sender: str,
             mailboxes: Sequence[MailboxId]) -> IHeldTransaction | None:
        """The transaction the session writes the message to instead of `transaction`
        (the router's), or None to leave this message alone (e.g. a trusted client).
        Called right after IDeliveryRouter.begin, on the reactor thread; never blocks.

        `session` is the SMTP session, read-only; a hook may rely on these attributes
        only: `session_id` (str, for the log), `peer_ip` (the client's address, str),
        `helo` (the EHLO/HELO name, str or None) and `envelope` (its `recipients`: the
        RCPT addresses as given, each with `.domain`). `sender` is the reverse-path
        ("" for <>), `mailboxes` the local recipients of the message.

        A refusal found at commit is a ReplyError from the held transaction's commit,
        which the session answers like any other failed delivery.
        """


# -- the two halves behind the router ----------------------------------------------------------


class ILocalTransaction(Interface):
    """One message on its way to one or more local mailboxes (store/delivery.py)."""

    def write(data: bytes) -> None:
        """As IDeliveryTransaction.write (the router writes Return-Path here first)."""

    def commit() -> Deferred[None]:
        """Make the message durable and visible in each mailbox's new/ directory.

        Fires once every copy is fsync'd and renamed and each new/ directory fsync'd.
        On failure it errbacks with ReplyError (451 4.3.0, or 452 4.3.1 when the disk is
        full) and no copy is visible anywhere.
        """

    def abort() -> None:
        """Drop the message; nothing becomes visible. Safe to call at any point."""


class ILocalDelivery(Interface):
    """Local delivery into users' Maildirs, in two phases."""

    def begin(mailboxes: Sequence[MailboxId]) -> ILocalTransaction:
        """Start a transaction whose commit delivers one copy to each mailbox."""

    def check_quota(mailboxes: Sequence[MailboxId]) -> None:
        """ReplyError (452 4.2.2) if one of them is full already (RCPT); optional."""


@dataclass(frozen=True)
class OutboundEnvelope:
    """What the queue needs to relay one message (RFC 5321 envelope, remote part only)."""

    #: The envelope sender as given in MAIL FROM, "" for the null sender <>.
    sender: str
    #: Remote recipient addresses, each delivered (and failed, and bounced) on its own.
    recipients: tuple[str, ...]
    #: MAIL FROM had SMTPUTF8 / BODY=8BITMIME: the relay must only send to peers that
    #: support it (RFC 6531 3.4; RFC 6152), or bounce.
    smtputf8: bool = False
    body_8bit: bool = False
    #: MAIL FROM had REQUIRETLS (RFC 8689): relayed over verified TLS only.
    requiretls: bool = False
    #: Who submitted it (the authenticated user), for logs and `queue show`; "" if none.
    submitter: str = ""
    #: DSN (RFC 3461): RET, the decoded ENVID, and the NOTIFY/ORCPT of each recipient
    #: that gave them (RecipientDsn.address is the address in `recipients`).
    ret: str = ""
    envid: str = ""
    dsn: tuple[RecipientDsn, ...] = ()


class IQueueTransaction(Interface):
    """One message on its way into the durable queue (queue/outbound.py), in three steps.

    `write` as ILocalTransaction, without Return-Path. `commit` makes message and
    envelope durable (fsync'd file and directory) but holds them back from the
    scheduler, so that the router, delivering to local mailboxes as well, can still take
    back the queue copy if the local half fails; `release` then hands it over. `abort`
    after `commit` and before `release` deletes the queued files again.
    """

    def write(data: bytes) -> None:
        """As ILocalTransaction.write."""

    def abort() -> None:
        """Drop the message (also after commit, before release); safe at any point."""

    def commit() -> Deferred[str]:
        """Fires with the queue id once the entry is durable; errbacks with ReplyError
        (451 4.3.0, 452 4.3.1 when the disk is full) leaving nothing queued."""

    def release() -> None:
        """Hand the committed entry to the scheduler: a first attempt starts at once
        (in whichever process runs the scheduler)."""


class IOutboundQueue(Interface):
    """The durable relay queue under data_dir/queue/ (mailserver.queue)."""

    def begin(envelope: OutboundEnvelope) -> IQueueTransaction:
        """Start queueing one message for `envelope.recipients`."""


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient of a queue entry as its envelope file has it (queue/envelope.py)."""

    address: str
    #: "pending" (not yet tried, or deferred: attempts > 0), "delivered" or "failed".
    state: str
    attempts: int = 0
    #: The last reply or reason as a person reads it, and its RFC 3463 status.
    last_error: str = ""
    status: str = ""
    #: The host that gave `last_error`.
    remote: str = ""
    #: Seconds since the epoch of the next attempt (pending only), 0 if none.
    next_try: float = 0.0


class IQueueStates(Interface):
    """The relay queue's state of one message, read from its files (queue/states.py),
    for those that may not import the queue: the API's GET /api/v1/queue/ID."""

    def entry(queue_id: str) -> tuple[str, list[QueuedRecipient]] | None:
        """(submitter, recipients) of the entry, queued or held; None when there is no
        such entry (never queued, or finished and removed). Blocks (reads files): call
        it in a disk thread. `queue_id` is untrusted: anything that is not a queue id
        is None."""


# -- the IMAP view of a Maildir ---------------------------------------------------------------
#
# Implemented by mailserver.store (folders, UID lists, index, notify); used by
# mailserver.imap. Folder names are IMAP mailbox names exactly as on the wire after
# quoting is undone: modified UTF-7 (RFC 3501 5.1.3), "." as the hierarchy delimiter
# (Maildir++ and Dovecot's default), "INBOX" in any case for the root Maildir. On disk a
# folder "a.b" is the directory ".a.b" (Maildir++), named in the same modified UTF-7.
#
# Every method that touches the disk blocks: the IMAP session calls it in a disk thread
# (context.disk), one call at a time per session. Implementations are thread-safe
# across sessions and processes (UID lists are updated under a lock file).


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


# -- the POP3 view of a Maildir, and how protocols open a user's mail -------------------------
#
# Implemented by mailserver.store (maildrop.py, opener.py); used by mailserver.pop3 and
# mailserver.imap, which import no store module: they get an IMailboxOpener from the
# ServerContext. Every method blocks unless it says otherwise (disk thread).


class MaildropInUse(Exception):
    """Another POP3 session holds the maildrop (RFC 1939 8; the reply is [IN-USE])."""


class MessageGone(Exception):
    """The message file no longer exists (expunged by another session)."""


class MaildropMessage(Protocol):
    """One message of a POP3 snapshot, as the session sees it."""

    #: RFC 1939 7 unique-id: 1-70 characters in 0x21-0x7E, the same in every session and
    #: unchanged by flag changes (the Maildir base name, or a hash of one that does not fit).
    uidl: str
    #: Octets with CRLF line ends, before dot-stuffing (what LIST reports and RETR sends).
    size: int
    #: DELE's mark (RFC 1939 5); the session's alone: the store never reads it.
    deleted: bool


class IMaildrop(Interface):
    """One POP3 session's snapshot of a user's INBOX, and the [IN-USE] lock on it.

    The snapshot is taken once, at open: mail delivered meanwhile shows up at the next
    login (RFC 1939 8). Messages are numbered as in POP3, from 1 in delivery order.
    Files renamed meanwhile by another session (IMAP flags) are found by base name.
    The methods of one maildrop may run in several disk threads at once (RETR
    read-ahead beside a TOP).
    """

    messages = Attribute("Sequence[MaildropMessage]: message n at index n-1")

    def read(number: int) -> bytes:
        """The stored bytes of message `number` (LF line ends, or CRLF for a foreign
        file), in as few system calls as possible. MessageGone if it was expunged
        meanwhile; OSError if it exists but cannot be read."""

    def open_file(number: int) -> int:
        """A read-only descriptor of message `number`'s file, positioned at its start,
        for a message too big to read whole (the caller closes it). MessageGone and
        OSError as read()."""

    def mark_seen(numbers: Iterable[int]) -> None:
        """Give these messages the Seen flag (IMAP shows them read). Best effort: a
        message gone or a file that cannot be renamed is skipped (and logged)."""

    def expunge(numbers: Iterable[int]) -> int:
        """RFC 1939 6 UPDATE: remove these messages durably (the directories are
        fsync'd before it returns); the number that could not be removed. A message
        already gone counts as removed."""

    def close() -> None:
        """Release the lock (idempotent). Does not block: callable on the reactor."""


class IMailboxOpener(Interface):
    """Opens a user's mail for a protocol session; the Maildir is created if missing."""

    def open_maildrop(mailbox: MailboxId) -> IMaildrop:
        """The locked POP3 snapshot of the INBOX; MaildropInUse if another POP3
        session holds it."""

    def open_user_store(mailbox: MailboxId) -> IUserStore:
        """Every folder of the user, for IMAP."""
