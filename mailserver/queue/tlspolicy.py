"""What TLS a delivery to one MX host needs, and whether the session it got is enough:
DANE (RFC 7672), MTA-STS (RFC 8461), REQUIRETLS (RFC 8689), else opportunistic TLS.

The order (RFC 8461 2: "senders who implement both DANE and MTA-STS ... DANE takes
precedence"; RFC 7672 2.2):
- DANE USABLE: TLS, and the chain must match a TLSA record (dane.match).
- DANE UNUSABLE: TLS, unauthenticated.
- MTA-STS enforce: the host must match a policy pattern (checked when the MX list is
  made: allowed_hosts), TLS, and the chain must be valid for the host name (PKIX,
  pkix_problem) against relay.ca_file or the system's roots.
- MTA-STS testing: as opportunistic, but the outcome is recorded as if enforced (for
  TLS-RPT), never refused.
- REQUIRETLS on the message: like MTA-STS enforce or DANE, whichever the domain has;
  with neither, the message cannot be sent (RFC 8689 4.1: verified TLS only), 5.7.30.
- Otherwise opportunistic: TLS if offered, no check (RFC 7435).

The handshake itself never verifies (CertificateOptions()): the session is judged after
it, by judge(), so one code path serves every level, testing mode can see what enforce
would have done, and every outcome gets its TLS-RPT result type (RFC 8460 4.3).
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname

from mailserver.queue.dane import DanePolicy, DaneState, match
from mailserver.queue.mtasts import StsPolicy


class Level(enum.Enum):
    OPPORTUNISTIC = "opportunistic"
    DANE = "dane"
    DANE_UNAUTHENTICATED = "dane-unauthenticated"
    STS_ENFORCE = "mta-sts"
    STS_TESTING = "mta-sts-testing"
    REQUIRETLS_IMPOSSIBLE = "requiretls-impossible"


@dataclass(frozen=True)
class HopTls:
    """The TLS a hop needs, decided before connecting."""

    host: str
    level: Level
    dane: DanePolicy | None = None
    sts: StsPolicy | None = None

    @property
    def required(self) -> bool:
        return self.level in (Level.DANE, Level.DANE_UNAUTHENTICATED, Level.STS_ENFORCE)

    @property
    def policy_type(self) -> str:
        """RFC 8460 4.3's policy type for the report."""
        if self.level in (Level.DANE, Level.DANE_UNAUTHENTICATED):
            return "tlsa"
        if self.level in (Level.STS_ENFORCE, Level.STS_TESTING):
            return "sts"
        return "no-policy-found"


def hop_tls(host: str, dane: DanePolicy | None, sts: StsPolicy | None,
            requiretls: bool = False) -> HopTls:
    """The level for MX `host` of a domain with these policies (module docstring)."""
    if dane is not None and dane.state is DaneState.USABLE:
        return HopTls(host, Level.DANE, dane, sts)
    if dane is not None and dane.state is DaneState.UNUSABLE and not requiretls:
        return HopTls(host, Level.DANE_UNAUTHENTICATED, dane, sts)
    if sts is not None and (sts.enforced or (requiretls and sts.mode == "testing")):
        return HopTls(host, Level.STS_ENFORCE, dane, sts)
    if requiretls:
        return HopTls(host, Level.REQUIRETLS_IMPOSSIBLE, dane, sts)
    if sts is not None and sts.mode == "testing":
        return HopTls(host, Level.STS_TESTING, dane, sts)
    return HopTls(host, Level.OPPORTUNISTIC, dane, sts)


def allowed_hosts(hosts: Sequence[str], sts: StsPolicy | None) -> list[str]:
    """RFC 8461 4.1 and 5: with an enforced policy, only the MX hosts it names."""
    if sts is None or not sts.enforced:
        return list(hosts)
    return [h for h in hosts if sts.allows(h)]


@dataclass(frozen=True)
class Verdict:
    """How a session measured up: `ok` to deliver, the TLS-RPT result type, why."""

    ok: bool
    result: str  # "success" or an RFC 8460 4.3 result type
    reason: str = ""
    verified: str = ""  # "dane", "mta-sts" when the peer was authenticated, else ""


def judge(needs: HopTls, tls: bool, chain: Sequence[bytes],
          trust: crypto.X509Store | None, starttls_offered: bool = True) -> Verdict:
    """Whether the session (TLS or not, the peer's chain in DER, leaf first) satisfies
    `needs`. For testing mode the verdict is ok, but the result type says what an
    enforced policy would have found."""
    if needs.level is Level.REQUIRETLS_IMPOSSIBLE:
        return Verdict(False, "validation-failure",
                       "REQUIRETLS: the domain has neither DANE nor MTA-STS")
    if not tls:
        if not starttls_offered:
            why, result = "the server did not offer STARTTLS", "starttls-not-supported"
        else:
            why, result = "the TLS handshake failed", "validation-failure"
        return Verdict(not needs.required, result, why)
    if needs.level is Level.DANE:
        assert needs.dane is not None
        problem = match(needs.dane, chain)
        if problem is not None:
            return Verdict(False, "validation-failure", f"DANE: {problem}")
        return Verdict(True, "success", verified="dane")
    if needs.level in (Level.STS_ENFORCE, Level.STS_TESTING):
        problem, result = pkix_problem(chain, needs.host, trust)
        if problem is not None:
            enforced = needs.level is Level.STS_ENFORCE
            return Verdict(not enforced, result, f"MTA-STS: {problem}")
        return Verdict(True, "success", verified="mta-sts")
    return Verdict(True, "success")


def pkix_problem(chain: Sequence[bytes], host: str, trust: crypto.X509Store | None
                 ) -> tuple[str | None, str]:
    """(None, "success") when the chain verifies to a trusted root and names `host`
    (RFC 8461 4.2: "... the certificate presented ... MUST be valid for the MX host
    name"); else (why, the RFC 8460 result type)."""
    if not chain:
        return "no certificate presented", "certificate-not-trusted"
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        store = trust if trust is not None else default_trust()
        context = crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(x509.load_der_x509_certificate(c))
             for c in chain[1:8]])
        context.verify_certificate()
    except crypto.X509StoreContextError as e:
        text = str(e)
        result = "certificate-expired" if "expired" in text else "certificate-not-trusted"
        return f"certificate not trusted: {text[:160]}", result
    except ValueError as e:
        return f"certificate unreadable: {e}", "certificate-not-trusted"
    try:
        verify_certificate_hostname(leaf, host.rstrip("."))
    except VerificationError:
        return f"certificate not valid for {host}", "certificate-host-mismatch"
    return None, "success"


_default_store: crypto.X509Store | None = None


def default_trust() -> crypto.X509Store:
    """The system's trust roots (OpenSSL's default paths), loaded once."""
    global _default_store
    if _default_store is None:
        paths = ssl.get_default_verify_paths()  # Debian: /etc/ssl/certs
        store = crypto.X509Store()
        if paths.cafile or paths.capath:
            try:
                store.load_locations(paths.cafile, paths.capath)
            except crypto.Error:  # unreadable: nothing is trusted (fails closed)
                pass
        _default_store = store
    return _default_store


def trust_from_file(path: str) -> crypto.X509Store:
    """relay.ca_file: a PEM bundle of the roots to trust instead of the system's."""
    store = crypto.X509Store()
    store.load_locations(path)
    return store
