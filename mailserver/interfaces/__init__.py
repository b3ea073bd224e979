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
both open a user's mail through IMailboxOpener.

In charge of: the seams, one module per area, every name re-exported here (the rest of
mailserver imports them from mailserver.interfaces, never from the modules):

    interfaces/routing.py    the directory, the envelope, the router and its transaction,
                             the message hooks, BURL's URLs
    interfaces/halves.py     the two halves behind the router: Maildir copies and the
                             relay queue (with its per-recipient states)
    interfaces/imap_view.py  the IMAP view of a Maildir: IUserStore, IMailboxView
    interfaces/pop3_view.py  the POP3 view (IMaildrop) and IMailboxOpener

May import: the other base modules (address, reply, errors, logs, config) and itself:
a seam is declared below everything that implements or uses it.
"""

from __future__ import annotations

from mailserver.interfaces.halves import (
    ILocalDelivery,
    ILocalTransaction,
    IOutboundQueue,
    IQueueStates,
    IQueueTransaction,
    OutboundEnvelope,
    QueuedRecipient,
)
from mailserver.interfaces.imap_view import (
    SETTABLE_USES,
    Changes,
    CopyResult,
    FolderInfo,
    FolderStatus,
    IMailboxView,
    IModseqView,
    IUserStore,
    MessageInfo,
    QuotaLimits,
    QuotaUsage,
    StoreError,
)
from mailserver.interfaces.pop3_view import (
    IMailboxOpener,
    IMaildrop,
    MaildropInUse,
    MaildropMessage,
    MessageGone,
)
from mailserver.interfaces.routing import (
    DeliveryEnvelope,
    IDeliveryRouter,
    IDeliveryTarget,
    IDeliveryTransaction,
    IHeldTransaction,
    IMessageHook,
    IQueueReleaseStep,
    IRecipientDirectory,
    ISubmitUrls,
    MailboxId,
    RecipientDsn,
    Resolution,
)

__all__ = [
    "Changes",
    "CopyResult",
    "DeliveryEnvelope",
    "FolderInfo",
    "FolderStatus",
    "IDeliveryRouter",
    "IDeliveryTarget",
    "IDeliveryTransaction",
    "IHeldTransaction",
    "ILocalDelivery",
    "ILocalTransaction",
    "IMailboxOpener",
    "IMailboxView",
    "IMaildrop",
    "IMessageHook",
    "IModseqView",
    "IOutboundQueue",
    "IQueueReleaseStep",
    "IQueueStates",
    "IQueueTransaction",
    "IRecipientDirectory",
    "ISubmitUrls",
    "IUserStore",
    "MailboxId",
    "MaildropInUse",
    "MaildropMessage",
    "MessageGone",
    "MessageInfo",
    "OutboundEnvelope",
    "QueuedRecipient",
    "QuotaLimits",
    "QuotaUsage",
    "RecipientDsn",
    "Resolution",
    "SETTABLE_USES",
    "StoreError",
]
