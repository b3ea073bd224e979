"""The POP3 view of a Maildir (IMaildrop), and how protocols open a user's mail (IMailboxOpener).

Implemented by mailserver.store (maildrop.py, opener.py); used by mailserver.pop3 and
mailserver.imap, which import no store module: they get an IMailboxOpener from the
ServerContext. Every method blocks unless it says otherwise (disk thread).

Part of mailserver.interfaces, which re-exports every name here: import them from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from zope.interface import Attribute, Interface

from mailserver.interfaces.imap_view import IUserStore
from mailserver.interfaces.routing import MailboxId


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
