"""The outbound SMTP client against a scripted SMTP server on loopback (real sockets).

Each test asserts what the remote end received (bytes on the wire) and the outcome per
recipient: delivered, deferred (retry) or failed (bounce), as RFC 5321 4.2 says.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

sys.path.insert(0, str(Path(__file__).parent))

from scripted_peer import Script, ScriptedPeer  # noqa: E402

from mailserver.logs import MAX_PEER_TEXT  # noqa: E402
from mailserver.queue.client import (  # noqa: E402
    MAX_UNREAD,
    QUIT_TIMEOUT,
    TLS_BROKEN_FOR,
    BodyEncoder,
    ClientSettings,
    Message,
    Outcome,
    ReplyProtocol,
    SMTPClientError,
    SMTPConnection,
    wire_data,
)
from mailserver.queue.envelope import DELIVERED, FAILED, PENDING  # noqa: E402
from mailserver.queue.routing import Hop  # noqa: E402

BODY = b"From: alice@example.org\nSubject: t\n\nline one\n.starts with a dot\n..two\n.\nend\n"
RCPTS = ["a@example.net", "b@example.net", "c@example.net"]
#: What a hostile MX answered to RCPT: 200 lines (the most a reply may have) of 3.9 KB
#: with terminal escapes, BEL, NUL and a C1 CSI, about 780 KB in all.
HOSTILE_REPLY = b"".join(
    b"550-5.1.1 <a@example.net>: no \x1b[2J\x07\x00\xc2\x9b" + b"A" * 3900 + b"\r\n"
    for _ in range(199)) + b"550 5.1.1 last line\x1b]0;owned\x07\r\n"


class ClientTests(unittest.TestCase):
    timeout = 20

    def peer(self, **script: object) -> ScriptedPeer:
        tmp = tempfile.mkdtemp(prefix="peer-")
        peer = ScriptedPeer(Script(**script), Path(tmp))  # type: ignore[arg-type]
        self.addCleanup(peer.stop)
        return peer

    def connection(self, peer: ScriptedPeer, **settings: object) -> SMTPConnection:
        s = ClientSettings(helo_name="mx.example.org", connect_timeout=5,
                           command_timeout=5)
        for k, v in settings.items():
            setattr(s, k, v)
        conn = SMTPConnection(Hop("peer.test", "127.0.0.1", peer.port_number), s)
        self.addCleanup(conn.abort)
        return conn

    async def send(self, peer: ScriptedPeer, rcpts: list[str] | None = None,
                   data: bytes = BODY, **message: object) -> dict[str, Outcome]:
        conn = self.connection(peer)
        await conn.open()
        outcomes = await conn.send(Message("alice@example.org", rcpts or RCPTS[:1], data,
                                           **message))  # type: ignore[arg-type]
        await conn.close()
        return outcomes

    @defer.inlineCallbacks
    def test_delivers_with_crlf_and_dot_stuffing(self) -> object:
        peer = self.peer()
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes["a@example.net"].state, DELIVERED)
        self.assertEqual(outcomes["a@example.net"].text, "250 2.0.0 Ok: queued")
        [session] = peer.sessions
        self.assertEqual(session.messages, [
            b"From: alice@example.org\r\nSubject: t\r\n\r\nline one\r\n"
            b"..starts with a dot\r\n...two\r\n..\r\nend\r\n"])
        self.assertEqual(session.lines[0], b"EHLO mx.example.org")
        self.assertEqual(session.lines[-1], b"QUIT")

    def test_chunked_encoding_equals_whole_encoding(self) -> None:
        rng = random.Random(7)
        for _ in range(200):
            raw = bytes(rng.choice(b".\n\rab") for _ in range(rng.randrange(0, 60)))
            encoder = BodyEncoder()
            out, i = b"", 0
            while i < len(raw):
                step = rng.randrange(1, 5)
                out += encoder.feed(raw[i:i + step])
                i += step
            self.assertEqual(out + encoder.end(), wire_data(raw), raw)

    @defer.inlineCallbacks
    def test_large_message_streamed_from_the_spool_file(self) -> object:
        line = b".dot at the start of a line, then text to fill 64 KiB chunks\n"
        data = b"Subject: big\n\n" + line * 40000  # ~2.5 MB, lines across chunks
        path = Path(tempfile.mkdtemp(prefix="big-")) / "msg"
        path.write_bytes(data)
        peer = self.peer(extensions=["PIPELINING", "SIZE 100000000"])
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message(
            "alice@example.org", RCPTS[:1], path=path, size=len(data),
            lines=data.count(b"\n"))))
        yield defer.ensureDeferred(conn.close())
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        self.assertEqual(peer.sessions[0].messages, [wire_data(data)[:-3]])
        mail = next(x for x in peer.sessions[0].lines if x.startswith(b"MAIL"))
        self.assertEqual(mail, b"MAIL FROM:<alice@example.org> SIZE=%d"
                         % (len(data) + data.count(b"\n")))

    def test_wire_data_never_has_bare_cr_or_lf(self) -> None:
        for raw in (b"a\rb\nc\r\nd", b".", b"", b"x\n.\n", b"\r\r\n\n"):
            wire = wire_data(raw)
            self.assertTrue(wire.endswith(b".\r\n"))
            self.assertNotIn(b"\n", wire.replace(b"\r\n", b""))
            self.assertNotIn(b"\r", wire.replace(b"\r\n", b""))
        self.assertEqual(wire_data(b"."), b"..\r\n.\r\n")
        self.assertEqual(wire_data(b""), b".\r\n")

    @defer.inlineCallbacks
    def test_starttls_used_when_offered(self) -> object:
        peer = self.peer(tls=True)
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        self.assertTrue(conn.tls)
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        yield defer.ensureDeferred(conn.close())
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        [session] = peer.sessions
        self.assertTrue(session.tls)
        ehlos = [line for line in session.lines if line.startswith(b"EHLO")]
        self.assertEqual(len(ehlos), 2, "EHLO again after STARTTLS (RFC 3207 4.2)")

    @defer.inlineCallbacks
    def test_broken_tls_falls_back_to_plaintext_on_that_host(self) -> object:
        peer = self.peer(tls=True, broken_tls=True)
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        self.assertFalse(conn.tls)
        self.assertEqual(list(conn.settings.tls_broken), ["127.0.0.1"])
        self.assertEqual(len(peer.sessions), 2)
        self.assertNotIn(b"STARTTLS", peer.sessions[1].lines)

    @defer.inlineCallbacks
    def test_host_with_broken_tls_gets_tls_again_after_an_hour(self) -> object:
        peer = self.peer(tls=True)
        clock = Clock()
        clock.advance(1000)
        settings = ClientSettings(helo_name="mx.example.org", connect_timeout=5,
                                  command_timeout=5)
        settings.tls_broken["127.0.0.1"] = 1000 + TLS_BROKEN_FOR
        hop = Hop("peer.test", "127.0.0.1", peer.port_number)
        first = SMTPConnection(hop, settings, clock)
        self.addCleanup(first.abort)
        yield defer.ensureDeferred(first.open())
        self.assertFalse(first.tls, "remembered: plaintext, no handshake to fail first")
        self.assertNotIn(b"STARTTLS", peer.sessions[0].lines)
        clock.advance(TLS_BROKEN_FOR)
        second = SMTPConnection(hop, settings, clock)
        self.addCleanup(second.abort)
        yield defer.ensureDeferred(second.open())
        self.assertTrue(second.tls)
        self.assertIn(b"STARTTLS", peer.sessions[1].lines)
        self.assertEqual(settings.tls_broken, {})

    @defer.inlineCallbacks
    def test_pipelining_sends_mail_rcpts_data_in_one_write(self) -> object:
        peer = self.peer(extensions=["PIPELINING"])
        outcomes = yield defer.ensureDeferred(self.send(peer, RCPTS))
        self.assertEqual({o.state for o in outcomes.values()}, {DELIVERED})
        session = peer.sessions[0]
        group = next(c for c in session.chunks if c.startswith(b"MAIL FROM"))
        self.assertEqual(group, b"MAIL FROM:<alice@example.org>\r\n"
                         b"RCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\n"
                         b"RCPT TO:<c@example.net>\r\nDATA\r\n")

    @defer.inlineCallbacks
    def test_without_pipelining_one_command_at_a_time(self) -> object:
        peer = self.peer(extensions=[])
        yield defer.ensureDeferred(self.send(peer, RCPTS))
        commands = [c for c in peer.sessions[0].chunks if c[:4] in (b"MAIL", b"RCPT", b"DATA")]
        self.assertEqual(len(commands), 5)

    @defer.inlineCallbacks
    def test_one_of_three_recipients_refused(self) -> object:
        peer = self.peer(rcpt_replies={
            "b@example.net": b"550 5.1.1 <b@example.net>: Recipient address rejected\r\n",
            "c@example.net": b"450 4.2.1 <c@example.net>: try again later\r\n"})
        outcomes = yield defer.ensureDeferred(self.send(peer, RCPTS))
        self.assertEqual(outcomes["a@example.net"].state, DELIVERED)
        self.assertEqual((outcomes["b@example.net"].state, outcomes["b@example.net"].status),
                         (FAILED, "5.1.1"))
        self.assertEqual((outcomes["c@example.net"].state, outcomes["c@example.net"].status),
                         (PENDING, "4.2.1"))
        self.assertIn("Recipient address rejected", outcomes["b@example.net"].text)
        self.assertEqual(len(peer.sessions[0].messages), 1, "sent once, to the accepted one")

    @defer.inlineCallbacks
    def test_4xx_at_end_of_data_defers_then_250_delivers(self) -> object:
        peer = self.peer(final_replies=[b"451 4.3.0 Temporary failure\r\n",
                                        b"250 2.0.0 Ok\r\n"])
        first = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual((first[RCPTS[0]].state, first[RCPTS[0]].status), (PENDING, "4.3.0"))
        second = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(second[RCPTS[0]].state, DELIVERED)

    @defer.inlineCallbacks
    def test_5xx_at_end_of_data_fails_every_recipient(self) -> object:
        peer = self.peer(final_replies=[b"554 5.7.1 Spam\r\n"])
        outcomes = yield defer.ensureDeferred(self.send(peer, RCPTS[:2]))
        self.assertEqual({(o.state, o.status) for o in outcomes.values()},
                         {(FAILED, "5.7.1")})

    @defer.inlineCallbacks
    def test_mail_from_refused(self) -> object:
        peer = self.peer(mail_reply=b"553 5.7.1 Sender rejected\r\n")
        outcomes = yield defer.ensureDeferred(self.send(peer, RCPTS))
        self.assertEqual({o.state for o in outcomes.values()}, {FAILED})
        self.assertEqual(peer.sessions[0].messages, [])

    @defer.inlineCallbacks
    def test_drop_mid_data_defers_all_never_delivered(self) -> object:
        peer = self.peer(drop_after_data_bytes=20)
        outcomes = yield defer.ensureDeferred(self.send(peer, RCPTS[:2]))
        self.assertEqual({o.state for o in outcomes.values()}, {PENDING})
        self.assertIn("lost connection with peer.test[127.0.0.1]", outcomes[RCPTS[0]].text)
        self.assertEqual(peer.sessions[0].messages, [])

    @defer.inlineCallbacks
    def test_silent_server_times_out(self) -> object:
        peer = self.peer(silent_on="MAIL", extensions=[])
        conn = self.connection(peer, command_timeout=0.5)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertIn("timed out", outcomes[RCPTS[0]].text)
        self.assertFalse(conn.usable)

    @defer.inlineCallbacks
    def test_silent_server_with_pipelining_times_out_and_retries(self) -> object:
        peer = self.peer(silent_on="MAIL")  # replies fall out of step, then silence
        conn = self.connection(peer, command_timeout=0.5)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:2], BODY)))
        self.assertEqual({o.state for o in outcomes.values()}, {PENDING})
        self.assertIn("timed out", outcomes[RCPTS[0]].text)
        self.assertEqual(peer.sessions[0].messages, [])

    @defer.inlineCallbacks
    def test_size_limit_of_the_peer_bounces_without_sending(self) -> object:
        peer = self.peer(extensions=["SIZE 10"])
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual((outcomes[RCPTS[0]].state, outcomes[RCPTS[0]].status),
                         (FAILED, "5.3.4"))
        self.assertFalse(any(line.startswith(b"MAIL") for line in peer.sessions[0].lines))

    @defer.inlineCallbacks
    def test_size_declared_on_mail(self) -> object:
        peer = self.peer(extensions=["SIZE 1000000"])
        yield defer.ensureDeferred(self.send(peer))
        mail = next(line for line in peer.sessions[0].lines if line.startswith(b"MAIL"))
        self.assertEqual(mail, b"MAIL FROM:<alice@example.org> SIZE=%d"
                         % (len(BODY) + BODY.count(b"\n")))

    @defer.inlineCallbacks
    def test_smtputf8_needs_peer_support(self) -> object:
        peer = self.peer(extensions=["8BITMIME"])
        outcomes = yield defer.ensureDeferred(self.send(peer, smtputf8=True))
        self.assertEqual((outcomes[RCPTS[0]].state, outcomes[RCPTS[0]].status),
                         (FAILED, "5.6.7"))
        peer2 = self.peer(extensions=["SMTPUTF8", "8BITMIME"])
        ok = yield defer.ensureDeferred(self.send(peer2, smtputf8=True, body_8bit=True))
        self.assertEqual(ok[RCPTS[0]].state, DELIVERED)
        mail = next(line for line in peer2.sessions[0].lines if line.startswith(b"MAIL"))
        self.assertEqual(mail, b"MAIL FROM:<alice@example.org> BODY=8BITMIME SMTPUTF8")

    @defer.inlineCallbacks
    def test_8bit_body_to_a_peer_without_8bitmime_goes_as_7bit(self) -> object:
        """RFC 6152 3: converted, not bounced (mime7bit.py): the peer gets no
        BODY=8BITMIME and only 7-bit octets, which decode to the original text."""
        import email
        import email.policy

        peer = self.peer(extensions=[])
        body = (b"From: alice@example.org\nSubject: t\nContent-Type: text/plain; "
                b"charset=utf-8\n\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\n")
        outcomes = yield defer.ensureDeferred(self.send(peer, data=body, body_8bit=True))
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        mail = next(line for line in peer.sessions[0].lines if line.startswith(b"MAIL"))
        self.assertEqual(mail, b"MAIL FROM:<alice@example.org>")
        sent = peer.sessions[0].messages[0]
        self.assertTrue(sent.isascii())
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable", sent)
        received = email.message_from_bytes(sent, policy=email.policy.default)
        self.assertEqual(received.get_content().replace("\r\n", "\n"),
                         "Grüße aus Köln\n")

    @defer.inlineCallbacks
    def test_8bit_headers_to_a_peer_without_8bitmime_bounce(self) -> object:
        """8-bit header octets cannot be made 7-bit this way (SMTPUTF8's business):
        5.6.3, and nothing of the message is sent."""
        peer = self.peer(extensions=[])
        body = b"From: alice@example.org\nSubject: Gr\xc3\xbc\xc3\x9fe\n\nx\xc3\xa9\n"
        outcomes = yield defer.ensureDeferred(self.send(peer, data=body, body_8bit=True))
        self.assertEqual((outcomes[RCPTS[0]].state, outcomes[RCPTS[0]].status),
                         (FAILED, "5.6.3"))
        self.assertIn("cannot be made 7-bit: a header holds 8-bit octets",
                      outcomes[RCPTS[0]].text)
        self.assertFalse(any(line.startswith(b"MAIL") for line in peer.sessions[0].lines))

    @defer.inlineCallbacks
    def test_helo_when_ehlo_is_refused(self) -> object:
        peer = self.peer(ehlo_refused=True)
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        self.assertIn(b"HELO mx.example.org", peer.sessions[0].lines)

    @defer.inlineCallbacks
    def test_refusing_greeting_is_an_error_for_this_host(self) -> object:
        peer = self.peer(greeting=b"554 5.3.2 go away\r\n")
        conn = self.connection(peer)
        with self.assertRaises(SMTPClientError) as info:
            yield defer.ensureDeferred(conn.open())
        self.assertIn("554 5.3.2 go away", info.exception.text)

    @defer.inlineCallbacks
    def test_connection_refused(self) -> object:
        peer = self.peer()
        port = peer.port_number
        yield peer.stop()
        conn = SMTPConnection(Hop("peer.test", "127.0.0.1", port),
                              ClientSettings(helo_name="x", connect_timeout=2))
        with self.assertRaises(SMTPClientError) as info:
            yield defer.ensureDeferred(conn.open())
        self.assertIn("Connection refused", info.exception.text)

    @defer.inlineCallbacks
    def test_several_messages_over_one_connection(self) -> object:
        peer = self.peer(rcpt_replies={"b@example.net": b"550 5.1.1 no\r\n"})
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        first = yield defer.ensureDeferred(conn.send(Message("a@example.org", ["b@example.net"],
                                                             BODY)))
        second = yield defer.ensureDeferred(conn.send(Message("a@example.org", RCPTS[:1],
                                                              BODY)))
        yield defer.ensureDeferred(conn.close())
        self.assertEqual(first["b@example.net"].state, FAILED)
        self.assertEqual(second[RCPTS[0]].state, DELIVERED)
        self.assertEqual(len(peer.sessions), 1)
        self.assertIn(b"RSET", peer.sessions[0].lines)

    @defer.inlineCallbacks
    def test_reused_connection_closed_before_any_reply_is_stale(self) -> object:
        # The peer closes after its 250 (an idle timeout racing our next MAIL FROM):
        # the second message got no reply at all, so the peer saw nothing of it.
        peer = self.peer(close_after_message=True)
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        first = yield defer.ensureDeferred(conn.send(Message("a@example.org", RCPTS[:1], BODY)))
        self.assertEqual(first[RCPTS[0]].state, DELIVERED)
        self.assertFalse(conn.stale)
        second = yield defer.ensureDeferred(conn.send(Message("a@example.org", RCPTS[1:2],
                                                              BODY)))
        self.assertEqual(second[RCPTS[1]].state, PENDING)
        self.assertTrue(conn.stale)
        self.assertEqual(peer.finals, 1)

    @defer.inlineCallbacks
    def test_connection_lost_on_its_first_message_is_not_stale(self) -> object:
        # A fresh connection that dies is this message's problem (or the peer's), not
        # a cached connection gone idle: deferred as usual.
        peer = self.peer(drop_after_data_bytes=20)
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("a@example.org", RCPTS[:1],
                                                                BODY)))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertFalse(conn.stale)

    @defer.inlineCallbacks
    def test_malformed_reply_is_a_temporary_failure(self) -> object:
        peer = self.peer(mail_reply=b"hello there\r\n")
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertIn("protocol error", outcomes[RCPTS[0]].text)


    @defer.inlineCallbacks
    def test_smarthost_auth_plain_inside_tls(self) -> object:
        peer = self.peer(tls=True, extensions=["PIPELINING", "AUTH PLAIN LOGIN"])
        conn = self.connection(peer, auth=("relayuser", "s3cret"))
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        auth = [line for line in peer.sessions[0].lines if line.startswith(b"AUTH")]
        self.assertEqual(auth, [b"AUTH PLAIN AHJlbGF5dXNlcgBzM2NyZXQ="])
        self.assertTrue(peer.sessions[0].tls)

    @defer.inlineCallbacks
    def test_smarthost_password_never_sent_in_plaintext(self) -> object:
        peer = self.peer(extensions=["AUTH PLAIN"])
        conn = self.connection(peer, auth=("relayuser", "s3cret"))
        with self.assertRaises(SMTPClientError) as info:
            yield defer.ensureDeferred(conn.open())
        self.assertIn("no AUTH PLAIN over TLS", info.exception.text)
        self.assertFalse(any(line.startswith(b"AUTH") for line in peer.sessions[0].lines))

    @defer.inlineCallbacks
    def test_address_with_control_characters_is_refused(self) -> object:
        peer = self.peer()
        outcomes = yield defer.ensureDeferred(self.send(peer, ["x@example.net>\r\nRSET"]))
        [outcome] = outcomes.values()
        self.assertEqual((outcome.state, outcome.status), (FAILED, "5.1.3"))
        self.assertFalse(any(line.startswith(b"MAIL") for line in peer.sessions[0].lines))

    @defer.inlineCallbacks
    def test_endless_reply_line_is_cut_off(self) -> object:
        peer = self.peer(mail_reply=b"250 " + b"x" * 100_000)  # no line end, ever
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertIn("reply line too long", outcomes[RCPTS[0]].text)

    @defer.inlineCallbacks
    def test_endless_multiline_reply_is_cut_off(self) -> object:
        peer = self.peer(mail_reply=b"250-more\r\n" * 5000 + b"250 ok\r\n")
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertIn("reply too long", outcomes[RCPTS[0]].text)

    @defer.inlineCallbacks
    def test_hostile_reply_text_is_cut_and_cleaned(self) -> object:
        """A 200-line 550 of 3.9 KB lines full of ESC, BEL and NUL: the outcome keeps
        the code and status, and a text of 900 octets at most, without controls."""
        peer = self.peer(rcpt_replies={RCPTS[0]: HOSTILE_REPLY})
        outcomes = yield defer.ensureDeferred(self.send(peer))
        outcome = outcomes[RCPTS[0]]
        self.assertEqual((outcome.state, outcome.status), (FAILED, "5.1.1"))
        self.assertTrue(outcome.text.startswith("550 5.1.1 <a@example.net>: no ?[2J?"),
                        outcome.text[:40])
        self.assertTrue(outcome.text.endswith("..."))
        self.assertLessEqual(len(outcome.text.encode()), MAX_PEER_TEXT)
        self.assertIsNone(re.search("[\x00-\x1f\x7f-\x9f]", outcome.text))

    @defer.inlineCallbacks
    def test_replies_injected_after_starttls_are_discarded(self) -> object:
        # RFC 3207 5: a man in the middle appends "250 ..." to the 220 in plaintext.
        # Taken as the answer to the EHLO inside TLS, it would replace the real
        # extension list and put every later reply out of step.
        peer = self.peer(tls=True, starttls_injection=b"250 injected\r\n",
                         extensions=["PIPELINING", "SIZE 1000000"])
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        self.assertTrue(conn.tls)
        self.assertIn("PIPELINING", conn.extensions)
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        yield defer.ensureDeferred(conn.close())
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        self.assertEqual(peer.sessions[0].messages, [wire_data(BODY)[:-3]])

    def test_flood_of_unasked_replies_is_cut_off(self) -> None:
        # Memory stays bounded: a peer streaming "250 ok" lines nobody asked for is
        # dropped once the unread replies pass MAX_UNREAD (about 2 MB sent here).
        proto = ReplyProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        for _ in range(2000):
            proto.dataReceived(b"250 2.1.0 ok\r\n" * 100)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        assert proto.lost is not None
        self.assertIn("too many replies nobody asked for", proto.lost.value.text)
        self.assertLess(len(proto._replies), MAX_UNREAD // 10)

    @defer.inlineCallbacks
    def test_2xx_to_data_is_never_a_delivery(self) -> object:
        # A peer out of step answers DATA with 250: the body was never sent, so the
        # recipient must stay pending (it was counted delivered: a silent loss).
        peer = self.peer(data_reply=b"250 2.0.0 Ok\r\n")
        outcomes = yield defer.ensureDeferred(self.send(peer))
        self.assertEqual(outcomes[RCPTS[0]].state, PENDING)
        self.assertIn("answered DATA with 250", outcomes[RCPTS[0]].text)
        self.assertEqual(peer.sessions[0].messages, [])

    def test_peer_that_stops_reading_the_message_times_out(self) -> None:
        # RFC 5321 4.5.3.2.5: without a data block timeout, a peer that stops reading
        # while we stream a big message held the connection (and its destination
        # slot) for ever: drained() waited on resumeProducing with no deadline.
        proto = ReplyProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.pauseProducing()  # the send buffer is full
        clock = Clock()
        d = proto.drained(180, clock)
        clock.advance(179)
        self.assertNoResult(d)
        clock.advance(2)
        failure = self.failureResultOf(d, SMTPClientError)
        self.assertIn("peer read nothing of the message for 180s", failure.value.text)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    @defer.inlineCallbacks
    def test_421_defers_and_nothing_more_is_said(self) -> object:
        # RFC 5321 3.8: 421 means the server is closing the channel: the recipient
        # is deferred, no RSET or QUIT follows, and the connection is never reused.
        peer = self.peer(extensions=[],
                         mail_reply=b"421 4.3.2 peer.test shutting down\r\n")
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        self.assertFalse(conn.usable)
        yield defer.ensureDeferred(conn.close())
        self.assertEqual((outcomes[RCPTS[0]].state, outcomes[RCPTS[0]].status),
                         (PENDING, "4.3.2"))
        self.assertEqual([line.split(b" ")[0] for line in peer.sessions[0].lines],
                         [b"EHLO", b"MAIL"])

    @defer.inlineCallbacks
    def test_peer_silent_on_quit_releases_the_connection_soon(self) -> object:
        # Every message is settled before QUIT: waiting the whole command timeout
        # (300 s) for its reply kept a destination (and a total) slot busy for nothing.
        peer = self.peer(silent_on="QUIT")
        clock = Clock()
        conn = SMTPConnection(Hop("peer.test", "127.0.0.1", peer.port_number),
                              ClientSettings("mx.example.org", 5, 300), clock)
        self.addCleanup(conn.abort)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:1], BODY)))
        self.assertEqual(outcomes[RCPTS[0]].state, DELIVERED)
        closing = defer.ensureDeferred(conn.close())
        # Until the QUIT reaches the peer (a fixed 0.1 s: a loaded machine could run
        # the timer before the write, and the peer never saw the QUIT).
        for _ in range(3000):
            if peer.sessions[0].lines[-1:] == [b"QUIT"]:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertNoResult(closing)
        clock.advance(QUIT_TIMEOUT + 1)
        self.successResultOf(closing)
        self.assertEqual(peer.sessions[0].lines[-1], b"QUIT")

    @defer.inlineCallbacks
    def test_421_to_a_rcpt_ends_the_transaction(self) -> object:
        # After a 421 to the first RCPT no second RCPT and no DATA is sent: both
        # recipients are deferred (the 421 one with the peer's own text).
        peer = self.peer(extensions=[], rcpt_replies={
            RCPTS[0]: b"421 4.7.0 peer.test too busy, closing\r\n"})
        conn = self.connection(peer)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message("alice@example.org",
                                                                RCPTS[:2], BODY)))
        yield defer.ensureDeferred(conn.close())
        self.assertEqual({o.state for o in outcomes.values()}, {PENDING})
        self.assertEqual(outcomes[RCPTS[0]].text, "421 4.7.0 peer.test too busy, closing")
        self.assertIn("closed the session (421)", outcomes[RCPTS[1]].text)
        self.assertEqual([line.split(b" ")[0] for line in peer.sessions[0].lines],
                         [b"EHLO", b"MAIL", b"RCPT"])
        self.assertFalse(conn.usable)
