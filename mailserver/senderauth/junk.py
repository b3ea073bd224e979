"""Delivery into the recipients' Junk folder (Maildir++ `.Junk`), for DMARC quarantine.

Same two-phase delivery as the inbox (store/delivery.py); only the directory differs.
create_maildir makes `.Junk` with every new Maildir (store/maildir.py DEFAULT_FOLDERS)
and makes it again if a user deleted it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mailserver.interfaces import MailboxId
from mailserver.store.delivery import MaildirDelivery, MaildirTransaction, _MessageFile
from mailserver.store.maildir import create_maildir, folder_path

JUNK = "Junk"


class _JunkFile(_MessageFile):
    def __init__(self, mail_dir: Path, mailboxes: tuple[MailboxId, ...], host: str) -> None:
        super().__init__(mail_dir, mailboxes, host)
        self.roots = [os.fspath(folder_path(Path(root), JUNK)) for root in self.roots]

    def _ensure(self, index: int) -> str:
        root = self.roots[index]
        if not os.path.isdir(root + "/new"):
            create_maildir(self.mail_dir, self.mailboxes[index])
        return root


class JunkDelivery(MaildirDelivery):
    """An IDeliveryTarget whose copies land in each mailbox's Junk folder."""

    def begin(self, mailboxes: Sequence[MailboxId]) -> MaildirTransaction:
        unique = list(dict.fromkeys(mailboxes))
        if not unique:
            raise ValueError("a delivery needs at least one mailbox")
        file = _JunkFile(self.mail_dir, tuple(unique), self.hostname)
        return MaildirTransaction(file, self.disk, self.spill_threshold)
