"""Routing (RFC 5321 5.1, RFC 7505) against a real DNS server on loopback."""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.resolver as dns_resolver
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from dns_server import DNSServer  # noqa: E402

from mailserver.queue.routing import (  # noqa: E402
    Hop,
    RouteError,
    Router,
    Self,
    make_resolver,
    self_from,
)

ZONE = {
    "pref.test": {"MX": [[20, "backup.pref.test"], [10, "primary.pref.test"]]},
    "primary.pref.test": {"A": ["192.0.2.1"]},
    "backup.pref.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "equal.test": {"MX": [[10, "a.equal.test"], [10, "b.equal.test"], [10, "c.equal.test"]]},
    "a.equal.test": {"A": ["192.0.2.11"]},
    "b.equal.test": {"A": ["192.0.2.12"]},
    "c.equal.test": {"A": ["192.0.2.13"]},
    "nomx.test": {"A": ["192.0.2.20"], "AAAA": ["2001:db8::20"]},
    "null.test": {"MX": [[0, "."]]},
    "servfail.test": {"SERVFAIL": True},
    "timeout.test": {"TIMEOUT": True},
    "dangling.test": {"MX": [[10, "gone.dangling.test"]]},
    "halfbroken.test": {"MX": [[10, "broken.halfbroken.test"], [20, "ok.halfbroken.test"]]},
    "broken.halfbroken.test": {"SERVFAIL": True},
    "ok.halfbroken.test": {"A": ["192.0.2.30"]},
    "loop.test": {"MX": [[10, "mx.ourselves.test"]]},
    "loopaddr.test": {"MX": [[10, "other.loopaddr.test"]]},
    "other.loopaddr.test": {"A": ["127.0.0.2"]},
    "behind.test": {"MX": [[5, "better.behind.test"], [10, "mx.ourselves.test"],
                           [20, "worse.behind.test"]]},
    "better.behind.test": {"A": ["192.0.2.40"]},
    "worse.behind.test": {"A": ["192.0.2.41"]},
    "smart.test": {"A": ["192.0.2.50"]},
}

ME = Self(frozenset({"mx.ourselves.test"}), frozenset({"127.0.0.2"}))


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(ZONE) as server:
        yield server


@pytest.fixture
def router(dns: DNSServer) -> Router:
    """A generous timeout: the loopback DNS server is a process of its own, which a
    loaded machine may keep from answering within 1.5 s (a "timed out" for pref.test)."""
    return Router(make_resolver([dns.nameserver], 30), 2525, lambda: ME)


def error(router: Router, domain: str) -> RouteError:
    with pytest.raises(RouteError) as info:
        router.route(domain)
    return info.value


def test_mx_by_preference_every_address(router: Router) -> None:
    assert router.route("pref.test") == [
        Hop("primary.pref.test", "192.0.2.1", 2525),
        Hop("backup.pref.test", "192.0.2.2", 2525),
        Hop("backup.pref.test", "2001:db8::2", 2525),
    ]


def test_equal_preferences_are_shuffled(router: Router) -> None:
    firsts = collections.Counter(router.route("equal.test")[0].host for _ in range(30))
    assert set(firsts) == {"a.equal.test", "b.equal.test", "c.equal.test"}, firsts
    assert sorted(h.host for h in router.route("equal.test")) == [
        "a.equal.test", "b.equal.test", "c.equal.test"]


def test_no_mx_falls_back_to_a_and_aaaa(router: Router) -> None:
    assert router.route("NoMX.test.") == [Hop("nomx.test", "192.0.2.20", 2525),
                                          Hop("nomx.test", "2001:db8::20", 2525)]


def test_null_mx_bounces_at_once(router: Router) -> None:
    e = error(router, "null.test")
    assert (e.permanent, e.status) == (True, "5.1.10")
    assert "RFC 7505" in e.text


def test_nxdomain_bounces(router: Router) -> None:
    e = error(router, "nonexistent.test")
    assert (e.permanent, e.status) == (True, "5.1.2")
    assert "nonexistent.test" in e.text


def test_servfail_is_temporary(router: Router) -> None:
    e = error(router, "servfail.test")
    assert (e.permanent, e.status) == (False, "4.4.3")
    assert "SERVFAIL" in e.text


def test_dns_timeout_is_temporary(dns: DNSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """One MX lookup, cut at relay.dns_timeout (the resolver's lifetime), and the
    message deferred: asserted on the lookups made, not on the elapsed time."""
    lookups: list[tuple[str, float, str]] = []
    resolve = dns_resolver.Resolver.resolve

    def spy(self: dns_resolver.Resolver, qname: str, rdtype: str, *args: Any,
            **kwargs: Any) -> Any:
        try:
            return resolve(self, qname, rdtype, *args, **kwargs)
        except Exception as e:
            lookups.append((f"{qname} {rdtype}", self.lifetime, type(e).__name__))
            raise

    monkeypatch.setattr(dns_resolver.Resolver, "resolve", spy)
    router = Router(make_resolver([dns.nameserver], 1.5), 2525, lambda: ME)
    e = error(router, "timeout.test")
    assert (e.permanent, e.status) == (False, "4.4.3")
    assert "timed out" in e.text
    assert lookups == [("timeout.test MX", 1.5, "LifetimeTimeout")]


def test_mx_without_address(router: Router) -> None:
    e = error(router, "dangling.test")
    assert e.permanent and e.status == "5.1.2"


def test_one_broken_mx_does_not_hide_the_others(router: Router) -> None:
    assert router.route("halfbroken.test") == [Hop("ok.halfbroken.test", "192.0.2.30", 2525)]


def test_mx_naming_ourselves_loops(router: Router) -> None:
    e = error(router, "loop.test")
    assert (e.permanent, e.status) == (True, "5.4.6")
    assert e.text == "mail for loop.test loops back to myself"


def test_mx_at_our_address_loops(router: Router) -> None:
    e = error(router, "loopaddr.test")
    assert (e.permanent, e.status) == (True, "5.4.6")


def test_only_mx_better_than_ourselves_are_used(router: Router) -> None:
    assert router.route("behind.test") == [Hop("better.behind.test", "192.0.2.40", 2525)]


def test_address_literal(router: Router) -> None:
    assert router.route("[192.0.2.9]") == [Hop("[192.0.2.9]", "192.0.2.9", 2525)]
    assert error(router, "[127.0.0.2]").status == "5.4.6"


def test_smarthost_takes_everything(dns: DNSServer) -> None:
    router = Router(make_resolver([dns.nameserver], 1.5), 25, lambda: ME,
                    smarthost="smart.test:587")
    assert router.route("null.test") == [Hop("smart.test", "192.0.2.50", 587)]


def test_wildcard_listener_owns_every_loopback_address(dns: DNSServer) -> None:
    me = self_from("mx.ourselves.test", ["0.0.0.0"])
    router = Router(make_resolver([dns.nameserver], 1.5), 25, lambda: me)
    assert error(router, "loopaddr.test").status == "5.4.6"
    assert router.route("pref.test")[0].address == "192.0.2.1"
    specific = self_from("mx.ourselves.test", ["127.0.0.9"])
    assert not specific.is_me("other.test", ["127.0.0.2"])
