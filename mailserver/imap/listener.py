"""The IMAP listeners: `imap` (port 143, STARTTLS) and `imaps` (port 993, implicit TLS,
RFC 8314)."""

from __future__ import annotations

from mailserver.core.context import ListenerFactory, ServerContext, mailbox_listener
from mailserver.imap.server import IMAPServerFactory


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    return mailbox_listener(context, name, ("imap", "imaps"), IMAPServerFactory,
                            b"* BYE Too many connections\r\n")
