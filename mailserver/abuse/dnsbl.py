"""DNS blocklists for port 25 (postscreen_dnsbl_sites with weights and a threshold).

`abuse.dnsbl_zones = ["zen.spamhaus.org=2", "bl.example=1"]` and
`abuse.dnsbl_threshold = 2`: each zone that lists the client adds its weight; at the
threshold the client is refused before the banner. None by default (a blocklist is an
operator's choice, and some have terms of use). RFC 5782 2.1: the query is the
address's octets reversed (IPv6: its 32 nibbles reversed) under the zone, and a listing
is an A record in 127.0.0.0/8; 127.0.0.1 and Spamhaus's 127.255.255.x (error codes:
"you query through a public resolver", "rate limited") are not listings.

A lookup that fails or times out counts nothing: a broken blocklist must not stop mail
(RFC 5782 5: a client should treat a timeout as "not listed").

The resolver is an interface (`AddressLookup`): the server's shared resolver plugs in
(mailserver's DNS client, under construction in another branch); tests pass a fake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.address import client_address

#: name -> Deferred firing with the A records ([] for NXDOMAIN/no answer); an errback
#: (timeout, SERVFAIL) counts as "not listed".
AddressLookup = Callable[[str], Deferred[list[str]]]


@dataclass(frozen=True)
class Zone:
    name: str
    weight: int


@dataclass(frozen=True)
class Score:
    total: int
    #: The zones that listed the client, with their answers.
    listed: tuple[tuple[str, str], ...]


def parse_zones(items: Sequence[str]) -> tuple[Zone, ...]:
    """The config's "zone" or "zone=weight" items (checked by config.py); a negative
    weight is an allowlist, whose listing lowers the total."""
    zones = []
    for item in items:
        name, _, weight = item.partition("=")
        zones.append(Zone(name.strip().rstrip(".").lower(), int(weight) if weight else 1))
    return tuple(zones)


def query_name(ip: str, zone: str) -> str | None:
    """RFC 5782 2.1 / 2.4: reversed octets or nibbles, then the zone; None if not an IP."""
    address = client_address(ip)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split("."))) + "." + zone
    nibbles = address.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + zone


def is_listing(answer: str) -> bool:
    """An A record that means "listed" (127.0.0.2 and up, not the error codes)."""
    try:
        address = ipaddress.IPv4Address(answer)
    except ValueError:
        return False
    return (address in ipaddress.IPv4Network("127.0.0.0/8") and str(address) != "127.0.0.1"
            and address not in ipaddress.IPv4Network("127.255.255.0/24"))


class Blocklists:
    """Scores a client address against the configured zones, all queried at once."""

    def __init__(self, zones: Sequence[Zone], threshold: int, lookup: AddressLookup) -> None:
        self.zones = tuple(zones)
        self.threshold = max(1, threshold)
        self.lookup = lookup

    def score(self, ip: str) -> Deferred[Score]:
        queries: list[Deferred[Any]] = []
        for zone in self.zones:
            name = query_name(ip, zone.name)
            if name is None:
                continue
            d = defer.maybeDeferred(self.lookup, name)
            d.addCallbacks(self._answered, _not_listed, callbackArgs=(zone,))
            queries.append(d)
        gathered: Deferred[Any] = defer.gatherResults(queries, consumeErrors=True)
        return gathered.addCallback(_total)

    @staticmethod
    def _answered(answers: list[str], zone: Zone) -> tuple[Zone, str] | None:
        listing = [a for a in answers if is_listing(a)]
        return (zone, listing[0]) if listing else None

    def blocked(self, score: Score) -> bool:
        return score.total >= self.threshold


def _not_listed(failure: Failure) -> None:
    return None


def _total(results: list[tuple[Zone, str] | None]) -> Score:
    hits = [r for r in results if r is not None]
    return Score(sum(zone.weight for zone, _ in hits),
                 tuple((zone.name, answer) for zone, answer in hits))


def names_lookup(nameservers: Sequence[str], timeout: float) -> AddressLookup:
    """An AddressLookup over twisted.names, asking `nameservers` ("host[:port]", the
    server's `[dns]` ones) or the system's: non-blocking, one query per zone, `timeout`
    seconds at most. Not the shared resolver's thread-pool path: a query per zone per
    port-25 connection in a thread would cost more than the answer is worth."""
    from twisted.names import client, dns

    servers = []
    for ns in nameservers:
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "53")
        servers.append((host, int(port)))
    resolver = client.createResolver(servers=servers or None)

    def lookup(name: str) -> Deferred[list[str]]:
        d = resolver.lookupAddress(name, timeout=(timeout,))

        def addresses(result: Any) -> list[str]:
            answers = result[0]
            return [r.payload.dottedQuad() for r in answers if r.type == dns.A]

        return d.addCallback(addresses)  # type: ignore[no-any-return]

    return lookup


def make_blocklists(zones: Sequence[str], threshold: int, nameservers: Sequence[str],
                    timeout: float) -> Blocklists | None:
    """The configured blocklists, or None when there are none (the default)."""
    if not zones:
        return None
    return Blocklists(parse_zones(zones), threshold, names_lookup(nameservers, timeout))
