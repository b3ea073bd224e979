"""RSA DKIM signatures are made by OpenSSL (senderauth/signing.py `_rsa_sign`) in the
place of dkimpy's pure-Python arithmetic: the same bytes for the same key and digest
(RSASSA-PKCS1-v1_5 is deterministic, RFC 8017 8.2.1), and dkim.sign uses it."""

from __future__ import annotations

import base64
import hashlib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim import crypto

from mailserver.senderauth import signing


@pytest.fixture(scope="module")
def pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@pytest.mark.parametrize("algorithm", [hashlib.sha256, hashlib.sha1])
@pytest.mark.parametrize("data", [b"", b"abc", b"x" * 5000])
def test_same_signature_as_dkimpy(pem: bytes, algorithm: object, data: bytes) -> None:
    key = crypto.parse_pem_private_key(pem)
    ours = signing._rsa_sign(algorithm(data), key)  # type: ignore[operator]
    assert ours == crypto.RSASSA_PKCS1_v1_5_sign(algorithm(data), key)  # type: ignore[operator]


def test_dkim_sign_uses_it_and_the_signature_verifies(pem: bytes) -> None:
    assert dkim.RSASSA_PKCS1_v1_5_sign is signing._rsa_sign
    message = b"From: a@example.org\nTo: b@example.net\nSubject: hi\n\nbody\n"
    signature = dkim.sign(message, b"s", b"example.org", pem, include_headers=[b"from"],
                          canonicalize=(b"relaxed", b"relaxed"), linesep=b"\n")
    public = serialization.load_pem_private_key(pem, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: record)
    assert not dkim.verify(signature + message.replace(b"body", b"b0dy"),
                           dnsfunc=lambda name, timeout=5: record)


def test_a_key_is_parsed_once_and_each_key_signs_with_its_own_numbers(
        pem: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """dkimpy parsed the PEM on every signature (0.18 ms of Python per message); the
    cache parses it once, and another key is another entry."""
    assert dkim.parse_pem_private_key is signing._parsed_private_key
    parses: list[bytes] = []
    real = signing._parse_pem_private_key
    monkeypatch.setattr(signing, "_parse_pem_private_key",
                        lambda data: parses.append(data) or real(data))
    monkeypatch.setattr(signing, "_PARSED_KEYS", {})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    message = b"From: a@example.org\nSubject: hi\n\nbody\n"
    for key in (pem, pem, other, pem, other):
        signature = dkim.sign(message, b"s", b"example.org", key, include_headers=[b"from"],
                              canonicalize=(b"relaxed", b"relaxed"), linesep=b"\n")
        public = serialization.load_pem_private_key(key, None).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5, r=record: r)
    assert parses == [pem, other]
