"""RFC 5321 5.1: a host that will not take the mail now (a 4xx greeting, or a
connection closed before any greeting) is passed over for the next MX, in the same
round: the message is delivered by the second host, not deferred."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from scripted_peer import Script, ScriptedPeer
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailserver.queue.client import ClientSettings, Message
from mailserver.queue.destinations import Dispatcher, Job
from mailserver.queue.envelope import DELIVERED
from mailserver.queue.routing import Hop


class _TwoHosts:
    """A router whose MX list is the given hops, in order (no DNS)."""

    def __init__(self, hops: list[Hop]) -> None:
        self.hops = hops

    def route(self, domain: str) -> list[Hop]:
        return list(self.hops)


class NextMxTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def peer(self, script: Script) -> ScriptedPeer:
        peer = ScriptedPeer(script, self.tmp / str(id(script)))
        self.addCleanup(peer.stop)
        return peer

    @defer.inlineCallbacks
    def _deliver_past(self, first: Script) -> Any:
        bad, good = self.peer(first), self.peer(Script())
        hops = [Hop("mx1.example.net", "127.0.0.1", bad.port_number),
                Hop("mx2.example.net", "127.0.0.1", good.port_number)]
        dispatcher = Dispatcher(_TwoHosts(hops), ClientSettings("mx.example.org", 5, 5),
                                10, 10)  # type: ignore[arg-type]
        job = Job("q1", Message("a@example.org", ["b@example.net"],
                                b"Subject: t\n\nbody\n"))
        dispatcher.submit("example.net", job)
        outcomes = yield job.done
        dispatcher.stop()  # the connection would linger for the next message
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(outcomes["b@example.net"].state, DELIVERED)
        self.assertIn("mx2.example.net", outcomes["b@example.net"].remote)
        self.assertEqual(len(bad.sessions), 1)
        self.assertEqual([len(s.messages) for s in good.sessions], [1])

    def test_a_4xx_greeting_moves_on_to_the_next_mx(self) -> Any:
        return self._deliver_past(Script(greeting=b"421 4.3.2 too busy\r\n"))

    def test_a_5xx_greeting_moves_on_to_the_next_mx(self) -> Any:
        return self._deliver_past(Script(greeting=b"554 5.7.1 not for you\r\n"))
