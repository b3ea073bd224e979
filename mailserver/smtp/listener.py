"""The SMTP listeners: `smtp` (the MX, port 25) and, later, submission/submissions."""

from __future__ import annotations

from mailserver.app.context import ListenerFactory, ServerContext
from mailserver.smtp.server import SMTPServerFactory


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    if name != "smtp":
        return None  # submission and submissions: issue 3
    factory = SMTPServerFactory(context.config, context.directory, context.target,
                                tls_options=context.tls, instance=context.instance)
    refusal = f"421 4.7.0 {context.config.hostname} Error: too many connections\r\n"
    return ListenerFactory(factory, refusal.encode(), on_stop=factory.shut_down)
