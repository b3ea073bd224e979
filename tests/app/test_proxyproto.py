"""The PROXY protocol wrapper (app/proxyproto.py): HAProxy's v1 and v2 headers read in
any pieces, honoured only from cluster.trusted_proxies and then the session's peer (the
connection limits count the client, not the proxy); from anyone else, a second time, or
malformed, oversize or slow: closed, never read as a command."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.app.proxyproto import (
    MAX_V2,
    V2_SIGNATURE,
    HeaderReader,
    ProxyHeaderError,
    ProxyProtocolFactory,
    parse_v1,
)
from mailserver.core.peer import Networks, from_trusted_proxy

PROXY_IP = "127.0.0.2"
V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 143\r\n"


def v2(command: int = 1, family: int = 0x11, body: bytes | None = None,
       tlvs: bytes = b"") -> bytes:
    if body is None:
        body = struct.pack("!4s4sHH", socket.inet_aton("192.0.2.7"),
                           socket.inet_aton("198.51.100.1"), 40000, 143)
    body += tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


# -- the parser ------------------------------------------------------------------------

def read(*pieces: bytes) -> tuple[object, bytes]:
    reader = HeaderReader()
    info = None
    for piece in pieces:
        assert info is None, "complete before the last piece"
        info = reader.feed(piece)
    return info, reader.rest


def test_v1_tcp4() -> None:
    info, rest = read(V1 + b"a001 CAPABILITY\r\n")
    assert info.source == IPv4Address("TCP", "192.0.2.7", 40000)  # type: ignore[attr-defined]
    assert info.destination == IPv4Address("TCP", "198.51.100.1", 143)  # type: ignore[attr-defined]
    assert rest == b"a001 CAPABILITY\r\n"


def test_v1_tcp6() -> None:
    info, _ = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n")
    assert info.source == IPv6Address("TCP", "2001:db8::7", 40000)  # type: ignore[attr-defined]


def test_v1_unknown_means_the_real_addresses() -> None:
    info, _ = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert info.source is None and info.destination is None  # type: ignore[attr-defined]


def test_v1_one_octet_at_a_time() -> None:
    info, rest = read(*[V1[i:i + 1] for i in range(len(V1))])
    assert info.source.host == "192.0.2.7"  # type: ignore[attr-defined]
    assert rest == b""


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",           # a port missing
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 143 extra\r\n",  # one field too many
    b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 143\r\n",      # IPv6 under TCP4
    b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 143\r\n",         # IPv4 under TCP6
    b"PROXY TCP4 192.0.2.777 198.51.100.1 40000 143\r\n",
    b"PROXY TCP4 mail.example 198.51.100.1 40000 143\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 4x000 143\r\n",        # Twisted's raises ValueError
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 143\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 143\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 040000 143\r\n",       # leading zero
    b"PROXY UDP4 192.0.2.7 198.51.100.1 40000 143\r\n",
    b"PROXY  TCP4 192.0.2.7 198.51.100.1 40000 143\r\n",       # two spaces
])
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        read(line)


def test_v1_oversize_without_crlf_is_refused_at_107_octets() -> None:
    reader = HeaderReader()
    assert reader.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 octets: may still end
    with pytest.raises(ProxyHeaderError, match="107"):
        reader.feed(b"x")


def test_garbage_is_not_a_header() -> None:
    with pytest.raises(ProxyHeaderError, match="not a PROXY header"):
        read(b"EHLO client.example\r\n")
    with pytest.raises(ProxyHeaderError):
        read(b"PROXZ")


def test_v2_tcp4_with_tlvs_and_data_after() -> None:
    header = v2(tlvs=b"\x02\x00\x0bexample.org")  # PP2_TYPE_AUTHORITY: ignored
    info, rest = read(header + b"EHLO x\r\n")
    assert info.source == IPv4Address("TCP", "192.0.2.7", 40000)  # type: ignore[attr-defined]
    assert info.version == 2  # type: ignore[attr-defined]
    assert rest == b"EHLO x\r\n"


def test_v2_tcp6_in_pieces() -> None:
    body = struct.pack("!16s16sHH", socket.inet_pton(socket.AF_INET6, "2001:db8::7"),
                       socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 40000, 993)
    header = v2(family=0x21, body=body)
    info, _ = read(header[:5], header[5:15], header[15:20], header[20:])
    assert info.source == IPv6Address("TCP", "2001:db8::7", 40000)  # type: ignore[attr-defined]


def test_v2_local_and_unspec_mean_the_real_addresses() -> None:
    assert read(v2(command=0))[0].source is None  # type: ignore[attr-defined]
    assert read(v2(family=0x00, body=b""))[0].source is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("header", [
    v2(command=2),                                 # no such command
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 signature
    v2(body=b"\x01\x02\x03"),                      # TCP4 without room for addresses
    v2(family=0x12),                               # UDP: we are a stream
])
def test_v2_malformed(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        read(header)


def test_v2_oversize_length_is_refused_before_reading_it() -> None:
    reader = HeaderReader()
    with pytest.raises(ProxyHeaderError, match="v2 header of"):
        reader.feed(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2))


def test_parse_v1_rejects_a_non_proxy_line() -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(b"PROXY")


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    yield lines
    globalLogPublisher.removeObserver(cast(ILogObserver, observe))


# -- the wrapper -----------------------------------------------------------------------

class Session(Protocol):
    """Records what the session sees: its peer at connectionMade, and its input."""

    def __init__(self) -> None:
        self.peer: object = None
        self.host: object = None
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:  # noqa: N802
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = self.transport.getHost()  # type: ignore[union-attr]
        self.transport.write(b"* OK hello\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.lost = True


class Rig:
    def __init__(self, service: str = "imap", trusted: tuple[str, ...] = (f"{PROXY_IP}/32",),
                 expect: bool = True, per_ip: int = 5) -> None:
        self.sessions: list[Session] = []
        inner = Factory.forProtocol(self._session)
        self.counter = ConnectionCounter(100, per_ip)
        self.limited = LimitedFactory(inner, self.counter, b"* BYE too many\r\n", service)
        self.clock = Clock()
        self.factory = ProxyProtocolFactory(self.limited, service, Networks(trusted),
                                            expect_header=expect, clock=self.clock)

    def _session(self) -> Session:
        session = Session()
        self.sessions.append(session)
        return session

    def connect(self, ip: str = PROXY_IP) -> tuple[Protocol, StringTransport]:
        addr = IPv4Address("TCP", ip, 50000)
        transport = StringTransport(peerAddress=addr,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 143))
        protocol = self.factory.buildProtocol(addr)
        protocol.makeConnection(transport)
        return protocol, transport


def test_trusted_proxy_header_becomes_the_peer_before_the_session_starts() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    assert rig.sessions == [] and transport.value() == b"", "nothing before the header"
    assert rig.counter.total == 0
    protocol.dataReceived(V1[:10])
    protocol.dataReceived(V1[10:] + b"a1 NOOP\r\n")
    session, = rig.sessions
    assert session.peer == IPv4Address("TCP", "192.0.2.7", 40000)
    assert session.host == IPv4Address("TCP", "198.51.100.1", 143)
    assert session.data == b"a1 NOOP\r\n"
    assert transport.value() == b"* OK hello\r\n"
    assert dict(rig.counter.by_ip) == {"192.0.2.7": 1}, "the client is counted"
    assert from_trusted_proxy(session.transport, Networks()) is True
    protocol.connectionLost(None)  # type: ignore[arg-type]
    assert session.lost and rig.counter.total == 0


def test_per_ip_limit_counts_clients_not_the_proxy() -> None:
    rig = Rig(per_ip=1)
    for n in (1, 2):
        protocol, transport = rig.connect()
        protocol.dataReceived(f"PROXY TCP4 192.0.2.{n} 198.51.100.1 4000 143\r\n".encode())
        assert transport.value() == b"* OK hello\r\n"
    protocol, transport = rig.connect()
    protocol.dataReceived(b"PROXY TCP4 192.0.2.1 198.51.100.1 4001 143\r\n")
    assert transport.value() == b"* BYE too many\r\n", "192.0.2.1's second connection"


def test_v2_local_keeps_the_proxy_as_peer() -> None:
    rig = Rig()
    protocol, _ = rig.connect()
    protocol.dataReceived(v2(command=0))
    assert rig.sessions[0].peer == IPv4Address("TCP", PROXY_IP, 50000)


def test_untrusted_header_is_refused_in_the_protocol_words_and_logged_once(
        logged: list[str]) -> None:
    rig = Rig(service="smtp")
    protocol, transport = rig.connect("127.0.0.1")
    session, = rig.sessions  # an untrusted client gets its session at once
    assert session.peer == IPv4Address("TCP", "127.0.0.1", 50000)
    protocol.dataReceived(b"PRO")
    protocol.dataReceived(b"XY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nMAIL FROM:<>\r\n")
    assert transport.value() == (
        b"* OK hello\r\n"
        b"421 4.7.0 Error: PROXY protocol not accepted from this address\r\n")
    assert transport.disconnecting
    assert session.data == b"", "never read as a command"
    assert session.peer == IPv4Address("TCP", "127.0.0.1", 50000)
    assert [line for line in logged if "PROXY" in line] == [
        "smtp: PROXY header from 127.0.0.1 not accepted (not a trusted proxy, a second "
        "header, or smtp not in cluster.proxy_protocol); closing"]


@pytest.mark.parametrize("service,said", [
    ("imap", b"* BYE PROXY protocol not accepted from this address\r\n"),
    ("pop3", b"-ERR PROXY protocol not accepted from this address\r\n"),
    ("http", b"HTTP/1.1 400 Bad Request\r\n"),
    ("imaps", b""),  # a TLS port: nothing in the clear
])
def test_untrusted_v2_header_refused_per_protocol(service: str, said: bytes) -> None:
    rig = Rig(service=service)
    protocol, transport = rig.connect("127.0.0.1")
    protocol.dataReceived(v2())
    assert transport.value()[len(b"* OK hello\r\n"):].startswith(said)
    assert transport.disconnecting and rig.sessions[0].data == b""


def test_untrusted_ordinary_commands_pass_at_once() -> None:
    rig = Rig()
    protocol, transport = rig.connect("127.0.0.1")
    protocol.dataReceived(b"P")  # could still be "PROXY ": held, nothing lost
    assert rig.sessions[0].data == b""
    protocol.dataReceived(b"OST / HTTP/1.1\r\n")
    protocol.dataReceived(b"more")
    assert rig.sessions[0].data == b"POST / HTTP/1.1\r\nmore"
    assert not transport.disconnecting


def test_trusted_proxy_on_a_listener_without_proxy_protocol_may_not_send_one() -> None:
    rig = Rig(service="smtp", expect=False)
    protocol, transport = rig.connect()
    assert rig.sessions[0].peer == IPv4Address("TCP", PROXY_IP, 50000)
    protocol.dataReceived(V1)
    assert transport.disconnecting and rig.sessions[0].data == b""
    assert from_trusted_proxy(rig.sessions[0].transport, Networks()) is True


def test_a_second_header_is_refused() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(V1 + b"PROXY TCP4 203.0.113.9 198.51.100.1 1 143\r\n")
    assert transport.value() == (b"* OK hello\r\n"
                                 b"* BYE PROXY protocol not accepted from this address\r\n")
    assert transport.disconnecting and rig.sessions[0].data == b""


@pytest.mark.parametrize("first", [
    b"a001 LOGIN alice secret\r\n",                     # no header at all
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",     # malformed
    b"PROXY UNKNOWN " + b"x" * 200,                     # oversize
])
def test_trusted_proxy_without_a_good_header_is_closed_without_a_session(first: bytes) -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(first)
    assert transport.disconnecting and transport.value() == b""
    assert rig.sessions == [] and rig.counter.total == 0


def test_slow_header_times_out() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(V1[:20])
    rig.clock.advance(4.9)
    assert not transport.disconnecting
    rig.clock.advance(0.2)
    assert transport.disconnecting and rig.sessions == []
    protocol.connectionLost(None)  # type: ignore[arg-type]
    assert rig.clock.getDelayedCalls() == []


def test_header_in_time_cancels_the_timer() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(V1)
    assert rig.clock.getDelayedCalls() == []
    rig.clock.advance(60)
    assert not transport.disconnecting


def test_untrusted_client_is_not_from_a_trusted_proxy() -> None:
    rig = Rig()
    rig.connect("127.0.0.1")
    assert from_trusted_proxy(rig.sessions[0].transport, Networks([f"{PROXY_IP}/32"])) is False


def test_networks_match_ipv4_mapped_and_refuse_garbage() -> None:
    nets = Networks(["10.0.0.0/8", "2001:db8::/32"])
    assert nets.contains("10.1.2.3") and nets.contains("::ffff:10.1.2.3")
    assert nets.contains("2001:db8::1")
    assert not nets.contains("11.0.0.1") and not nets.contains("unknown")
    assert not Networks().contains("10.1.2.3")


@pytest.mark.parametrize("partial", [V1[:30], v2()[:20], v2()[:10]])
def test_truncated_header_then_gone_leaves_nothing(partial: bytes) -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(partial)
    assert not transport.disconnecting, "still waiting for the rest"
    protocol.connectionLost(None)  # type: ignore[arg-type]
    assert rig.sessions == [] and rig.counter.total == 0
    assert rig.clock.getDelayedCalls() == [], "no timer left behind"
    assert rig.factory.protocols == {}


def test_v2_header_whose_length_outruns_its_octets_times_out() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    header = v2()
    protocol.dataReceived(header[:14] + struct.pack("!H", 200) + header[16:])
    rig.clock.advance(5)
    assert transport.disconnecting and rig.sessions == []
