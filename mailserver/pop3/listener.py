"""The POP3 listeners: `pop3` (port 110, STLS) and `pop3s` (port 995, implicit TLS)."""

from __future__ import annotations

from typing import Any

from mailserver.core.context import ListenerFactory, ServerContext, implicit_tls
from mailserver.pop3.server import POP3Factory


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    if name not in ("pop3", "pop3s"):
        return None
    secure = name == "pop3s"
    pop3 = POP3Factory(context.config, context.portal, context.disk, context.mailboxes,
                       tls_options=context.tls, implicit_tls=secure, name=name,
                       instance=context.instance, login_throttle=context.login_throttle)
    factory: Any = implicit_tls(context, pop3) if secure else pop3
    # RFC 2449 8.1.1 / RFC 3206: SYS/TEMP, the client should try again later.
    refusal = b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
    return ListenerFactory(factory, refusal, on_stop=pop3.shut_down)
