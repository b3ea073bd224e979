"""listen.http and listen.https: the MailSite, in the clear or with implicit TLS.

Only app/ imports this module (tests/test_layering.py), like the protocols' listeners.
"""

from __future__ import annotations

from pathlib import Path

from mailserver.core.context import ListenerFactory, ServerContext, implicit_tls
from mailserver.errors import ConfigError
from mailserver.http.challenges import ChallengeResponses
from mailserver.http.site import MailSite, MailSiteResource

#: Sent to a connection refused by the connection limits (app/limits.py), then closed.
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
           b"Content-Length: 0\r\n\r\n")


def make_listener(context: ServerContext, name: str) -> ListenerFactory | None:
    """The site for `http` or `https`; None for another name.

    extra["site"] is the MailSiteResource, whose `listening` app/service.py sets once
    the ports are bound (autoconfig describes the ports really listened on).
    """
    if name not in ("http", "https"):
        return None
    config = context.config
    root = MailSiteResource(config, context.disk, ChallengeResponses.under(config.data_dir),
                            read_token(config.http.metrics_token_file), secure=name == "https",
                            mounts=context.web_resources)
    site = MailSite(root, config.http.request_timeout)
    factory = implicit_tls(context, site) if name == "https" else site
    return ListenerFactory(factory, REFUSAL, extra={"site": root})


def read_token(name: str) -> str | None:
    """The first line of http.metrics_token_file (read once, at start-up)."""
    if not name:
        return None
    path = Path(name)
    try:
        token = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"http.metrics_token_file: cannot read {path}: {e}"]) from None
    if not token or not token[0].strip():
        raise ConfigError([f"http.metrics_token_file: {path} has no token on its first line"])
    return token[0].strip()
