"""Where mail for a domain goes (RFC 5321 section 5.1), resolved with dnspython.

Blocking: `resolve_route` runs in a thread. The result is an ordered list of
(host name, IP address) pairs to try in turn, or a RouteError saying whether the
failure is permanent (bounce now) or temporary (retry later).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailserver.address import domain_key


@dataclass(frozen=True)
class Hop:
    """One address to try: the MX (or smarthost) name and one of its IP addresses."""

    host: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"


class RouteError(Exception):
    """No route now. `permanent` errors bounce at once, the others are retried."""

    def __init__(self, permanent: bool, status: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status
        self.text = text


@dataclass
class Self:
    """What counts as "ourselves" for loop detection (Postfix's myhostname and
    inet_interfaces): our host name(s) and the addresses we listen on."""

    names: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    #: A listener on 0.0.0.0 or ::, which takes every local address, loopback included.
    wildcard: bool = False

    def is_me(self, host: str, addresses: Iterable[str] = ()) -> bool:
        return domain_key(host) in self.names or any(self._mine(a) for a in addresses)

    def _mine(self, address: str) -> bool:
        if address in self.addresses:
            return True
        if not self.wildcard:
            return False
        try:
            return ipaddress.ip_address(address).is_loopback
        except ValueError:
            return False


@dataclass
class Router:
    resolver: dns.resolver.Resolver
    port: int
    #: Who we are; a callable because the listening addresses are known only once the
    #: listeners have started (data_dir/run/listeners.json).
    whoami: Callable[[], Self] = Self
    #: "host:port" that takes all remote mail, or "".
    smarthost: str = ""

    @property
    def me(self) -> Self:
        return self.whoami()

    def route(self, domain: str) -> list[Hop]:
        """Every address to try for `domain`, in order; RouteError if there is none."""
        if self.smarthost:
            host, _, port = self.smarthost.rpartition(":")
            return [Hop(host, a, int(port)) for a in self._addresses(host.strip("[]"))]
        domain = domain_key(domain)
        literal = _address_literal(domain)
        if literal is not None:
            if literal in self.me.addresses:
                raise _loop(domain)
            return [Hop(domain, literal, self.port)]
        hosts = self._mx_hosts(domain)
        hops: list[Hop] = []
        temporary: RouteError | None = None
        for host in hosts:
            try:
                hops.extend(Hop(host, a, self.port) for a in self._addresses(host))
            except RouteError as e:  # one MX without address: try the others
                temporary = temporary or e
        if not hops:
            raise temporary or RouteError(False, "4.4.4", f"no address for any MX of {domain}")
        return hops

    def _mx_hosts(self, domain: str) -> list[str]:
        """MX names by preference, equal preferences shuffled (RFC 5321 5.1); the
        domain itself when it has no MX (the implicit MX); loops removed."""
        try:
            answer = self.resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RouteError(True, "5.1.2",
                             f"Host or domain name not found: {domain}: NXDOMAIN") from None
        except dns.resolver.NoAnswer:
            return [domain]  # RFC 5321 5.1: no MX, the domain is its own implicit MX
        except (dns.exception.Timeout, dns.resolver.NoNameservers,
                dns.resolver.LifetimeTimeout) as e:
            raise RouteError(False, "4.4.3",
                             f"DNS lookup of MX {domain} failed: {_why(e)}") from None
        # RFC 7505 3: a single MX of preference 0 with the root as exchange: "this
        # domain accepts no mail" (Null MX).
        if any(r.exchange == dns.name.root for r in answer):
            raise RouteError(True, "5.1.10",
                             f"{domain} does not accept mail (RFC 7505 null MX)")
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower())
                   for r in answer]
        # Postfix's rule: if one of the MX is ourselves, only better ones may be used;
        # if we are the best, the mail loops back to us.
        me = self.me
        mine = [pref for pref, name in records if me.is_me(name)]
        if mine:
            records = [(p, n) for p, n in records if p < min(mine)]
            if not records:
                raise _loop(domain)
        return order_by_preference(records)

    def _addresses(self, host: str) -> list[str]:
        literal = _address_literal(host) or _bare_address(host)
        if literal is not None:
            return [literal]
        found: list[str] = []
        errors: list[str] = []
        nxdomain = 0
        for rdtype in ("A", "AAAA"):
            try:
                answer = self.resolver.resolve(host, rdtype, search=False)
                found.extend(r.to_text() for r in answer)
            except dns.resolver.NXDOMAIN:
                nxdomain += 1
            except dns.resolver.NoAnswer:
                pass
            except (dns.exception.Timeout, dns.resolver.NoNameservers,
                    dns.resolver.LifetimeTimeout) as e:
                errors.append(f"{rdtype} {host}: {_why(e)}")
        if self.me.is_me(host, found) and not self.smarthost:
            raise _loop(host)
        if found:
            return found
        if errors:
            raise RouteError(False, "4.4.3", "DNS lookup failed: " + "; ".join(errors))
        if nxdomain:
            raise RouteError(True, "5.1.2", f"Host or domain name not found: {host}")
        raise RouteError(True, "5.1.2", f"{host} has no A or AAAA record")


def order_by_preference(records: Sequence[tuple[int, str]]) -> list[str]:
    """Lowest preference first; random order among equal ones (RFC 5321 5.1)."""
    shuffled = list(records)
    random.shuffle(shuffled)
    shuffled.sort(key=lambda r: r[0])  # stable: the shuffle survives among equals
    return list(dict.fromkeys(name for _, name in shuffled))


def _loop(name: str) -> RouteError:
    return RouteError(True, "5.4.6", f"mail for {name} loops back to myself")


def _address_literal(text: str) -> str | None:
    """"[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3), else None."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _bare_address(text: str) -> str | None:
    """An IP address written plainly (a smarthost "192.0.2.1:587")."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _why(e: Exception) -> str:
    if isinstance(e, dns.exception.Timeout):
        return "timed out"
    if isinstance(e, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL)"
    return type(e).__name__


def make_resolver(nameservers: Sequence[str], timeout: float) -> dns.resolver.Resolver:
    """A resolver using relay.nameservers ("127.0.0.1:5353"), or the system's."""
    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for ns in nameservers:
            host, port = (ns.rsplit(":", 1) if ns.count(":") == 1 else (ns, "53"))
            servers.append(dns.nameserver.Do53Nameserver(host.strip("[]"), int(port)))
        resolver.nameservers = servers
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 5.0)
    resolver.cache = None
    return resolver


def self_from(hostname: str, listen_hosts: Iterable[str]) -> Self:
    """Our names and addresses, from the config and data_dir/run/listeners.json."""
    addresses: set[str] = set()
    wildcard = False
    for host in listen_hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.is_unspecified:
            wildcard = True
            addresses.update(_host_addresses(hostname))
        else:
            addresses.add(str(ip))
    return Self(frozenset({domain_key(hostname)}), frozenset(addresses), wildcard)


def _host_addresses(hostname: str) -> set[str]:
    """This machine's addresses as its resolver knows them (for wildcard listeners)."""
    found: set[str] = set()
    for name in {hostname, socket.gethostname()}:
        try:
            found.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:
            continue
    return found
