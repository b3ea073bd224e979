"""DANE for outbound SMTP (RFC 7672, RFC 7671): which TLSA records bind an MX host, and
whether the certificate chain it presented matches them.

Trust in DNSSEC is the validating resolver's: as Postfix does, we believe the AD bit of
an answer from the resolvers in `dns.nameservers` when `dns.dnssec = true` (RFC 6840
5.7: a query with the AD bit set asks for it; a stub cannot tell a forged AD bit from a
real one, so those resolvers must be trusted and near: loopback, or a trusted network).

lookup() (blocking: a disk/DNS thread) gives the host's DanePolicy (RFC 7672 2.2):
- INSECURE: the TLSA answer (or its denial) is not authenticated: no DANE; the caller
  goes on as before (MTA-STS, else opportunistic TLS).
- NONE: authenticated denial (NXDOMAIN or no TLSA): no DANE either.
- USABLE: authenticated records, at least one usable (usage DANE-TA(2) or DANE-EE(3),
  selector 0/1, matching type 0/1/2; RFC 7672 3.1: PKIX-TA(0) and PKIX-EE(1) are not
  for SMTP): TLS is mandatory and the chain must match one (match()), else defer.
- UNUSABLE: authenticated records, none usable: TLS is mandatory, unauthenticated
  (RFC 7672 2.2: "... MUST use TLS, but need not authenticate").
- FAILED: the lookup failed (SERVFAIL, which a validating resolver answers for bogus
  data, or a timeout): the mail waits (RFC 7672 2.1.1: a downgrade must not be possible
  by making the TLSA lookup fail).

match() checks a chain against USABLE records (RFC 7671 5.1, 5.2; RFC 7672 3.1.1, 3.1.2):
DANE-EE(3) binds the leaf alone, with no name, validity or issuer check; DANE-TA(2)
binds a certificate of the chain (or its key), below which the leaf must chain by
signatures, be within its validity and carry one of the reference names (RFC 7672
3.2.2: the MX host name, and the next-hop domain when the MX RRset was secure; a
wildcard only as the whole leftmost label, RFC 7672 3.2.3).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

#: RFC 6698 2.1.1 usages, 2.1.2 selectors, 2.1.3 matching types usable for SMTP.
DANE_TA, DANE_EE = 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2
#: A TLSA RRset larger than this many records is not read further (hostile zones).
MAX_RECORDS = 32


class DaneState(enum.Enum):
    INSECURE = "insecure"
    NONE = "none"
    USABLE = "usable"
    UNUSABLE = "unusable"
    FAILED = "failed"


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return (self.usage in (DANE_TA, DANE_EE)
                and self.selector in (SELECTOR_CERT, SELECTOR_SPKI)
                and self.mtype in (MATCH_FULL, MATCH_SHA256, MATCH_SHA512)
                and (self.mtype != MATCH_SHA256 or len(self.data) == 32)
                and (self.mtype != MATCH_SHA512 or len(self.data) == 64))


@dataclass(frozen=True)
class DanePolicy:
    state: DaneState
    records: tuple[Tlsa, ...] = ()
    reason: str = ""
    #: Names the leaf must carry for DANE-TA(2) matches (RFC 7672 3.2.2).
    names: tuple[str, ...] = field(default=())

    @property
    def requires_tls(self) -> bool:
        return self.state in (DaneState.USABLE, DaneState.UNUSABLE)


def lookup(resolver: dns.resolver.Resolver, host: str, port: int = 25,
           names: Iterable[str] = ()) -> DanePolicy:
    """The DanePolicy of MX `host` (blocking). `names`: further reference names for
    DANE-TA(2) (the next-hop domain when the MX RRset was secure); `host` is always one.
    """
    qname = f"_{port}._tcp.{host.rstrip('.')}."
    reference = tuple(dict.fromkeys(n.rstrip(".").lower() for n in (host, *names)))
    try:
        answer = resolver.resolve(qname, dns.rdatatype.TLSA, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as e:
        responses = list(e.responses().values())
        secure = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
        return DanePolicy(DaneState.NONE if secure else DaneState.INSECURE,
                          reason=f"{qname} does not exist")
    except (dns.resolver.NoNameservers, dns.exception.Timeout,
            dns.resolver.LifetimeTimeout) as e:
        return DanePolicy(DaneState.FAILED, reason=f"TLSA lookup of {qname} failed: {e}")
    if answer.response is None or not answer.response.flags & dns.flags.AD:
        return DanePolicy(DaneState.INSECURE, reason=f"{qname}: not DNSSEC-authenticated")
    if answer.rrset is None:
        return DanePolicy(DaneState.NONE, reason=f"{qname}: no TLSA records")
    records = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert))
                    for r in list(answer.rrset)[:MAX_RECORDS])
    usable = tuple(r for r in records if r.usable)
    if not usable:
        return DanePolicy(DaneState.UNUSABLE, records,
                          f"{qname}: {len(records)} TLSA records, none usable for SMTP",
                          reference)
    return DanePolicy(DaneState.USABLE, usable, f"{qname}: {len(usable)} usable", reference)


def match(policy: DanePolicy, chain: Sequence[bytes],
          now: datetime | None = None) -> str | None:
    """None when the chain (DER, leaf first, as the server sent it) matches one of the
    policy's usable records; else why not, one line for the log and the deferral."""
    if not chain:
        return "the server presented no certificate"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as e:
        return f"the server's certificate cannot be read: {e}"
    now = now or datetime.now(UTC)
    why = "no TLSA record matches the server's certificates"
    for record in policy.records:
        if record.usage == DANE_EE:
            if _matches(record, certs[0], chain[0]):
                return None  # RFC 7672 3.1.1: no name, expiry or issuer checks
            continue
        for depth, cert in enumerate(certs):
            if not _matches(record, cert, chain[depth]):
                continue
            problem = _chain_to(certs, depth, policy.names, now)
            if problem is None:
                return None
            why = problem
    return why


