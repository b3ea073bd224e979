"""The HTTP client against a scripted server on loopback (the real reactor): the pinned
address, a kept-alive connection the receiver closed, redirects, silence, big answers."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from mailserver.webhooks.sender import Sender
from mailserver.webhooks.urlcheck import Target


class Scripted(protocol.Protocol):
    """Answers each request with the next of the factory's answers (None: silence,
    "close": hang up without a word)."""

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            factory: Any = self.factory
            factory.requests.append((head, rest[:length]))
            answer = factory.answers.pop(0) if factory.answers else b"200"
            if answer == b"close":
                self.transport.loseConnection()  # type: ignore[union-attr]
            elif answer is not None:
                self.transport.write(answer)  # type: ignore[union-attr]


def status(code: int, extra: bytes = b"", body: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (code, len(body)) + extra +
            b"\r\n" + body)


class SenderTests(unittest.TestCase):
    timeout = 20

    def serve(self, answers: list[Any]) -> Target:
        factory: Any = protocol.ServerFactory.forProtocol(Scripted)
        factory.answers, factory.requests, factory.connections = answers, [], 0
        self.factory = factory
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        return Target(f"http://hooks.test:{number}/in", "http", "hooks.test", number,
                      "127.0.0.1")

    def sender(self, timeout: float = 5) -> Sender:
        sender = Sender(reactor, None, timeout)
        self.addCleanup(sender.close)
        return sender

    @defer.inlineCallbacks
    def test_pinned_address_and_the_urls_host_header(self) -> Any:
        target = self.serve([status(200), status(204)])
        sender = self.sender()
        codes = [(yield sender.post(target, {"webhook-id": "msg_1"}, b"{}")),
                 (yield sender.post(target, {"webhook-id": "msg_2"}, b"{}"))]
        self.assertEqual(codes, [200, 204])
        self.assertEqual(self.factory.connections, 1, "kept alive")
        head, body = self.factory.requests[0]
        self.assertTrue(head.startswith(b"POST /in HTTP/1.1\r\n"))
        self.assertIn(b"Host: hooks.test:%d" % target.port, head.split(b"\r\n"))
        self.assertIn(b"Webhook-Id: msg_1", head.split(b"\r\n"))  # (names are case-blind)
        self.assertEqual(body, b"{}")

    @defer.inlineCallbacks
    def test_a_kept_connection_closed_by_the_receiver_is_tried_once_anew(self) -> Any:
        # The second request reaches a connection the receiver then drops unanswered
        # (its idle timeout racing us): sent again at once on a new one.
        target = self.serve([status(200), b"close", status(200)])
        sender = self.sender()
        self.assertEqual((yield sender.post(target, {}, b"1")), 200)
        self.assertEqual((yield sender.post(target, {}, b"2")), 200)
        self.assertEqual([b for _, b in self.factory.requests], [b"1", b"2", b"2"])
        self.assertEqual(self.factory.connections, 2)

    @defer.inlineCallbacks
    def test_a_redirect_is_an_answer_not_followed(self) -> Any:
        target = self.serve([status(302, b"Location: http://127.0.0.1:9/elsewhere\r\n")])
        self.assertEqual((yield self.sender().post(target, {}, b"{}")), 302)
        self.assertEqual(len(self.factory.requests), 1)

    @defer.inlineCallbacks
    def test_silence_is_a_timeout_and_nothing_is_sent_twice(self) -> Any:
        target = self.serve([None])
        with self.assertRaises(defer.TimeoutError) as caught:
            yield self.sender(timeout=0.5).post(target, {}, b"{}")
        self.assertIn("no answer within 0.5s", str(caught.exception))
        self.assertEqual(len(self.factory.requests), 1)

    @defer.inlineCallbacks
    def test_a_huge_answer_is_not_read_to_its_end(self) -> Any:
        target = self.serve([status(200, body=b"x" * 4_000_000), status(204)])
        sender = self.sender()
        self.assertEqual((yield sender.post(target, {}, b"{}")), 200)
        # Read to its end, the connection would be kept for the next POST; cut off at
        # BODY_LIMIT, it is dropped and the next POST opens another.
        self.assertEqual((yield sender.post(target, {}, b"{}")), 204)
        self.assertEqual(self.factory.connections, 2)
