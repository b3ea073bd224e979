"""One DNS resolver for everything the server looks up: MX and A/AAAA for the queue,
TXT, PTR and A/AAAA for the sender-authentication checks (SPF, DKIM, DMARC, iprev).

Configured by the `[dns]` table (`nameservers`, `timeout`, `cache_size`); the older
`relay.nameservers` still works when `dns.nameservers` is empty. Empty both: the
system's /etc/resolv.conf (read by dnspython, never by a library on its own).

Every resolver handed out shares one bounded cache (dnspython's LRUCache, which is
thread-safe and keeps each answer only for its TTL, negative answers included), so
an SPF record fetched for one message serves the next one too. Lookups block: they
run in threads (queue routing, senderauth checks), never on the reactor.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.nameserver
import dns.resolver

from mailserver.config import Config


def parse_nameserver(text: str) -> tuple[str, int]:
    """ "127.0.0.1:5353", "192.0.2.1", "[::1]:53" or "::1" -> (address, port)."""
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, port = text.rsplit(":", 1)
        return host, int(port)
    return text, 53


class SharedResolver:
    """The process's resolver settings and cache; `resolver()` gives a dnspython
    Resolver using them (dnspython Resolvers are safe to use from several threads)."""

    def __init__(self, nameservers: Sequence[str], timeout: float,
                 cache_size: int = 5000, dnssec: bool = False) -> None:
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        #: dns.dnssec: every query asks for the AD bit (RFC 6840 5.7), which the
        #: validating resolvers then set on authenticated answers (queue/dane.py).
        self.dnssec = dnssec
        self.cache: dns.resolver.LRUCache | None = (
            dns.resolver.LRUCache(cache_size) if cache_size else None)
        self._default = self.resolver()

    @classmethod
    def from_config(cls, config: Config) -> SharedResolver:
        servers = config.dns.nameservers or config.relay.nameservers
        return cls(servers, config.dns.timeout, config.dns.cache_size, config.dns.dnssec)

    def resolver(self, lifetime: float | None = None) -> dns.resolver.Resolver:
        """A Resolver with our name servers and shared cache; `lifetime` bounds one
        whole lookup (every retry and server), default `timeout`."""
        lifetime = self.timeout if lifetime is None else lifetime
        if not self.nameservers:
            resolver = dns.resolver.Resolver()
        else:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in map(parse_nameserver, self.nameservers)]
        resolver.lifetime = lifetime
        resolver.timeout = min(lifetime, 5.0)
        resolver.cache = self.cache
        if self.dnssec:
            resolver.flags = dns.flags.RD | dns.flags.AD
        return resolver

    @property
    def default(self) -> dns.resolver.Resolver:
        return self._default


def txt_strings(resolver: dns.resolver.Resolver, name: str) -> list[str] | None:
    """The TXT records at `name`, each one string (its character-strings joined, RFC
    7208 3.3 / RFC 8461 3.1 / RFC 8460 3 read them so): [] when there are none
    (NXDOMAIN, or no TXT), None when the lookup failed (a caller keeps what it had).
    Blocking: run it in a thread."""
    try:
        answer = resolver.resolve(name, "TXT", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN):
        return None
    if answer.rrset is None:
        return []
    return [b"".join(r.strings).decode("ascii", "replace") for r in answer.rrset]