def _matches(record: Tlsa, cert: x509.Certificate, der: bytes) -> bool:
    if record.selector == SELECTOR_CERT:
        data = der
    else:
        data = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if record.mtype == MATCH_SHA256:
        data = hashlib.sha256(data).digest()
    elif record.mtype == MATCH_SHA512:
        data = hashlib.sha512(data).digest()
    return data == record.data


def _chain_to(certs: list[x509.Certificate], anchor: int, names: Sequence[str],
              now: datetime) -> str | None:
    """RFC 7671 5.2: the leaf chains to certs[anchor] by signatures, every certificate
    below the anchor is within its validity, and the leaf carries a reference name."""
    for depth in range(anchor):
        cert, issuer = certs[depth], certs[depth + 1]
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"certificate {depth} of the chain is outside its validity"
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as e:
            return f"certificate {depth} is not signed by the next one ({type(e).__name__})"
    if anchor == 0 and not certs[0].not_valid_before_utc <= now <= certs[0].not_valid_after_utc:
        return "the certificate is outside its validity"
    if not _names_match(certs[0], names):
        return f"the certificate names none of {', '.join(names) or '(no names)'}"
    return None


def _names_match(cert: x509.Certificate, names: Sequence[str]) -> bool:
    """RFC 7672 3.2.3: subjectAltName dNSNames (the common name only without any),
    a wildcard only as the whole leftmost label."""
    try:
        presented = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        presented = [str(a.value) for a in
                     cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    wanted = {n.lower() for n in names}
    for pattern in (p.lower().rstrip(".") for p in presented):
        if pattern in wanted:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:]:
            suffix = pattern[1:]
            if any(n.endswith(suffix) and "." not in n[:-len(suffix)] and
                   len(n) > len(suffix) for n in wanted):
                return True
    return False
