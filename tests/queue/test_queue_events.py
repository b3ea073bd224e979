"""The queue publishes each recipient's outcome (events.py) in a disk thread, before
the envelope is written back or removed: a crash after the event never loses it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

sys.path.insert(0, str(Path(__file__).parent))

import test_queue_scheduler as scheduler_tests  # noqa: E402
from scripted_peer import Script  # noqa: E402

from mailserver.events import DeliveryEvent  # noqa: E402
from mailserver.interfaces import OutboundEnvelope  # noqa: E402
from mailserver.queue.scheduler import Policy  # noqa: E402
from mailserver.queue.spool import EntryGone  # noqa: E402

MESSAGE = b"From: alice@example.org\nMessage-ID: <ev.1@example.org>\nSubject: ev\n\nhi\n"


class Recorder:
    """A listener noting each event, its thread, and what the spool said at the time."""

    def __init__(self, tests: EventTests) -> None:
        self.tests = tests
        self.seen: list[tuple[DeliveryEvent, bool, str]] = []

    def publish(self, events: Sequence[DeliveryEvent]) -> None:
        for event in events:
            try:
                entry = self.tests.spool.load(event.queue_id)
                state = next(r.state for r in entry.recipients
                             if r.address == event.recipient)
            except EntryGone:
                state = "gone"
            self.seen.append((event, threading.current_thread() is threading.main_thread(),
                              state))


class EventTests(unittest.TestCase):
    timeout = 30
    # The scheduler tests' set-up (real spool, disk threads, a scripted peer), not
    # their tests (imported as a module, so pytest does not collect them twice).
    setUp = scheduler_tests.SchedulerTests.setUp
    build = scheduler_tests.SchedulerTests.build
    deliver = scheduler_tests.SchedulerTests.deliver
    until_empty = scheduler_tests.SchedulerTests.until_empty

    @defer.inlineCallbacks
    def test_deferred_then_delivered_each_told_before_the_envelope_changes(self) -> object:
        scheduler, recorder = self.build_and_listen(Script(final_replies=[
            b"451 4.3.0 busy\r\n", b"250 2.0.0 Ok: queued as X\r\n"]))
        queue_id = yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        kinds = [(e.kind, e.status, e.attempts, state) for e, _, state in recorder.seen]
        # Told while the envelope still said "pending" (not yet written, not removed).
        self.assertEqual(kinds, [("deferred", "4.3.0", 1, "pending"),
                                 ("delivered", "2.0.0", 2, "pending")])
        for event, on_reactor, _ in recorder.seen:
            self.assertFalse(on_reactor, "published in a disk thread")
            self.assertEqual((event.queue_id, event.sender, event.recipient,
                              event.message_id, event.submitter),
                             (queue_id, "alice@example.org", "bob@example.net",
                              "ev.1@example.org", "alice@example.org"))
        self.assertIn("250 2.0.0 Ok: queued as X", recorder.seen[1][0].diagnostic)

    @defer.inlineCallbacks
    def test_failed_carries_the_dsn_status_and_diagnostic(self) -> object:
        scheduler, recorder = self.build_and_listen(Script(rcpt_replies={
            "nobody@example.net": b"550 5.1.1 <nobody@example.net>: no such user\r\n"}))
        yield defer.ensureDeferred(self.queue_message("nobody@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        [(event, _, _)] = [s for s in recorder.seen if s[0].recipient == "nobody@example.net"]
        self.assertEqual((event.kind, event.status), ("failed", "5.1.1"))
        self.assertIn("550 5.1.1 <nobody@example.net>: no such user", event.diagnostic)

    @defer.inlineCallbacks
    def test_delay_warning_is_told_once(self) -> object:
        scheduler, recorder = self.build_and_listen(
            Script(greeting=b"421 4.3.2 try later\r\n"),
            Policy(retry_initial=0.05, retry_max=0.05, queue_lifetime=0.6,
                   delay_warning=0.1))
        yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        # (The DSNs to alice are queued messages too: their own "delivered" events.)
        kinds = [e.kind for e, _, _ in recorder.seen if e.recipient == "bob@example.net"]
        self.assertEqual(kinds.count("delay_warning"), 1)
        self.assertEqual(kinds[-1], "failed")
        self.assertEqual(set(kinds[:-1]), {"deferred", "delay_warning"})

    def build_and_listen(self, script: Script,
                         policy: Policy | None = None) -> tuple[object, Recorder]:
        scheduler, _peer = self.build(script, policy)
        recorder = Recorder(self)
        scheduler.events = recorder  # type: ignore[assignment]
        return scheduler, recorder

    async def queue_message(self, *rcpts: str) -> str:
        txn = self.queue.begin(OutboundEnvelope("alice@example.org", rcpts,
                                                submitter="alice@example.org"))
        txn.write(MESSAGE)
        queue_id = await txn.commit()
        await txn.release_now()
        return queue_id
