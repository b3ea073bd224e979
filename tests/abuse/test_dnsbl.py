"""DNS blocklist scoring (mailserver/abuse/dnsbl.py) with a fake resolver."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.names.error import DNSNameError, DNSServerError

from mailserver.abuse.dnsbl import Blocklists, Score, is_listing, parse_zones, query_name


def test_query_names_rfc_5782() -> None:
    assert query_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    assert query_name("::ffff:192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    assert query_name("2001:db8:1:2::1", "bl.example") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example")
    assert query_name("not-an-ip", "bl.example") is None


def test_listing_answers() -> None:
    assert is_listing("127.0.0.2") and is_listing("127.0.0.11")
    # 127.0.0.1 is not a listing; 127.255.255.x are Spamhaus's error codes.
    assert not is_listing("127.0.0.1") and not is_listing("127.255.255.254")
    assert not is_listing("192.0.2.1") and not is_listing("junk")


def score(answers: dict[str, object], ip: str = "192.0.2.99",
          zones: tuple[str, ...] = ("a.example=2", "b.example", "c.example")) -> Score:
    """Score with a lookup that answers from `answers` (a list, or an exception)."""
    asked: list[str] = []

    def lookup(name: str) -> Deferred[list[str]]:
        asked.append(name)
        answer = answers.get(name, DNSNameError(name))
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer == "hang":
            return Deferred()
        return defer.succeed(answer)  # type: ignore[arg-type]

    results: list[Score] = []
    Blocklists(parse_zones(zones), 2, lookup).score(ip).addCallback(results.append)
    assert len(asked) == len(zones)
    return results[0] if results else Score(-1, ())


def test_weights_add_up() -> None:
    s = score({"99.2.0.192.a.example": ["127.0.0.2"], "99.2.0.192.b.example": ["127.0.0.4"]})
    assert s == Score(3, (("a.example", "127.0.0.2"), ("b.example", "127.0.0.4")))
    assert Blocklists(parse_zones(["a.example=2"]), 2, lambda n: defer.succeed([])
                      ).blocked(s)


def test_nxdomain_servfail_and_error_codes_count_nothing() -> None:
    s = score({"99.2.0.192.a.example": DNSServerError("servfail"),
               "99.2.0.192.b.example": ["127.255.255.254"]})
    assert s == Score(0, ())


def test_a_timeout_waits_for_the_resolver_then_counts_nothing() -> None:
    """The resolver owns the timeout: a query still pending holds the score; when it
    fails (timeout), the others' answers still count."""
    pending: Deferred[list[str]] = Deferred()
    results: list[Score] = []

    def lookup(name: str) -> Deferred[list[str]]:
        if name.endswith("a.example"):
            return pending
        return defer.succeed(["127.0.0.2"])

    Blocklists(parse_zones(["a.example=5", "b.example"]), 2, lookup).score(
        "192.0.2.99").addCallback(results.append)
    assert results == []
    from twisted.internet.error import TimeoutError

    pending.errback(TimeoutError())
    assert results == [Score(1, (("b.example", "127.0.0.2"),))]
