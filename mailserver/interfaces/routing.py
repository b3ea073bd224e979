"""The router's seams: who a recipient is (IRecipientDirectory), the envelope and the
one transaction shape all mail goes through (IDeliveryRouter, IDeliveryTransaction), and
the hooks a message passes on its way (IMessageHook, ISubmitUrls).

Part of mailserver.interfaces (its docstring draws the whole flow), which re-exports
every name here: import them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface


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
