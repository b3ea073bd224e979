"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA.

Each user has one quota root, named "" (RFC 9208 3.2: the names are the server's
choice; one root for all of a user's folders, as Dovecot's "User quota"), with the
resources STORAGE (in units of 1024 octets, RFC 9208 5.1) and MESSAGE (5.2) where the
users file sets a limit (auth/quota_rules.py). Usage is the store's running count
(store/quota.py), never a scan per command. APPEND and COPY that would not fit get
NO [OVERQUOTA] from the store, before anything is written.

SETQUOTA is the operator's (`mailserver user quota`): RFC 9208 4.1.3 lets a server
refuse it, and a user raising their own limit would make it no limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.commands import no
from mailserver.imap.commands_mailbox import checked_name
from mailserver.imap.encode import astring
from mailserver.imap.grammar_quota import QuotaRootCommand, SetQuota
from mailserver.interfaces import QuotaLimits, QuotaUsage

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

#: The name of every user's one quota root.
ROOT = ""


def quota_line(usage: QuotaUsage, limits: QuotaLimits) -> bytes:
    """RFC 9208 5.3 / 7.1: `* QUOTA "" (STORAGE used limit MESSAGE used limit)`, the
    limited resources only; storage in KiB, rounded up (a 1-octet message uses 1)."""
    resources = []
    if limits.storage is not None:
        resources.append(f"STORAGE {-(-usage.storage // 1024)} {limits.storage // 1024}")
    if limits.messages is not None:
        resources.append(f"MESSAGE {usage.messages} {limits.messages}")
    return b"* QUOTA " + astring(ROOT.encode()) + f" ({' '.join(resources)})\r\n".encode()


async def getquota(session: IMAPSession, command: QuotaRootCommand) -> str | None:
    """RFC 9208 4.1.1. Only the user's own root exists for them: any other name
    (another user's, guessed) is NO [NONEXISTENT], the same as for a root nobody has."""
    if command.root != ROOT:
        raise no("No such quota root", "NONEXISTENT")
    usage, limits = await session.blocking(session.authenticated().store.quota)
    session.send(quota_line(usage, limits))
    return None


async def getquotaroot(session: IMAPSession, command: QuotaRootCommand) -> str | None:
    """RFC 9208 4.1.2: the roots of an existing mailbox, then each root's QUOTA."""
    name = checked_name(command.root)
    store = session.authenticated().store
    await session.blocking(store.status, name)  # NO [NONEXISTENT] for a missing one
    usage, limits = await session.blocking(store.quota)
    session.send(b"* QUOTAROOT " + astring(name.encode()) + b" " + astring(ROOT.encode())
                 + b"\r\n" + quota_line(usage, limits))
    return None


async def setquota(session: IMAPSession, command: SetQuota) -> str | None:
    """RFC 9208 4.1.3: refused; limits are set by the operator."""
    raise no("Quota limits are set by the administrator", "NOPERM")
