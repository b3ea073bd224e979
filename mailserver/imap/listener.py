"""The IMAP listeners: `imap` (port 143, STARTTLS) and `imaps` (port 993, implicit TLS,
RFC 8314)."""

from __future__ import annotations

from typing import Any

from mailserver.core.context import ListenerFactory, ServerContext, implicit_tls
from mailserver.imap.server import IMAPServerFactory


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    if name not in ("imap", "imaps"):
        return None
    secure = name == "imaps"
    factory = IMAPServerFactory(context.config, context.portal, context.disk,
                                context.mailboxes, tls_options=context.tls,
                                implicit_tls=secure, name=name, instance=context.instance,
                                login_throttle=context.login_throttle)
    wrapped: Any = implicit_tls(context, factory) if secure else factory
    return ListenerFactory(wrapped, b"* BYE Too many connections\r\n",
                           on_stop=factory.shut_down)
