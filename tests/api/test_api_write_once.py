"""An API answer reaches the transport in one write (api/resource.py _write_once): over
TLS one SSL_write and one record instead of two, with the bytes twisted.web writes."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from mailserver.api.resource import finish_json


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:  # noqa: N802 - Twisted's name
        self.writes += 1
        super().writeSequence(data)


class Answer(resource.Resource):
    isLeaf = True  # noqa: N815 - Twisted's name

    def render(self, request: server.Request) -> int:  # type: ignore[override]
        finish_json(request, 202, {"id": "é"})
        return server.NOT_DONE_YET


def exchange(method: bytes) -> CountingTransport:
    site = server.Site(Answer())
    channel = site.buildProtocol(None)
    transport = CountingTransport()
    channel.makeConnection(transport)
    channel.dataReceived(method + b" /api/v1/send HTTP/1.1\r\nHost: x\r\n\r\n")
    return transport


def test_head_and_body_go_in_one_write() -> None:
    transport = exchange(b"POST")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert transport.writes == 1
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 202 Accepted"
    assert b"Content-Length: 12" in head.split(b"\r\n")
    assert b"Content-Type: application/json" in head.split(b"\r\n")
    assert body == '{"id": "é"}'.encode()
    assert not transport.disconnecting  # keep-alive: the channel is the real one again


def test_a_head_request_gets_the_head_alone() -> None:
    transport = exchange(b"HEAD")
    head, sep, body = transport.value().partition(b"\r\n\r\n")
    assert (transport.writes, sep, body) == (1, b"\r\n\r\n", b"")
    assert b"Content-Length: 12" in head.split(b"\r\n")


def test_a_second_request_on_the_connection_is_answered_too() -> None:
    site = server.Site(Answer())
    channel = site.buildProtocol(None)
    transport = CountingTransport()
    channel.makeConnection(transport)
    request = b"POST /api/v1/send HTTP/1.1\r\nHost: x\r\n\r\n"
    channel.dataReceived(request + request)
    assert transport.writes == 2
    assert transport.value().count(b"HTTP/1.1 202 Accepted\r\n") == 2
