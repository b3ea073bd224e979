"""SASL PLAIN decoding: the byte forms clients send, and the malformed ones."""

from __future__ import annotations

import base64

import pytest

from mailserver.auth.sasl import SASLError, decode_base64, plain_credentials


def test_plain_without_authzid() -> None:
    creds = plain_credentials(b"\0alice@example.org\0pw word")
    assert creds.username == b"alice@example.org"
    assert creds.password == b"pw word"


def test_plain_with_same_authzid_any_case() -> None:
    creds = plain_credentials(b"Alice@Example.org\0alice@example.org\0pw")
    assert creds.username == b"alice@example.org"


@pytest.mark.parametrize("message", [
    b"alice\0pw",                          # two fields
    b"\0alice\0pw\0extra",                 # four fields
    b"\0\0pw",                             # empty authcid
    b"bob@example.org\0alice@example.org\0pw",  # acting as someone else
    b"\0" + b"a" * 256 + b"\0pw",          # authcid over 255 octets
    b"a" * 256 + b"\0" + b"a" * 256 + b"\0pw",  # authzid over 255 octets
    b"\0\xff\xfe\0pw",                     # not UTF-8
])
def test_plain_malformed(message: bytes) -> None:
    with pytest.raises(SASLError):
        plain_credentials(message)


@pytest.mark.parametrize("length", [256, 1024, 1025, 4096])
def test_long_passwords_go_to_the_checker(length: int) -> None:
    """RFC 4616 2's 255 octets is what a server must accept at least. Longer passwords
    are not a syntax error here: the checker refuses those over 1024 octets like a wrong
    password (same reply, same delay), so the client cannot tell the difference."""
    creds = plain_credentials(b"\0alice@example.org\0" + b"p" * length)
    assert creds.password == b"p" * length


def test_base64() -> None:
    assert decode_base64(base64.b64encode(b"\0a\0b")) == b"\0a\0b"
    assert decode_base64(b"=") == b""
    with pytest.raises(SASLError):
        decode_base64(b"not base64!")
    with pytest.raises(SASLError):
        decode_base64("AAA")  # bad padding
