"""The client's side of outbound TLS policies, against the scripted peer: no plaintext
retry when TLS is required, REQUIRETLS on MAIL FROM and its refusal (RFC 8689), the
session judged by OutboundTls.check, and the "TLS-Required: No" header test."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

sys.path.insert(0, str(Path(__file__).parent))

from scripted_peer import Script, ScriptedPeer  # noqa: E402

from mailserver.queue.client import ClientSettings, Message, SMTPConnection  # noqa: E402
from mailserver.queue.envelope import DELIVERED, FAILED  # noqa: E402
from mailserver.queue.mtasts import StsPolicy  # noqa: E402
from mailserver.queue.outtls import (  # noqa: E402
    REQUIRETLS,
    TLS_OPTIONAL,
    OutboundTls,
    Plan,
    TlsRefused,
)
from mailserver.queue.routing import Hop  # noqa: E402
from mailserver.queue.scheduler import tls_optional  # noqa: E402
from mailserver.queue.tlspolicy import hop_tls  # noqa: E402

ENFORCE = StsPolicy("peer.test", "1", "enforce", ("peer.test",), 86400, 0.0)


class RequiredTlsTests(unittest.TestCase):
    timeout = 20

    def peer(self, **script: Any) -> ScriptedPeer:
        peer = ScriptedPeer(Script(**script), Path(tempfile.mkdtemp(prefix="peer-")))
        self.addCleanup(peer.stop)
        return peer

    def connection(self, peer: ScriptedPeer, require_tls: bool) -> SMTPConnection:
        settings = ClientSettings(helo_name="mx.example.org", connect_timeout=5,
                                  command_timeout=5)
        conn = SMTPConnection(Hop("peer.test", "127.0.0.1", peer.port_number), settings,
                              require_tls=require_tls)
        self.addCleanup(conn.abort)
        return conn

    def guard(self) -> OutboundTls:
        return OutboundTls(None, None, None, None, lambda fn, *a: defer.succeed(fn(*a)))

    @defer.inlineCallbacks
    def test_failed_handshake_is_not_retried_in_plaintext_when_required(self) -> Any:
        peer = self.peer(tls=True, broken_tls=True)
        conn = self.connection(peer, require_tls=True)
        yield defer.ensureDeferred(conn.open())
        self.assertFalse(conn.tls)
        self.assertEqual(len(peer.sessions), 1, "no second, plaintext connection")
        self.assertEqual(conn.settings.tls_broken, {})
        plan = Plan("peer.test", "", ENFORCE, [conn.hop])
        with self.assertRaises(TlsRefused) as caught:
            self.guard().check(plan, hop_tls("peer.test", None, ENFORCE), conn)
        self.assertEqual(caught.exception.status, "4.7.5")
        self.assertIn("the TLS handshake failed; not sending (policy mta-sts)",
                      caught.exception.text)

    @defer.inlineCallbacks
    def test_required_tls_tries_tls_even_on_a_host_marked_broken(self) -> Any:
        peer = self.peer(tls=True)
        conn = self.connection(peer, require_tls=True)
        conn.settings.tls_broken["127.0.0.1"] = conn.clock.seconds() + 3600
        yield defer.ensureDeferred(conn.open())
        self.assertTrue(conn.tls)

    @defer.inlineCallbacks
    def test_unverified_session_refused_for_requiretls_but_not_for_tls_optional(
            self) -> Any:
        """The scripted peer's certificate is self-signed: MTA-STS verification fails.
        A REQUIRETLS destination refuses it; a "TLS-Required: No" one goes on."""
        peer = self.peer(tls=True)
        conn = self.connection(peer, require_tls=True)
        yield defer.ensureDeferred(conn.open())
        needs = hop_tls("peer.test", None, ENFORCE, requiretls=True)
        with self.assertRaises(TlsRefused) as caught:
            self.guard().check(Plan("peer.test", REQUIRETLS, ENFORCE, []), needs, conn)
        self.assertIn("MTA-STS: certificate not trusted", caught.exception.text)
        outcome = self.guard().check(Plan("peer.test", TLS_OPTIONAL, ENFORCE, []),
                                     hop_tls("peer.test", None, ENFORCE), conn)
        self.assertEqual(outcome, "opportunistic")

    @defer.inlineCallbacks
    def test_requiretls_parameter_sent_when_offered(self) -> Any:
        peer = self.peer(extensions=["PIPELINING", "REQUIRETLS"])
        conn = self.connection(peer, require_tls=False)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message(
            "alice@example.org", ["a@example.net"], b"Subject: x\n\nhi\n", requiretls=True)))
        self.assertEqual(outcomes["a@example.net"].state, DELIVERED)
        [mail] = [line for line in peer.sessions[0].lines if line.startswith(b"MAIL")]
        self.assertEqual(mail, b"MAIL FROM:<alice@example.org> REQUIRETLS")

    @defer.inlineCallbacks
    def test_requiretls_to_a_peer_without_it_fails_5_7_30_unsent(self) -> Any:
        peer = self.peer(extensions=["PIPELINING"])
        conn = self.connection(peer, require_tls=False)
        yield defer.ensureDeferred(conn.open())
        outcomes = yield defer.ensureDeferred(conn.send(Message(
            "alice@example.org", ["a@example.net"], b"Subject: x\n\nhi\n", requiretls=True)))
        outcome = outcomes["a@example.net"]
        self.assertEqual((outcome.state, outcome.status), (FAILED, "5.7.30"))
        self.assertIn("does not support REQUIRETLS", outcome.text)
        self.assertFalse([line for line in peer.sessions[0].lines
                          if line.startswith(b"MAIL")])


@pytest.mark.parametrize(("data", "optional"), [
    (b"From: a\nTLS-Required: No\nSubject: s\n\nbody\n", True),
    (b"tls-required:no\n\nbody\n", True),
    (b"From: a\r\nTLS-Required:  NO \r\n\r\nbody\r\n", True),
    (b"From: a\nTLS-Required: Yes\n\nbody\n", False),
    (b"From: a\n\nTLS-Required: No\n", False),  # in the body: not a header field
    (b"From: a\nX-TLS-Required: No\n\n", False),
])
def test_tls_required_header(data: bytes, optional: bool) -> None:
    assert tls_optional(data) is optional
