"""Who the TCP peer is when a proxy stands in front of us (cluster.trusted_proxies).

app/proxyproto.py reads the PROXY header and marks its wrapper `from_trusted_proxy`;
a session finds that mark down its chain of transports (LimitedFactory's wrapper,
implicit TLS) with `from_trusted_proxy()`. Without the wrapper (unit tests on a
StringTransport) the transport's own peer is checked against the networks.

A session from a trusted proxy counts as on a secured link for the "no login in the
clear" rule, as Dovecot's login_trusted_networks does: nginx's mail proxy speaks to its
backends without TLS, having done TLS with the client itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from mailserver.config import Config


class Networks:
    """A fixed set of networks (config strings, already checked by check-config)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, ip: str) -> bool:
        """Whether `ip` (a textual address; an IPv4-mapped IPv6 one counts as its IPv4
        address) lies in one of the networks; False for anything not an address."""
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


def from_trusted_proxy(transport: Any, networks: Networks) -> bool:
    """Whether the TCP connection under `transport` comes from a trusted proxy."""
    layer, depth = transport, 0
    while layer is not None and depth < 8:
        mark = getattr(layer, "from_trusted_proxy", None)  # ProtocolWrapper delegates down
        if isinstance(mark, bool):
            return mark
        layer, depth = getattr(layer, "transport", None), depth + 1
    peer = transport.getPeer() if transport is not None else None
    return networks.contains(getattr(peer, "host", ""))


def proxy_header_honoured(transport: Any) -> bool:
    """Whether this connection began with a PROXY header we honoured: the peer is then
    the client itself (HAProxy in TCP mode passes the client's own commands through),
    so XCLIENT is not for it (smtp/xclient.py)."""
    layer, depth = transport, 0
    while layer is not None and depth < 8:
        if isinstance(getattr(layer, "from_trusted_proxy", None), bool):
            return getattr(layer, "proxied_by", None) is not None
        layer, depth = getattr(layer, "transport", None), depth + 1
    return False


def count_as(transport: Any, ip: str) -> bool:
    """Move this connection's place in the per-address connection limits to `ip` (the
    client a trusted proxy's XCLIENT named): False if `ip` is over its limits. The
    limits' wrapper (app/limits.py, found by its `limit_ip`) does the counting; without
    one (unit tests) there is nothing to move."""
    layer, depth = transport, 0
    while layer is not None and depth < 8:
        if "limit_ip" in getattr(layer, "__dict__", {}):
            return bool(layer.factory.move(layer, ip))
        layer, depth = getattr(layer, "__dict__", {}).get("transport"), depth + 1
    return True


@lru_cache(maxsize=8)
def _networks(networks: tuple[str, ...]) -> Networks:
    return Networks(networks)


def trusted_link(transport: Any, config: Config) -> bool:
    """Whether this session's TCP peer is one of cluster.trusted_proxies: such a link
    counts as secured for logins in the clear (login_trusted_networks in Dovecot)."""
    return from_trusted_proxy(transport, _networks(config.cluster.trusted_proxies))


def trusted_address(ip: str, config: Config) -> bool:
    """Whether `ip` (say, the client an XCLIENT named) is one of cluster.trusted_proxies."""
    return _networks(config.cluster.trusted_proxies).contains(ip)


__all__ = ["Networks", "count_as", "from_trusted_proxy", "proxy_header_honoured",
           "trusted_address", "trusted_link"]
