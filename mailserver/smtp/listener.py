"""The SMTP listeners: `smtp` (the MX, port 25), `submission` (587, STARTTLS then AUTH)
and `submissions` (465, implicit TLS: RFC 8314). One session class; the differences
are the SessionPolicy of each."""

from __future__ import annotations

from mailserver.abuse.dnsbl import Blocklists, make_blocklists
from mailserver.auth.sending_limits import SendingLimits
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
    # Port 25 routes through its own router when SRS is on (app/service.py builds it:
    # forwarded copies leave with an SRS sender, bounces to one come back here).
    target = (context.mx_target if name == "smtp" and context.mx_target is not None
              else context.target)
    factory = SMTPServerFactory(
        context.config, target,
        tls_options=None if policy.implicit_tls else context.tls,
        policy=policy, instance=context.instance,
        portal=context.portal if policy.offer_auth else None,
        senders=context.directory,
        login_throttle=context.login_throttle, abuse=context.abuse,
        sending_limits=SendingLimits(context.config) if policy.require_auth else None,
        blocklists=_blocklists(context) if name == "smtp" else None,
        message_hook=context.message_hooks.get(name),
        burl=context.submit_urls if policy.require_auth else None,
    )
    refusal = f"421 4.7.0 {context.config.hostname} Error: too many connections\r\n"
    # A refusal on 465 would go out in the clear before the TLS handshake: the client
    # cannot read it, but it closes the connection all the same.
    if policy.implicit_tls:
        return ListenerFactory(implicit_tls(context, factory),
                               refusal.encode(),
                               on_stop=factory.shut_down)
    return ListenerFactory(factory, refusal.encode(), on_stop=factory.shut_down)


def _blocklists(context: ServerContext) -> Blocklists | None:
    """Port 25's DNS blocklists ([abuse] dnsbl_zones), asked of the nameservers every
    lookup of the server uses (`[dns]`, as the shared resolver has them), without a
    thread: twisted.names, at most DNSBL_TIMEOUT seconds while the banner waits."""
    config = context.config
    servers = (context.resolver.nameservers if context.resolver is not None
               else config.dns.nameservers or config.relay.nameservers)
    return make_blocklists(config.abuse.dnsbl_zones, config.abuse.dnsbl_threshold,
                           servers, DNSBL_TIMEOUT)


#: Seconds a blocklist may take to answer before it counts as "not listed" (postscreen
#: waits up to postscreen_dnsbl_timeout = 10 s; its banner is held meanwhile).
DNSBL_TIMEOUT = 5.0
