"""The POP3 listeners: `pop3` (port 110, STLS) and `pop3s` (port 995, implicit TLS)."""

from __future__ import annotations

from mailserver.core.context import ListenerFactory, ServerContext, mailbox_listener
from mailserver.pop3.server import POP3Factory


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    # RFC 2449 8.1.1 / RFC 3206: SYS/TEMP, the client should try again later.
    return mailbox_listener(context, name, ("pop3", "pop3s"), POP3Factory,
                            b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n")
