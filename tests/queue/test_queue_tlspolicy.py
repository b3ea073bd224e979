"""queue/tlspolicy.py: the TLS a hop needs (DANE before MTA-STS, RFC 8461 2; REQUIRETLS,
RFC 8689) and the verdict on the session it got, with its TLS-RPT result type."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from test_queue_dane import INTER, LEAF, ROOT, make_cert, spki

from mailserver.queue.dane import DanePolicy, DaneState, Tlsa
from mailserver.queue.mtasts import StsPolicy
from mailserver.queue.tlspolicy import Level, allowed_hosts, hop_tls, judge, pkix_problem

HOST = "mx.example.test"
ENFORCE = StsPolicy("example.test", "1", "enforce", ("mx.example.test", "*.b.test"), 86400, 0)
TESTING = StsPolicy("example.test", "1", "testing", ("mx.example.test",), 86400, 0)
EE = Tlsa(3, 1, 1, hashlib.sha256(spki(LEAF[0])).digest())
DANE = DanePolicy(DaneState.USABLE, (EE,), "", (HOST,))
UNUSABLE = DanePolicy(DaneState.UNUSABLE, (Tlsa(1, 1, 1, b"x" * 32),), "", (HOST,))
NONE = DanePolicy(DaneState.NONE)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


CHAIN = [der(LEAF[0]), der(INTER[0])]


def trust() -> crypto.X509Store:
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(ROOT[0]))
    return store


@pytest.mark.parametrize(("dane", "sts", "requiretls", "level"), [
    (DANE, ENFORCE, False, Level.DANE),                 # DANE takes precedence
    (UNUSABLE, ENFORCE, False, Level.DANE_UNAUTHENTICATED),
    (UNUSABLE, ENFORCE, True, Level.STS_ENFORCE),       # REQUIRETLS wants authentication
    (NONE, ENFORCE, False, Level.STS_ENFORCE),
    (None, TESTING, False, Level.STS_TESTING),
    (None, TESTING, True, Level.STS_ENFORCE),           # REQUIRETLS enforces a policy
    (None, None, True, Level.REQUIRETLS_IMPOSSIBLE),
    (None, None, False, Level.OPPORTUNISTIC),
])
def test_levels(dane: DanePolicy | None, sts: StsPolicy | None, requiretls: bool,
                level: Level) -> None:
    assert hop_tls(HOST, dane, sts, requiretls).level is level


def test_enforced_policy_filters_mx_hosts() -> None:
    hosts = ["mx.example.test", "a.b.test", "evil.example.net"]
    assert allowed_hosts(hosts, ENFORCE) == ["mx.example.test", "a.b.test"]
    assert allowed_hosts(hosts, TESTING) == hosts
    assert allowed_hosts(hosts, None) == hosts


def test_dane_verdicts() -> None:
    needs = hop_tls(HOST, DANE, None)
    assert judge(needs, True, CHAIN, trust()).verified == "dane"
    mitm = make_cert(HOST, None, sans=[HOST])
    bad = judge(needs, True, [der(mitm[0])], trust())
    assert (bad.ok, bad.result) == (False, "validation-failure")
    stripped = judge(needs, False, [], trust(), starttls_offered=False)
    assert (stripped.ok, stripped.result, stripped.reason) == (
        False, "starttls-not-supported", "the server did not offer STARTTLS")


def test_mta_sts_verdicts() -> None:
    enforce, testing = hop_tls(HOST, None, ENFORCE), hop_tls(HOST, None, TESTING)
    assert judge(enforce, True, CHAIN, trust()).verified == "mta-sts"
    self_signed = [der(make_cert(HOST, None, sans=[HOST])[0])]
    refused = judge(enforce, True, self_signed, trust())
    assert (refused.ok, refused.result) == (False, "certificate-not-trusted")
    reported = judge(testing, True, self_signed, trust())
    assert (reported.ok, reported.result) == (True, "certificate-not-trusted")
    other = hop_tls("a.b.test", None, ENFORCE)  # allowed by *.b.test, cert names mx.
    mismatch = judge(other, True, CHAIN, trust())
    assert (mismatch.ok, mismatch.result) == (False, "certificate-host-mismatch")
    assert judge(enforce, False, [], trust(), starttls_offered=False).ok is False
    assert judge(testing, False, [], trust(), starttls_offered=False).ok is True


def test_expired_certificate() -> None:
    """make_cert dates relative to 2026-12-07: a day before it has passed for good."""
    old = make_cert(HOST, INTER, sans=[HOST], days=(-30, -1))
    assert old[0].not_valid_after_utc < datetime.now(UTC)
    problem, result = pkix_problem([der(old[0]), der(INTER[0])], HOST, trust())
    assert result == "certificate-expired" and problem is not None


def test_opportunistic_never_refuses() -> None:
    needs = hop_tls(HOST, None, None)
    assert judge(needs, False, [], None, starttls_offered=False).ok
    assert judge(needs, True, [b"garbage"], None).ok


def test_requiretls_without_a_policy_is_refused() -> None:
    verdict = judge(hop_tls(HOST, None, None, requiretls=True), True, CHAIN, trust())
    assert not verdict.ok and "REQUIRETLS" in verdict.reason
