"""queue/dane.py's lookup() against a real validating resolver (tests/dnssec_resolver:
unbound with zones signed here), so "authenticated" is the AD bit of real DNSSEC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest
from dnssec_resolver import ValidatingResolver, ad_bit

from mailserver.core.dns import SharedResolver
from mailserver.queue.dane import DaneState, Tlsa, lookup

EE = "3 1 1 " + "ab" * 32
SIGNED = [
    "mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {EE}",
    "ta IN A 127.0.0.1", "_25._tcp.ta IN TLSA 2 0 1 " + "cd" * 32,
    "pkix IN A 127.0.0.1", "_25._tcp.pkix IN TLSA 1 1 1 " + "ef" * 32,
    "pkix IN A 127.0.0.1", "_25._tcp.pkix IN TLSA 0 0 1 " + "ef" * 32,
    "bare IN A 127.0.0.1",
    "mixed IN A 127.0.0.1", f"_25._tcp.mixed IN TLSA {EE}",
    "_25._tcp.mixed IN TLSA 1 1 1 " + "ef" * 32,
]


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dns.resolver.Resolver]:
    zones = ValidatingResolver(
        tmp_path_factory.mktemp("unbound"), {"dane.test": SIGNED},
        unsigned={"plain.test": ["mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {EE}"]},
        bogus={"bogus.test": ["mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {EE}"]})
    with zones:
        assert ad_bit(zones.nameserver, "mx.dane.test.", "A")  # the fixture's own check
        # dns.dnssec = true: the shared resolver asks for the AD bit on every query.
        yield SharedResolver([zones.nameserver], 5, 0, dnssec=True).resolver()


def test_authenticated_dane_ee(resolver: dns.resolver.Resolver) -> None:
    policy = lookup(resolver, "mx.dane.test", names=["dane.test"])
    assert policy.state is DaneState.USABLE and policy.requires_tls
    assert policy.records == (Tlsa(3, 1, 1, bytes.fromhex("ab" * 32)),)
    assert policy.names == ("mx.dane.test", "dane.test")


def test_only_usable_records_are_kept(resolver: dns.resolver.Resolver) -> None:
    policy = lookup(resolver, "mixed.dane.test")
    assert policy.state is DaneState.USABLE
    assert [r.usage for r in policy.records] == [3]


def test_pkix_usages_only_mean_tls_without_authentication(
        resolver: dns.resolver.Resolver) -> None:
    """RFC 7672 2.2 / 3.1: secure records, none usable for SMTP: TLS, unauthenticated."""
    policy = lookup(resolver, "pkix.dane.test")
    assert policy.state is DaneState.UNUSABLE and policy.requires_tls
    assert "none usable for SMTP" in policy.reason


@pytest.mark.parametrize("host", ["bare.dane.test", "nothere.dane.test"])
def test_authenticated_denial_means_no_dane(resolver: dns.resolver.Resolver,
                                            host: str) -> None:
    """No TLSA (NODATA) or no such name (NXDOMAIN), both proven by NSEC: no DANE."""
    policy = lookup(resolver, host)
    assert policy.state is DaneState.NONE and not policy.requires_tls


def test_unsigned_zone_is_insecure(resolver: dns.resolver.Resolver) -> None:
    """TLSA records without the AD bit are not used at all (RFC 7672 2.2)."""
    policy = lookup(resolver, "mx.plain.test")
    assert policy.state is DaneState.INSECURE and not policy.requires_tls


def test_bogus_zone_fails_and_mail_waits(resolver: dns.resolver.Resolver) -> None:
    """Forged signatures: the validator answers SERVFAIL; the lookup FAILED, so the
    caller defers instead of falling back to plaintext (RFC 7672 2.1.1)."""
    policy = lookup(resolver, "mx.bogus.test")
    assert policy.state is DaneState.FAILED
    assert "TLSA lookup of _25._tcp.mx.bogus.test. failed" in policy.reason


def test_without_asking_for_ad_nothing_is_authenticated(tmp_path: Path,
                                                        resolver: dns.resolver.Resolver
                                                        ) -> None:
    """A resolver that does not set AD in its query gets no AD back (RFC 6840 5.7),
    so DANE stays off unless dns.dnssec asks for it."""
    plain = SharedResolver([f"127.0.0.1:{resolver.nameservers[0].port}"], 5, 0).resolver()
    assert lookup(plain, "mx.dane.test").state is DaneState.INSECURE
