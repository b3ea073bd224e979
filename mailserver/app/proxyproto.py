"""The PROXY protocol (HAProxy's, v1 and v2) in front of every listener.

A proxy in front of us (nginx's mail proxy with `proxy_protocol on;`, HAProxy with
send-proxy / send-proxy-v2) opens its connection with one header naming the client it
speaks for. We honour it only from cluster.trusted_proxies, and then the address it
carries is the session's peer for everything: the connection limits (the header is read
before admission, so LimitedFactory counts the real client), Received headers, SPF,
DNSBL, greylisting, FCrDNS, the login throttle and the abuse counters, logs.

The wrapper sits outermost, outside LimitedFactory and outside implicit TLS: on
submissions, imaps, pop3s and https the header comes before the TLS handshake, as the
proxies send it (HAProxy's spec 2.1: "the header is always sent first").

- From a trusted proxy on a listener named in cluster.proxy_protocol the header is
  required: anything else first, a malformed or oversize header (v1: 107 octets, v2:
  MAX_V2 octets), or none within HEADER_TIMEOUT seconds closes the connection, and
  nothing of the session is built (no greeting, no count).
- From anyone else, and on the other listeners, a PROXY header is not honoured: the
  first octets of the connection are looked at, and if they are a PROXY signature the
  client is told so in the protocol's own words (421 / * BYE / -ERR / 400; on an
  implicit-TLS port nothing can be said in the clear, the connection just closes), the
  connection is closed, and one log line says who tried. The same holds for a second
  header after an honoured one: it is never read as a command.

Why not twisted.protocols.haproxy.HAProxyWrappingFactory (decision 0037): it builds the
wrapped protocol at once, so the session's connectionMade, greeting, DNSBL lookup and
connection count see the proxy's address; it closes a connection whose first read is
shorter than 8 (v1) or 16 (v2) octets although TCP may split the header anywhere; it
has no timeout and no notion of who may send a header; its v1 parser lets a non-numeric
port raise ValueError out of dataReceived and takes any text as an address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from mailserver.core.peer import Networks
from mailserver.logs import logger

log = logger(__name__)

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: HAProxy's spec 2.1: a v1 line is at most 107 octets with its CRLF.
MAX_V1 = 107
#: A v2 header: 16 octets and up to 216 of addresses (UNIX), then TLVs (ALPN, the
#: authority, SSL details). The length field allows 64 KiB; nobody needs more than 1.
MAX_V2 = 16 + 1024
#: Seconds a trusted proxy has to send its header once connected.
HEADER_TIMEOUT = 5.0

#: What a client sending a PROXY header it may not send is told, in each listener's
#: protocol (the implicit-TLS ones say nothing: the client expects a TLS handshake).
REFUSALS = {
    "smtp": b"421 4.7.0 Error: PROXY protocol not accepted from this address\r\n",
    "submission": b"421 4.7.0 Error: PROXY protocol not accepted from this address\r\n",
    "imap": b"* BYE PROXY protocol not accepted from this address\r\n",
    "pop3": b"-ERR PROXY protocol not accepted from this address\r\n",
    "http": (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0"
             b"\r\n\r\n"),
}


class ProxyHeaderError(Exception):
    """A PROXY header that is malformed, oversize, or not one at all."""


@dataclass(frozen=True)
class ProxyInfo:
    """What one header said. `source` None: LOCAL (the proxy's own health check),
    UNKNOWN or an unsupported family; the spec says to use the real connection's
    addresses then."""

    version: int
    source: IAddress | None
    destination: IAddress | None


class HeaderReader:
    """Reads one PROXY header, v1 or v2, from octets arriving in any pieces."""

    def __init__(self) -> None:
        self.buffer = b""
        #: After `feed` returned the header: the octets that followed it.
        self.rest = b""

    def feed(self, data: bytes) -> ProxyInfo | None:
        """The header once complete, None while more is needed; raises
        ProxyHeaderError at the first octet that cannot belong to one."""
        self.buffer += data
        buf = self.buffer
        if not (buf.startswith(V1_SIGNATURE) or buf.startswith(V2_SIGNATURE)):
            if V1_SIGNATURE.startswith(buf) or V2_SIGNATURE.startswith(buf):
                return None
            raise ProxyHeaderError("not a PROXY header")
        if buf.startswith(V1_SIGNATURE):
            end = buf.find(b"\r\n", 0, MAX_V1)
            if end < 0:
                if len(buf) >= MAX_V1:
                    raise ProxyHeaderError("v1 header longer than 107 octets")
                return None
            self.rest = buf[end + 2:]
            return parse_v1(buf[:end])
        if len(buf) < 16:
            return None
        size = 16 + struct.unpack("!H", buf[14:16])[0]
        if size > MAX_V2:
            raise ProxyHeaderError(f"v2 header of {size} octets")
        if len(buf) < size:
            return None
        self.rest = buf[size:]
        return parse_v2(buf[:size])


def looks_like_header(data: bytes) -> bool | None:
    """Whether the first octets of a connection are a PROXY signature: True, False, or
    None while they are still a prefix of one (more must be read to tell)."""
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        if data.startswith(signature):
            return True
    if V1_SIGNATURE.startswith(data) or V2_SIGNATURE.startswith(data):
        return None
    return False


def parse_v1(line: bytes) -> ProxyInfo:
    """"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25" (spec 2.1), without its CRLF."""
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyInfo(1, None, None)  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed v1 header")
    version = 4 if parts[1] == b"TCP4" else 6
    source = _address(version, parts[2], parts[4])
    destination = _address(version, parts[3], parts[5])
    return ProxyInfo(1, source, destination)


def _address(version: int, host: bytes, port: bytes) -> IAddress:
    try:
        ip = ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("malformed v1 address") from None
    if ip.version != version:
        raise ProxyHeaderError(f"v1 address is not IPv{version}")
    # Decimal, 0..65535, no sign, no leading zero (spec 2.1).
    if (not port.isdigit() or len(port) > 5 or (len(port) > 1 and port[:1] == b"0")
            or int(port) > 65535):
        raise ProxyHeaderError("malformed v1 port")
    if version == 4:
        return IPv4Address("TCP", str(ip), int(port))
    return IPv6Address("TCP", str(ip), int(port))


def parse_v2(header: bytes) -> ProxyInfo:
    """The binary header (spec 2.2): signature, version/command, family/protocol,
    length, addresses, TLVs (ignored)."""
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2 header of version {version}")
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyInfo(2, None, None)
    if command != 1:
        raise ProxyHeaderError(f"v2 command {command}")
    family, body = header[13], header[16:]
    if family == 0x11 and len(body) >= 12:  # TCP over IPv4
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        return ProxyInfo(2, IPv4Address("TCP", str(ipaddress.IPv4Address(src)), sport),
                         IPv4Address("TCP", str(ipaddress.IPv4Address(dst)), dport))
    if family == 0x21 and len(body) >= 36:  # TCP over IPv6
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        return ProxyInfo(2, IPv6Address("TCP", str(ipaddress.IPv6Address(src)), sport),
                         IPv6Address("TCP", str(ipaddress.IPv6Address(dst)), dport))
    if family in (0x11, 0x21):
        raise ProxyHeaderError("v2 header too short for its addresses")
    if family & 0x0F == 0x02:
        raise ProxyHeaderError("v2 header for a datagram protocol")
    # UNSPEC or UNIX: "the receiver ... must use the real connection's addresses".
    return ProxyInfo(2, None, None)


class ProxyProtocolFactory(WrappingFactory):
    """Outermost factory of a listener: reads or refuses PROXY headers, then hands the
    connection, with the client's address, to `wrappedFactory` (the LimitedFactory)."""

    protocol = None  # type: ignore[assignment]  # buildProtocol makes ProxyHeaderProtocol

    def __init__(self, wrapped: IProtocolFactory, service: str, trusted: Networks,
                 expect_header: bool, clock: IReactorTime | None = None,
                 timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__(wrapped)
        self.service = service
        self.trusted = trusted
        #: cluster.proxy_protocol names this listener: a trusted proxy must send one.
        self.expect_header = expect_header
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.timeout = timeout

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol:  # type: ignore[override]  # noqa: N802
        return ProxyHeaderProtocol(self, addr)


# The states of a ProxyHeaderProtocol.
_READING, _SNIFFING, _PASSING, _CLOSED = "reading", "sniffing", "passing", "closed"


class ProxyHeaderProtocol(ProtocolWrapper):
    """One connection: the header (if any) first, then the wrapped session, to which
    this is the transport and whose getPeer()/getHost() are the header's addresses."""

    wrappedProtocol: Any  # noqa: N815 - Twisted's name
    transport: Any

    def __init__(self, factory: ProxyProtocolFactory, addr: IAddress) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]  # built after the header
        self.proxy_factory = factory
        self.real_addr = addr
        self.real_ip: str = getattr(addr, "host", "unknown")
        #: The TCP peer is one of cluster.trusted_proxies (core/peer.py reads this: such
        #: a link counts as secured for logins in the clear, and may send XCLIENT).
        self.from_trusted_proxy = factory.trusted.contains(self.real_ip)
        #: The proxy's address when a header was honoured.
        self.proxied_by: str | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._state = _SNIFFING
        self._reader = HeaderReader()
        self._sniffed = b""
        self._timer: IDelayedCall | None = None

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"{self.proxy_factory.service} (PROXY)"

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's name
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self.from_trusted_proxy and self.proxy_factory.expect_header:
            self._state = _READING
            self._timer = self.proxy_factory.clock.callLater(
                self.proxy_factory.timeout, self._timed_out)
        else:
            self._start_session(self.real_addr)

    def _start_session(self, addr: IAddress) -> None:
        """Build the session for `addr` (the limits admit or refuse it) and connect it."""
        inner = self.proxy_factory.wrappedFactory.buildProtocol(addr)
        if inner is None:
            self._close()
            return
        self.wrappedProtocol = inner
        inner.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self._state == _PASSING:
            self.wrappedProtocol.dataReceived(data)
        elif self._state == _READING:
            self._read_header(data)
        elif self._state == _SNIFFING:
            self._sniff(data)

    def _read_header(self, data: bytes) -> None:
        try:
            info = self._reader.feed(data)
        except ProxyHeaderError as e:
            self._refuse(f"bad PROXY header from trusted proxy {self.real_ip}: {e}")
            return
        if info is None:
            return
        self._cancel_timer()
        self._peer = info.source
        self._host = info.destination
        self.proxied_by = self.real_ip
        self._state = _SNIFFING  # a second header is refused like any other
        log.debug("{service}: PROXY v{version} from {proxy}: client {client}",
                  service=self.proxy_factory.service, version=info.version,
                  proxy=self.real_ip, client=getattr(info.source, "host", "-"))
        self._start_session(info.source or self.real_addr)
        if self._reader.rest and self._state != _CLOSED:
            self._sniff(self._reader.rest)

    def _sniff(self, data: bytes) -> None:
        """The first octets of the stream (after an honoured header): a PROXY header
        here is refused, anything else goes to the session unchanged."""
        self._sniffed += data
        found = looks_like_header(self._sniffed)
        if found is None:
            return
        if found:
            self._refuse(f"PROXY header from {self.real_ip} not accepted "
                         f"(not a trusted proxy, a second header, or "
                         f"{self.proxy_factory.service} not in cluster.proxy_protocol)",
                         answer=True)
            return
        self._state = _PASSING
        data, self._sniffed = self._sniffed, b""
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)

    def _refuse(self, why: str, answer: bool = False) -> None:
        """Log once, say so in the protocol's words if it can, close."""
        log.warn("{service}: {why}; closing", service=self.proxy_factory.service, why=why)
        refusal = REFUSALS.get(self.proxy_factory.service) if answer else None
        if refusal is not None and self.transport is not None:
            self.transport.write(refusal)
        self._close()

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no PROXY header from trusted proxy {self.real_ip} within "
                     f"{self.proxy_factory.timeout:g} s")

    def _close(self) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        self.disconnecting = 1
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def getPeer(self) -> IAddress:  # noqa: N802 - Twisted's name
        return self._peer or self.transport.getPeer()

    def getHost(self) -> IAddress:  # noqa: N802 - Twisted's name
        return self._host or self.transport.getHost()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self._state = _CLOSED
        self._cancel_timer()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None


__all__ = ["HEADER_TIMEOUT", "HeaderReader", "ProxyHeaderError", "ProxyInfo",
           "ProxyProtocolFactory", "looks_like_header", "parse_v1", "parse_v2"]
