"""The seams of the system, documented: read this file first.

Data flows one way:

    client bytes -> grammar (pure: bytes -> typed commands)       smtp/grammar.py, smtp/data.py
                 -> session (one state machine per connection)     smtp/server.py
                 -> IRecipientDirectory (who is local, aliases)    auth/directory.py
                 -> IDeliveryTarget (two-phase: write, commit)     store/delivery.py
                 -> Maildir files                                  store/maildir.py

The SMTP session never knows where mail ends up: local delivery (and, later, the relay
queue) are delivery targets. Nothing a target writes is visible before `commit` fires,
and a failed or aborted transaction leaves nothing visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
    #: Remote addresses an alias forwards to (delivered by the relay queue, issue 3).
    remote: tuple[str, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        return not self.mailboxes and not self.remote


class IRecipientDirectory(Interface):
    """Users and aliases; re-reads its files when they change (no restart needed)."""

    def resolve(address: str) -> Resolution:
        """Expand `localpart@domain` (a local domain) through plus-addressing and aliases.

        Synchronous and cheap: the files are held in memory, a stat() per call notices
        edits. An unknown user gives an empty Resolution.
        """

    def user_exists(address: str) -> bool:
        """True for a user in the users file (not an alias)."""


class IDeliveryTransaction(Interface):
    """One message on its way to one or more mailboxes."""

    def write(data: bytes) -> None:
        """Append message bytes, exactly as they are to be stored (LF line ends).

        Called on the reactor thread; never blocks: small messages stay in memory, large
        ones are spilled to a temporary file by a disk thread.
        """

    def commit() -> Deferred[None]:
        """Make the message durable and visible in each mailbox's new/ directory.

        Fires once every copy is fsync'd and renamed and each new/ directory fsync'd.
        On failure it errbacks with ReplyError (451 4.3.0, or 452 4.3.1 when the disk is
        full) and no copy is visible anywhere.
        """

    def abort() -> None:
        """Drop the message; nothing becomes visible. Safe to call at any point."""


class IDeliveryTarget(Interface):
    """Somewhere messages can be delivered, in two phases."""

    def begin(mailboxes: Sequence[MailboxId]) -> IDeliveryTransaction:
        """Start a transaction whose commit delivers one copy to each mailbox."""
