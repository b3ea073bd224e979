"""Where a webhook may be POSTed: no SSRF (server-side request forgery).

A user registers a URL and our server connects to it, from inside the operator's
network. So a URL must be http(s) with a host; its name is resolved through our own
resolver (core/dns.py) and EVERY address it resolves to is checked: loopback, private
(RFC 1918, RFC 4193), link-local, multicast, unspecified, reserved and shared (RFC 6598)
addresses, and the addresses our own listeners use, are refused unless they are in
webhooks.allowed_networks. The sender then connects to the checked address itself,
never to the name again, so a second answer (DNS rebinding) cannot point it elsewhere.

Blocking (DNS): run `resolve_and_check` in a thread.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest URL we accept (a URL is stored and shown; browsers manage about 2000).
MAX_URL = 2000


class Refused(Exception):
    """The URL may not be used; the message says why, for the user and the log."""


@dataclass(frozen=True)
class Target:
    """A URL checked and pinned to the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL with a host; Refused otherwise."""
    if len(url) > MAX_URL:
        raise Refused(f"the URL is longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise Refused("the URL has spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"not a URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused("only http:// and https:// URLs")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("the URL may not carry a user name or password")
    if not url.isascii():
        raise Refused("the URL must be ASCII (IDNA host names in their xn-- form)")
    return scheme, host, port or (443 if scheme == "https" else 80)


def shown(url: str) -> str:
    """The URL as a log line shows it: scheme, host and port, and "/..." for any path or
    query. Receivers often take their credential in the URL itself (a secret path or a
    ?token=); the log is read by more people than the hooks file, and the hook's id,
    logged beside it, finds the whole URL (`mailserver webhook show`)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(not a URL)"
    rest = "/..." if parts.path.strip("/") or parts.query or parts.fragment else "/"
    return f"{parts.scheme}://{host}{rest}"


def is_local(address: IPAddress) -> bool:
    """Whether `address` is one of this machine's own (a socket can be bound to it: the
    kernel refuses an address of no local interface with EADDRNOTAVAIL). Blocking-free
    but a system call: called where urlcheck runs, in a thread."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def refusal(address: IPAddress, port: int, allowed: Sequence[Network],
            own: Sequence[tuple[str, int]],
            local: Callable[[IPAddress], bool] = is_local) -> str | None:
    """Why `address` may not be connected to, or None. A listener on the wildcard
    address answers on every address of the machine (its public one too): `local`
    says which those are."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for host, listen_port in own:
        if listen_port != port:
            continue
        try:
            mine = ipaddress.ip_address(host)
        except ValueError:
            continue
        if mine == address or (mine.is_unspecified and (
                address.is_loopback or address.is_unspecified or local(address))):
            return f"{address} port {port} is this server's own listener"
    if any(address in net for net in allowed):
        return None
    for test, what in ((address.is_loopback, "loopback"), (address.is_link_local,
                       "link-local"), (address.is_multicast, "multicast"),
                       (address.is_unspecified, "unspecified"),
                       (address.is_private, "private"), (address.is_reserved, "reserved"),
                       (not address.is_global, "not a public")):
        if test:
            return f"{address} is a {what} address (not in webhooks.allowed_networks)"
    return None


def own_listeners(data_dir: Path) -> list[tuple[str, int]]:
    """Where this server listens (data_dir/run/listeners.json), [] if unknown."""
    try:
        found = json.loads((data_dir / "run" / "listeners.json").read_text())
        return [(str(host), int(port)) for host, port in found.values()]
    except (OSError, ValueError, TypeError):
        return []


Lookup = Callable[[str], list[str]]


def dns_lookup(resolver: dns.resolver.Resolver) -> Lookup:
    """A host's A and AAAA addresses through `resolver`; Refused if it has none."""

    def lookup(host: str) -> list[str]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = resolver.resolve(host, rdtype, search=False,
                                          raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                raise Refused(f"{host}: no such host") from None
            except dns.exception.DNSException as e:
                raise Refused(f"{host}: lookup failed ({type(e).__name__})") from None
            if answer.rrset is not None:
                found.extend(r.to_text() for r in answer.rrset)
        if not found:
            raise Refused(f"{host}: has no address")
        return found

    return lookup


def resolve_and_check(url: str, lookup: Lookup, allowed: Sequence[Network],
                      own: Sequence[tuple[str, int]]) -> Target:
    """The URL checked and pinned to its first address; Refused with the reason.

    Every address must pass: a name with one public and one private address would
    otherwise be a coin toss that an attacker can repeat."""
    scheme, host, port = parse(url)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a) for a in lookup(host)]
    for address in addresses:
        reason = refusal(address, port, allowed, own)
        if reason is not None:
            raise Refused(reason)
    return Target(url, scheme, host, port, str(addresses[0]))


def networks(texts: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(t, strict=False) for t in texts]
