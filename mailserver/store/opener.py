"""IMailboxOpener: how a protocol session opens a user's mail (POP3 or IMAP).

The one place the protocols reach the store through: app/service.py puts a
MaildirOpener into the ServerContext, and POP3 and IMAP call it (in a disk thread)
with the MailboxId of the logged-in user, knowing only interfaces.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from zope.interface import implementer

from mailserver.interfaces import IMailboxOpener, MailboxId, QuotaLimits
from mailserver.store.maildir import ensure_maildir
from mailserver.store.maildrop import Maildrop, open_maildrop
from mailserver.store.uidlformat import parse_uidl_format
from mailserver.store.userstore import FOLDER_LIMIT, UserStore


@implementer(IMailboxOpener)
class MaildirOpener:
    """The Maildirs under `mail_dir` (data_dir/mail), each user with at most
    `folder_limit` folders besides INBOX. Blocking calls: disk thread."""

    def __init__(self, mail_dir: Path, folder_limit: int = FOLDER_LIMIT,
                 uidl_format: str = "",
                 limits_of: Callable[[MailboxId], QuotaLimits] | None = None) -> None:
        self.mail_dir = mail_dir
        #: Each user's quota (the users file, looked up at each use); None: none.
        self.limits_of = limits_of
        self.folder_limit = folder_limit
        #: pop3.uidl_format, parsed (config checked it); None: base-name UIDLs.
        self.uidl_format = parse_uidl_format(uidl_format)

    def open_maildrop(self, mailbox: MailboxId) -> Maildrop:
        return open_maildrop(self.mail_dir, mailbox, self.uidl_format)

    def open_user_store(self, mailbox: MailboxId) -> UserStore:
        limits: Callable[[], QuotaLimits] = QuotaLimits
        if self.limits_of is not None:
            limits = functools.partial(self.limits_of, mailbox)
        return UserStore(ensure_maildir(self.mail_dir, mailbox),
                         folder_limit=self.folder_limit, limits=limits)
