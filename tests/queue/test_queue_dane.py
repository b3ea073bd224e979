"""queue/dane.py's match(): which certificate chains satisfy which TLSA records
(RFC 7671 5.1/5.2, RFC 7672 3.1-3.2), with chains made here by a test CA."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailserver.queue.dane import DanePolicy, DaneState, Tlsa, match

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def make_cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
              sans: list[str] | None = None, ca: bool = False,
              days: tuple[int, int] = (-10, 90)
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + timedelta(days=days[0]))
               .not_valid_after(NOW + timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


ROOT = make_cert("Test Root", None, ca=True, days=(-100, 3650))
INTER = make_cert("Test Intermediate", ROOT, ca=True, days=(-100, 3650))
LEAF = make_cert("mx.example.test", INTER, sans=["mx.example.test"])
CHAIN = [der(LEAF[0]), der(INTER[0]), der(ROOT[0])]


def policy(*records: Tlsa, names: tuple[str, ...] = ("mx.example.test",)) -> DanePolicy:
    return DanePolicy(DaneState.USABLE, records, "", names)


@pytest.mark.parametrize("record", [
    Tlsa(3, 1, 1, hashlib.sha256(spki(LEAF[0])).digest()),
    Tlsa(3, 0, 1, hashlib.sha256(der(LEAF[0])).digest()),
    Tlsa(3, 1, 2, hashlib.sha512(spki(LEAF[0])).digest()),
    Tlsa(3, 0, 0, der(LEAF[0])),
    Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest()),
    Tlsa(2, 1, 1, hashlib.sha256(spki(ROOT[0])).digest()),
])
def test_matching_records(record: Tlsa) -> None:
    assert match(policy(record), CHAIN, NOW) is None


def test_dane_ee_ignores_name_and_expiry() -> None:
    """RFC 7672 3.1.1: a DANE-EE(3) match is the whole check (no name, no dates)."""
    old = make_cert("other.example", INTER, sans=["other.example"], days=(-400, -300))
    record = Tlsa(3, 1, 1, hashlib.sha256(spki(old[0])).digest())
    assert match(policy(record), [der(old[0])], NOW) is None


def test_dane_ta_needs_the_name() -> None:
    record = Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest())
    assert match(policy(record, names=("mail.other.test",)), CHAIN, NOW) == (
        "the certificate names none of mail.other.test")


def test_dane_ta_needs_validity() -> None:
    expired = make_cert("mx.example.test", INTER, sans=["mx.example.test"],
                        days=(-100, -1))
    record = Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest())
    assert match(policy(record), [der(expired[0]), der(INTER[0])], NOW) == (
        "certificate 0 of the chain is outside its validity")


def test_dane_ta_needs_the_signature() -> None:
    """A leaf the anchor did not sign, sent with the anchor in the chain (a MITM
    replaying the real intermediate beside its own leaf): refused."""
    rogue_ca = make_cert("Test Intermediate", ROOT, ca=True)  # same name, other key
    rogue = make_cert("mx.example.test", rogue_ca, sans=["mx.example.test"])
    record = Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest())
    why = match(policy(record), [der(rogue[0]), der(INTER[0])], NOW)
    assert why is not None and why.startswith("certificate 0 is not signed by the next one")


@pytest.mark.parametrize(("sans", "ok"), [
    (["*.example.test"], True), (["*.test"], False), (["mx.*.test"], False),
    (["*x.example.test"], False), (["MX.EXAMPLE.TEST."], True), (None, True)])
def test_reference_names_and_wildcards(sans: list[str] | None, ok: bool) -> None:
    """RFC 7672 3.2.3: a wildcard only as the whole leftmost label; the common name
    counts only when there is no subjectAltName."""
    leaf = make_cert("mx.example.test", INTER, sans=sans)
    record = Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest())
    assert (match(policy(record), [der(leaf[0]), der(INTER[0])], NOW) is None) is ok


def test_self_signed_mitm_matches_nothing() -> None:
    mitm = make_cert("mx.example.test", None, sans=["mx.example.test"])
    records = (Tlsa(3, 1, 1, hashlib.sha256(spki(LEAF[0])).digest()),
               Tlsa(2, 0, 1, hashlib.sha256(der(INTER[0])).digest()))
    assert match(policy(*records), [der(mitm[0])], NOW) == (
        "no TLSA record matches the server's certificates")


@pytest.mark.parametrize(("chain", "why"), [
    ([], "the server presented no certificate"),
    ([b"\x30\x03garbage"], "the server's certificate cannot be read"),
])
def test_hostile_chains(chain: list[bytes], why: str) -> None:
    record = Tlsa(3, 1, 1, hashlib.sha256(spki(LEAF[0])).digest())
    got = match(policy(record), chain, NOW)
    assert got is not None and got.startswith(why)


@pytest.mark.parametrize(("record", "usable"), [
    (Tlsa(0, 0, 1, b"\x00" * 32), False),   # PKIX-TA: not for SMTP (RFC 7672 3.1)
    (Tlsa(1, 1, 1, b"\x00" * 32), False),   # PKIX-EE
    (Tlsa(4, 1, 1, b"\x00" * 32), False),   # unknown usage
    (Tlsa(3, 2, 1, b"\x00" * 32), False),   # unknown selector
    (Tlsa(3, 1, 3, b"\x00" * 32), False),   # unknown matching type
    (Tlsa(3, 1, 1, b"\x00" * 31), False),   # a SHA-256 of the wrong length
    (Tlsa(3, 1, 2, b"\x00" * 32), False),   # a SHA-512 of the wrong length
    (Tlsa(3, 1, 1, b"\x00" * 32), True),
    (Tlsa(2, 0, 0, b"\x30"), True),
])
def test_usable_records(record: Tlsa, usable: bool) -> None:
    assert record.usable is usable
