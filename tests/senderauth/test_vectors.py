"""Published examples: RFC 8463 Appendix A (the RFC 6376 Appendix A message signed
with Ed25519 and RSA) verifies through our checker, and the signatures we make
over the same message use the tags, headers and canonicalisation we promise."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import DNSServer
from sa_helpers import CLIENT, checker

from mailserver.senderauth.keys import key_from_pem
from mailserver.senderauth.signing import headers_to_sign, sign_with

pytestmark = pytest.mark.timeout(60)

# RFC 8463 A.2
RECORDS = {
    "brisbane._domainkey.football.example.com": {
        "TXT": ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]},
    "test._domainkey.football.example.com": {"TXT": [[
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR",
        "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC",
        "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3",
        "Ip3G+2kryOTIKT+l/K4w3QIDAQAB"]]},
}

# RFC 6376 A.1 / RFC 8463 A.3
MESSAGE = b"""From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
"""

# RFC 8463 A.3
SIGNATURES = b"""DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
"""

# RFC 8463 A.1: the Ed25519 secret key (its seed), PKCS#8.
ED25519_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(RECORDS) as server:
        yield server


def test_rfc8463_example_verifies(dns: DNSServer) -> None:
    check = checker(dns.nameserver)
    early = check.envelope_sync(CLIENT, "football.example.com", "joe@football.example.com")
    header = check.message_sync(SIGNATURES + MESSAGE, early).header.decode()
    assert ("dkim=pass header.d=football.example.com header.s=brisbane "
            "header.a=ed25519-sha256 header.b=\"/gCrinpc\"") in header
    assert ("dkim=pass header.d=football.example.com header.s=test "
            "header.a=rsa-sha256 header.b=F45dVWDf") in header


def test_rfc8463_example_altered_body_fails(dns: DNSServer) -> None:
    check = checker(dns.nameserver)
    early = check.envelope_sync(CLIENT, "football.example.com", "joe@football.example.com")
    altered = SIGNATURES + MESSAGE.replace(b"We lost", b"We won")
    header = check.message_sync(altered, early).header.decode()
    assert header.count("dkim=fail") == 2 and "dkim=pass" not in header


def test_rfc8463_key_gives_the_published_record_and_body_hash(tmp_path: Path) -> None:
    key = key_from_pem("football.example.com", "brisbane", ED25519_PEM)
    assert key.record == RECORDS["brisbane._domainkey.football.example.com"]["TXT"][0]
    signature = sign_with(MESSAGE, [key]).decode()
    # Same canonical body as the RFC's signature (relaxed body hash).
    assert "bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=" in re.sub(r"\s", "", signature
                                                                     ).replace(";", "; ")
    assert "c=relaxed/relaxed" in signature and "a=ed25519-sha256" in signature


def test_oversigned_headers() -> None:
    names = [h.decode() for h in headers_to_sign(MESSAGE)]
    for name in ("from", "to", "subject", "date", "message-id"):
        assert names.count(name) == 2, name  # present once, signed twice (RFC 6376 8.15)
    assert names.count("reply-to") == 0 and names.count("cc") == 0
