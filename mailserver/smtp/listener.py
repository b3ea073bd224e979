"""The SMTP listeners: `smtp` (the MX, port 25), `submission` (587, STARTTLS then AUTH)
and `submissions` (465, implicit TLS: RFC 8314). One session class; the differences
are the SessionPolicy of each."""

from __future__ import annotations

from mailserver.core.context import ListenerFactory, ServerContext, implicit_tls
from mailserver.smtp.server import SessionPolicy, SMTPServerFactory

#: Port 25: inbound for local domains only; AUTH refused (503), never relays.
MX_POLICY = SessionPolicy(name="smtp")
#: RFC 6409 message submission: AUTH before MAIL, sender checked, headers completed.
SUBMISSION_POLICY = SessionPolicy(name="submission", offer_auth=True, require_auth=True,
                                  relay_for_authenticated=True, check_sender=True,
                                  add_missing_headers=True)
#: RFC 8314 3.3: the same, with TLS from the first byte.
SUBMISSIONS_POLICY = SessionPolicy(name="submissions", implicit_tls=True, offer_auth=True,
                                   require_auth=True, relay_for_authenticated=True,
                                   check_sender=True, add_missing_headers=True)

POLICIES = {"smtp": MX_POLICY, "submission": SUBMISSION_POLICY,
            "submissions": SUBMISSIONS_POLICY}

def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    policy = POLICIES.get(name)
    if policy is None:
        return None
    factory = SMTPServerFactory(
        context.config, context.directory, context.target,
        tls_options=None if policy.implicit_tls else context.tls,
        policy=policy, instance=context.instance,
        portal=context.portal if policy.offer_auth else None,
        queue=context.queue, senders=context.directory,
        auth_throttle=context.login_throttle,
    )
    if context.senderauth is not None:
        factory.message_hook = context.senderauth.hook_for(policy.name)
        if name == "smtp" and context.senderauth.srs is not None:
            # Forwarded copies leave with an SRS sender; bounces to one come back here.
            from mailserver.senderauth.srs import SRSDirectory, SRSQueue
            srs = context.senderauth.srs
            factory.directory = SRSDirectory(factory.directory, srs)
            if factory.queue is not None:
                factory.queue = SRSQueue(factory.queue, srs)
    refusal = f"421 4.7.0 {context.config.hostname} Error: too many connections\r\n"
    # A refusal on 465 would go out in the clear before the TLS handshake: the client
    # cannot read it, but it closes the connection all the same.
    if policy.implicit_tls:
        return ListenerFactory(implicit_tls(context, factory),
                               refusal.encode(),
                               on_stop=factory.shut_down)
    return ListenerFactory(factory, refusal.encode(), on_stop=factory.shut_down)
