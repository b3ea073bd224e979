"""Building the outbound TLS checks and the TLS reporter from the config (at start-up,
in process 0 only: the one that runs the queue)."""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred

from mailserver.core.context import ServerContext
from mailserver.core.dns import SharedResolver
from mailserver.errors import ConfigError
from mailserver.queue.mtasts import PolicyCache
from mailserver.queue.mtasts_fetch import FETCH_TIMEOUT, PolicyFetcher, StsPolicies, txt_lookup
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.outtls import OutboundTls
from mailserver.queue.tlspolicy import default_trust
from mailserver.queue.tlsreporter import TlsReporter
from mailserver.queue.tlsrpt import ResultLog


def _roots(path: str) -> list[x509.Certificate]:
    """relay.ca_file's certificates; ConfigError naming the file (blocking: start-up)."""
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise ConfigError([f"relay.ca_file: cannot read {path}: {e.strerror}"]) from None
    except ValueError:
        raise ConfigError([f"relay.ca_file: no readable PEM certificate in {path}"]) from None
    return certs


def outbound_tls_from(context: ServerContext) -> OutboundTls:
    config = context.config
    relay = config.relay
    roots = _roots(relay.ca_file) if relay.ca_file else []
    # The system's roots are read here, at start-up, not on the reactor at the first
    # verified session.
    store: crypto.X509Store | None = default_trust() if not roots else None
    web_trust = None  # None: optionsForClientTLS uses the platform's roots
    if roots:
        store = crypto.X509Store()
        for cert in roots:
            store.add_cert(crypto.X509.from_cryptography(cert))
        web_trust = ssl.trustRootFromCertificates([
            ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
            for c in roots])
    shared = context.resolver or SharedResolver.from_config(config)
    resolver = lambda: shared.resolver(relay.dns_timeout)  # noqa: E731
    outbound = OutboundTls(None, resolver if shared.dnssec else None, store,
                           ResultLog(config.data_dir / "tls-rpt"), context.disk.run,
                           relay.source_address)
    if relay.mta_sts:
        fetcher = PolicyFetcher(reactor, resolver, web_trust, relay.https_port,
                                min(FETCH_TIMEOUT, float(relay.command_timeout)))
        outbound.policies = StsPolicies(
            PolicyCache(config.data_dir / "mta-sts"), txt_lookup(resolver),
            fetcher.fetch, context.disk.run, on_failure=outbound.policy_failed)
    return outbound


def tls_reporter_from(context: ServerContext, queue: OutboundQueue,
                      sign: Callable[[], Callable[[bytes], Deferred[bytes]] | None]
                      ) -> TlsReporter:
    config = context.config
    settings = config.tls_reporting
    shared = context.resolver or SharedResolver.from_config(config)
    return TlsReporter(
        ResultLog(config.data_dir / "tls-rpt"), context.disk, queue,
        lambda: shared.resolver(config.relay.dns_timeout), settings.enabled,
        settings.organization, settings.contact,
        settings.sender or f"noreply-smtp-tls-reporting@{config.hostname}",
        config.hostname, sign)
