"""The scheduler end to end in one process: real spool files, real disk threads, the
real client against a scripted SMTP server on loopback (reached as a smarthost, so no
DNS is involved). Retries use tiny back-off values; nothing here waits for minutes.
"""

from __future__ import annotations

import email
import email.policy
import re
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from dns_server import DNSServer  # noqa: E402
from scripted_peer import Script, ScriptedPeer  # noqa: E402

from mailserver.core.diskio import started_disk  # noqa: E402
from mailserver.errors import ReplyError  # noqa: E402
from mailserver.interfaces import IOutboundQueue, IQueueTransaction, OutboundEnvelope  # noqa: E402
from mailserver.queue.client import ClientSettings, Outcome  # noqa: E402
from mailserver.queue.destinations import Dispatcher  # noqa: E402
from mailserver.queue.envelope import (  # noqa: E402
    DELIVERED,
    PENDING,
    QueueEntry,
    RecipientState,
    new_queue_id,
)
from mailserver.queue.outbound import OutboundQueue  # noqa: E402
from mailserver.queue.routing import Router, Self, make_resolver  # noqa: E402
from mailserver.queue.scheduler import Policy, Scheduler  # noqa: E402
from mailserver.queue.spool import Spool  # noqa: E402

MESSAGE = b"From: alice@example.org\nSubject: sched\n\nhello\n"


class SchedulerTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sched-"))
        self.disk = started_disk(self.addCleanup)
        self.spool = Spool(self.dir / "queue")
        self.spool.ensure_dirs()
        self.local: list[tuple[str, list[str], bytes]] = []

    def build(self, script: Script, policy: Policy | None = None,
              total: int = 10, per_destination: int = 10,
              nameserver: str = "") -> tuple[Scheduler, ScriptedPeer]:
        peer = ScriptedPeer(script, self.dir / "tls")
        self.addCleanup(peer.stop)
        if nameserver:  # MX routing, every MX on the peer's port
            router = Router(make_resolver([nameserver], 2), peer.port_number, Self)
        else:
            router = Router(make_resolver(["127.0.0.1:9"], 1), 25, Self,
                            smarthost=f"127.0.0.1:{peer.port_number}")
        dispatcher = Dispatcher(router, ClientSettings("mx.example.org", 5, 5), total,
                                per_destination)
        self.queue = OutboundQueue(self.spool, self.disk)
        scheduler = Scheduler(self.spool, self.disk, self.queue, dispatcher,
                              policy or Policy(retry_initial=0.2, retry_max=0.4),
                              "mx.example.org", lambda d: d == "example.org", self.deliver)
        self.queue.notify = scheduler.notify
        scheduler.start([])
        self.addCleanup(scheduler.stop)
        return scheduler, peer

    def deliver(self, sender: str, rcpts: list[str], data: bytes) -> Deferred[dict[str, Outcome]]:
        self.local.append((sender, rcpts, data))
        return defer.succeed({r: Outcome(DELIVERED, "2.0.0", "250 local", "local")
                              for r in rcpts})

    async def queue_message(self, *rcpts: str, sender: str = "alice@example.org") -> str:
        txn = self.queue.begin(OutboundEnvelope(sender, rcpts))
        txn.write(MESSAGE)
        queue_id = await txn.commit()
        await txn.release_now()
        return queue_id

    def queue_at_once(self, scheduler: Scheduler, subjects: list[str]) -> None:
        """A full queue released at once (as after a restart): one message per subject,
        to <subject@example.net>, every one on disk before the scheduler hears of any."""
        ids = []
        for subject in subjects:
            data = b"Subject: %s\n\nhello\n" % subject.encode()
            entry = QueueEntry(new_queue_id(), "alice@example.org",
                               [RecipientState(f"{subject}@example.net")], size=len(data))
            tmp = self.spool.tmp_path(entry.id, "msg")
            tmp.write_bytes(data)
            self.spool.commit(entry, tmp)
            self.spool.release(entry.id)
            ids.append(entry.id)
        for queue_id in ids:
            scheduler.notify(queue_id)

    @staticmethod
    def subjects(peer: ScriptedPeer) -> list[str]:
        """The Subject of every message the peer took to the end of its data."""
        found = re.compile(rb"^Subject: (.*?)\r$", re.M)
        return sorted(m.group(1).decode() for s in peer.sessions for data in s.messages
                      for m in found.finditer(data))

    async def until_empty(self, scheduler: Scheduler) -> None:
        for _ in range(400):
            if not self.spool.ids() and not scheduler.busy:
                return
            await task.deferLater(scheduler.clock, 0.025, lambda: None)
        raise AssertionError(f"queue not empty: {self.spool.ids()}")

    def test_interfaces(self) -> None:
        queue = OutboundQueue(self.spool, self.disk)
        self.assertTrue(IOutboundQueue.providedBy(queue))
        self.assertTrue(IQueueTransaction.providedBy(
            queue.begin(OutboundEnvelope("a@example.org", ("b@example.net",)))))

    @defer.inlineCallbacks
    def test_4xx_then_250_retries_and_delivers_once(self) -> object:
        scheduler, peer = self.build(Script(final_replies=[b"451 4.3.0 busy\r\n",
                                                           b"250 2.0.0 Ok\r\n"]))
        yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(peer.finals, 2)
        delivered = [s for s in peer.sessions if s.messages]
        self.assertEqual(sum(len(s.messages) for s in delivered), 2, "one 451, one 250")
        self.assertEqual(self.local, [], "no DSN for a delivered message")

    @defer.inlineCallbacks
    def test_drop_mid_data_then_delivered_exactly_once(self) -> object:
        script = Script(drop_after_data_bytes=10)
        scheduler, peer = self.build(script)
        queue_id = yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        for _ in range(200):
            if any(r.attempts for r in self.spool.load(queue_id).recipients):
                break
            yield task.deferLater(scheduler.clock, 0.02, lambda: None)
        entry = self.spool.load(queue_id)
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertIn("lost connection", entry.recipients[0].last_error)
        script.drop_after_data_bytes = None
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual([m for s in peer.sessions for m in s.messages],
                         [b"From: alice@example.org\r\nSubject: sched\r\n\r\nhello\r\n"])

    @defer.inlineCallbacks
    def test_every_mx_is_tried_before_deferring(self) -> object:
        dns = DNSServer({
            "example.net": {"MX": [[10, "down.example.net"], [20, "up.example.net"]]},
            "down.example.net": {"A": ["127.0.0.5"]},  # nothing listens there
            "up.example.net": {"A": ["127.0.0.1"]},
        }).start()
        self.addCleanup(dns.stop)
        scheduler, peer = self.build(Script(), nameserver=dns.nameserver)
        yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(len([m for s in peer.sessions for m in s.messages]), 1)
        self.assertEqual(self.local, [], "delivered by the backup MX on the first attempt")

    @defer.inlineCallbacks
    def test_5xx_to_one_of_three_bounces_that_one(self) -> object:
        scheduler, peer = self.build(Script(rcpt_replies={
            "b@example.net": b"550 5.1.1 <b@example.net>: no such user\r\n"}))
        yield defer.ensureDeferred(self.queue_message(
            "a@example.net", "b@example.net", "c@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(len([m for s in peer.sessions for m in s.messages]), 1)
        [(sender, rcpts, dsn)] = self.local
        self.assertEqual((sender, rcpts), ("", ["alice@example.org"]))
        self.assertIn(b"Final-Recipient: rfc822; b@example.net", dsn)
        self.assertNotIn(b"Final-Recipient: rfc822; a@example.net", dsn)

    @defer.inlineCallbacks
    def test_deferred_entry_sleeps_until_its_next_try(self) -> object:
        scheduler, peer = self.build(Script(greeting=b"421 4.3.2 try later\r\n"),
                                     Policy(retry_initial=600, retry_max=600))
        queue_id = yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        for _ in range(200):
            if self.spool.load(queue_id).recipients[0].attempts and not scheduler.busy:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(scheduler.busy, set(), "no round runs while it waits")
        self.assertEqual(len(peer.sessions), 1)
        self.assertGreater(scheduler.due[queue_id], scheduler.clock.seconds() + 500)
        [rcpt] = self.spool.load(queue_id).recipients
        self.assertEqual((rcpt.state, rcpt.attempts, rcpt.status), (PENDING, 1, "4.3.2"))
        self.assertIn("421 4.3.2 try later", rcpt.last_error)
        scheduler.flush()  # `mailserver queue flush`
        for _ in range(200):
            if len(peer.sessions) == 2 and not scheduler.busy:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.spool.load(queue_id).recipients[0].attempts, 2)

    @defer.inlineCallbacks
    def test_expiry_bounces_what_is_left(self) -> object:
        scheduler, peer = self.build(
            Script(greeting=b"421 4.3.2 try later\r\n"),
            Policy(retry_initial=0.1, retry_max=0.1, queue_lifetime=0.3, delay_warning=0))
        yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        [(_, _, dsn)] = self.local
        self.assertIn(b"Status: 4.4.7", dsn)
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"message expired after", dsn)
        self.assertIn(b"421 4.3.2 try later", dsn)

    @defer.inlineCallbacks
    def test_delay_warning_sent_once(self) -> object:
        scheduler, peer = self.build(
            Script(greeting=b"421 4.3.2 try later\r\n"),
            Policy(retry_initial=0.05, retry_max=0.05, queue_lifetime=0.6,
                   delay_warning=0.1))
        yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        kinds = [b"Action: delayed" in dsn for _, _, dsn in self.local]
        self.assertEqual(sorted(kinds), [False, True], "one warning, then the failure")

    @defer.inlineCallbacks
    def test_null_sender_never_bounced(self) -> object:
        scheduler, peer = self.build(Script(rcpt_replies={
            "b@example.net": b"550 5.1.1 no\r\n"}))
        seen: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        yield defer.ensureDeferred(self.queue_message("b@example.net", sender=""))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(self.local, [])
        self.assertTrue(any("undeliverable mail from <> to <{to}> dropped" in
                            str(e.get("log_format")) for e in seen), "a log line says so")

    @defer.inlineCallbacks
    def test_hostile_reply_reaches_neither_bounce_nor_log_raw(self) -> object:
        """A hostile MX answers RCPT with a 200-line 550 of ESC, BEL and NUL (once a
        4.7 MB bounce with a 779 KB line, and raw escapes in the log): the sender's DSN
        parses, its lines are short and printable, the code is still there, and every
        log line is bounded and free of control characters."""
        reply = b"".join(b"550-5.1.1 <b@example.net>: no\x1b[2J\x07\x00" + b"B" * 3900
                         + b"\r\n" for _ in range(199)) + b"550 5.1.1 end\x1b]0;x\x07\r\n"
        scheduler, peer = self.build(Script(rcpt_replies={"b@example.net": reply}))
        seen: list[dict[str, object]] = []
        from twisted.logger import formatEvent, globalLogPublisher
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        yield defer.ensureDeferred(self.queue_message("b@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        [(sender, rcpts, dsn)] = self.local
        self.assertLess(len(dsn), 8 * 1024)
        for line in dsn.split(b"\n"):
            self.assertLessEqual(len(line), 998)
            self.assertIsNone(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line), line[:60])
        parsed = email.message_from_bytes(dsn, policy=email.policy.default)
        status = list(parsed.iter_parts())[1].get_payload()[1]  # type: ignore[union-attr]
        self.assertEqual(status["Status"], "5.1.1")
        self.assertTrue(status["Diagnostic-Code"].startswith(
            "smtp; 550 5.1.1 <b@example.net>: no?[2J??BBBB"), status["Diagnostic-Code"][:60])
        logged = [formatEvent(e) for e in seen if "queue" in str(e.get("log_namespace"))]
        self.assertTrue(any("to=<b@example.net>" in line and "status=bounced" in line
                            and "550 5.1.1 <b@example.net>: no?[2J??" in line
                            for line in logged), logged)
        for line in logged:
            self.assertLess(len(line), 2000)
            self.assertIsNone(re.search("[\x00-\x1f\x7f-\x9f]", line), line[:60])

    @defer.inlineCallbacks
    def test_many_messages_share_the_connection_cap(self) -> object:
        scheduler, peer = self.build(Script(), total=2, per_destination=2)
        for i in range(12):
            yield defer.ensureDeferred(self.queue_message(f"r{i}@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(sum(len(s.messages) for s in peer.sessions), 12)
        self.assertLessEqual(peer.max_active, 2, "connections_per_destination")
        self.assertLess(len(peer.sessions), 12, "connections are reused")

    @defer.inlineCallbacks
    def test_a_drain_removes_finished_entries_with_few_fsyncs(self) -> object:
        # One fsync of envelopes/ per delivered message (two, with the round's second
        # discard) was what the disk threads did for most of a drain; removals now share
        # them. A slow disk (50 ms per directory fsync) lets removals pile up.
        import mailserver.queue.spool as spool_module

        real = spool_module.fsync_dir
        envelope_syncs: list[Path] = []

        def slow_fsync_dir(path: Path) -> None:
            if path == self.spool.envelopes:
                envelope_syncs.append(path)
                time.sleep(0.05)
            real(path)

        self.patch(spool_module, "fsync_dir", slow_fsync_dir)
        scheduler, peer = self.build(Script())
        self.queue_at_once(scheduler, [f"r{i}" for i in range(20)])
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(peer.finals, 20)
        self.assertEqual(sorted(self.spool.messages.iterdir()), [])
        self.assertLessEqual(len(envelope_syncs), 10, "removals share their fsyncs")

    @defer.inlineCallbacks
    def test_cached_connection_closed_by_the_peer_is_not_an_attempt(self) -> object:
        scheduler, peer = self.build(Script(close_after_message=True))
        yield defer.ensureDeferred(self.queue_message("a@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        second = yield defer.ensureDeferred(self.queue_message("b@example.net"))
        for _ in range(200):
            if second not in self.spool.ids():
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertNotIn(second, self.spool.ids(), "delivered on its first attempt")
        self.assertEqual(peer.finals, 2)
        self.assertEqual(len(peer.sessions), 2)

    @defer.inlineCallbacks
    def test_rounds_at_once_are_capped_and_the_rest_follow(self) -> object:
        scheduler, peer = self.build(Script())
        scheduler.max_rounds = 3
        most = []
        start_round = scheduler._start_round

        def counted(queue_id: str) -> None:
            start_round(queue_id)
            most.append(len(scheduler.busy))

        self.patch(scheduler, "_start_round", counted)
        self.queue_at_once(scheduler, [f"r{i}" for i in range(12)])
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(self.subjects(peer), sorted(f"r{i}" for i in range(12)))
        self.assertEqual(len(most), 12)
        self.assertEqual(max(most), 3, "never more than max_rounds")

    @defer.inlineCallbacks
    def test_peer_closing_after_each_message_loses_and_delays_nothing(self) -> object:
        # Both queued at once, one connection allowed: the second message is written on
        # the cached connection before its close (sent right after the 250) is read.
        # That is no attempt at the second message: it goes out at once on a new
        # connection, not after the retry back-off (60 s here).
        scheduler, peer = self.build(Script(close_after_message=True), total=1,
                                     per_destination=1,
                                     policy=Policy(retry_initial=60, retry_max=60))
        self.queue_at_once(scheduler, ["first", "second"])
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(peer.finals, 2)
        self.assertEqual([len(s.messages) for s in peer.sessions], [1, 1])
        self.assertEqual(self.subjects(peer), ["first", "second"])

    @defer.inlineCallbacks
    def test_4xx_to_one_message_keeps_the_cached_connection(self) -> object:
        # A 451 at the end of one message's data is about that message (RFC 5321
        # 4.2.5): the next message goes over the same connection, and the deferred one
        # is retried later, delivered once.
        scheduler, peer = self.build(
            Script(final_replies=[b"451 4.3.0 try later\r\n", b"250 2.0.0 Ok\r\n"]),
            total=1, per_destination=1)
        self.queue_at_once(scheduler, ["first", "second"])
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual(peer.finals, 3, "451, 250, then the retry's 250")
        first_two = peer.sessions[0].messages[:2]
        self.assertEqual(sorted(first_two), [b"Subject: first\r\n\r\nhello\r\n",
                                             b"Subject: second\r\n\r\nhello\r\n"],
                         "both on the first connection")
        deferred = first_two[0].split(b"\r\n")[0].removeprefix(b"Subject: ").decode()
        self.assertEqual(self.subjects(peer), sorted(["first", "second", deferred]),
                         "the one that got the 451 sent again, each delivered once")

    @defer.inlineCallbacks
    def test_local_recipients_in_the_queue_go_to_the_maildir_path(self) -> object:
        scheduler, peer = self.build(Script())
        yield defer.ensureDeferred(self.queue_message("carol@example.org", "bob@example.net"))
        yield defer.ensureDeferred(self.until_empty(scheduler))
        self.assertEqual([(s, r) for s, r, _ in self.local],
                         [("alice@example.org", ["carol@example.org"])])
        self.assertEqual(sum(len(s.messages) for s in peer.sessions), 1)

    @defer.inlineCallbacks
    def test_abort_after_commit_leaves_nothing(self) -> object:
        self.build(Script())
        txn = self.queue.begin(OutboundEnvelope("alice@example.org", ("bob@example.net",)))
        txn.write(MESSAGE)
        yield txn.commit()
        self.assertEqual(len(self.spool.held_ids()), 1)
        txn.abort()
        yield self.disk.run(lambda: None)
        for _ in range(50):
            if not self.spool.held_ids() and not list(self.spool.messages.iterdir()):
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.spool.held_ids(), [])
        self.assertEqual(list(self.spool.messages.iterdir()), [])

    @defer.inlineCallbacks
    def test_large_message_spills_to_disk(self) -> object:
        scheduler, peer = self.build(Script())
        self.queue.spill_threshold = 1000
        txn = self.queue.begin(OutboundEnvelope("alice@example.org", ("bob@example.net",)))
        body = b"".join(b"line %d\n" % i for i in range(5000))
        for i in range(0, len(body), 700):
            txn.write(body[i:i + 700])
        queue_id = yield txn.commit()
        self.assertEqual(self.spool.read_message(queue_id), body)
        txn.abort()

    @defer.inlineCallbacks
    def test_failed_commit_is_a_451_and_leaves_nothing(self) -> object:
        self.build(Script())
        self.spool.messages.rmdir()  # the rename into messages/ fails (ENOENT)
        txn = self.queue.begin(OutboundEnvelope("alice@example.org", ("bob@example.net",)))
        txn.write(MESSAGE)
        with self.assertRaises(ReplyError) as info:
            yield txn.commit()
        self.assertEqual((info.exception.code, info.exception.reply.enhanced), (451, "4.3.0"))
        for _ in range(50):
            if not list(self.spool.tmp.iterdir()):
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
        self.assertEqual(self.spool.held_ids(), [])

    @defer.inlineCallbacks
    def test_entry_whose_message_vanished_is_set_aside(self) -> object:
        # The envelope stayed in envelopes/ ("queued" to `mailserver queue list`) but
        # nothing ever looked at it again until a restart.
        scheduler, peer = self.build(Script())
        scheduler.stop()  # queue it without delivering, then take the message away
        queue_id = yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        (self.spool.messages / queue_id).unlink()
        scheduler.running = True
        scheduler.schedule(queue_id, 0)
        for _ in range(200):
            if (self.spool.corrupt / queue_id).exists() and not scheduler.busy:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertTrue((self.spool.corrupt / queue_id).exists())
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(peer.sessions, [])

    @defer.inlineCallbacks
    def test_a_bug_in_the_client_defers_instead_of_hanging_the_entry(self) -> object:
        # send() promises never to raise; if it does anyway, the job it took must still
        # finish, or the round never ends and the entry is stuck until a restart.
        from mailserver.queue.client import SMTPConnection

        async def broken(self: SMTPConnection, message: object, outcomes: object) -> None:
            raise RuntimeError("client bug")

        original = SMTPConnection._transaction
        SMTPConnection._transaction = broken  # type: ignore[assignment,method-assign]
        self.addCleanup(setattr, SMTPConnection, "_transaction", original)
        scheduler, _peer = self.build(Script(), Policy(retry_initial=600, retry_max=600))
        queue_id = yield defer.ensureDeferred(self.queue_message("bob@example.net"))
        for _ in range(200):
            entry = self.spool.load(queue_id)
            if entry.recipients[0].attempts and not scheduler.busy:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        [rcpt] = self.spool.load(queue_id).recipients
        self.assertEqual((rcpt.state, rcpt.status), (PENDING, "4.3.0"))
        self.assertIn("client bug", rcpt.last_error)
        self.assertFalse(scheduler.busy)
        self.flushLoggedErrors(RuntimeError)
