"""The cred realm: turns an authenticated address into the avatar protocols work with.

Every protocol (SMTP AUTH, POP3, IMAP) logs in through the same portal and gets an
IMailUser: who the user is and which Maildir is theirs. Protocol-specific avatars (an
IMAP account, a POP3 mailbox) are built from that by the protocol packages, so the
realm stays free of protocol imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.portal import IRealm
from zope.interface import Attribute, Interface, implementer

from mailserver.auth.directory import RecipientDirectory
from mailserver.interfaces import MailboxId
from mailserver.logs import logger

log = logger(__name__)


class IMailUser(Interface):
    """An authenticated user of this server."""

    address = Attribute("The canonical address (str, lower case), e.g. alice@example.org.")
    mailbox = Attribute("The user's MailboxId: data_dir/mail/DOMAIN/LOCALPART/.")


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    address: str
    mailbox: MailboxId


def _logout() -> None:
    """Nothing to release: the avatar holds no resources of its own."""


@implementer(IRealm)
class MailRealm:
    """Hands out IMailUser avatars for avatar ids produced by the PasswordChecker."""

    def __init__(self, directory: RecipientDirectory) -> None:
        self.directory = directory

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, MailUser, Callable[[], None]]:
        if IMailUser not in interfaces:
            raise NotImplementedError("MailRealm only provides IMailUser avatars")
        address = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        user = MailUser(address=address, mailbox=self.directory.mailbox_id(address))
        return IMailUser, user, _logout
