"""DSN (RFC 3461, RFC 3464) through the queue: NOTIFY honoured for failure, delay and
success reports, RET, ENVID and ORCPT in the reports and passed on to a peer that offers
DSN, "relayed" for one that does not (RFC 3461 5.2.2). The real scheduler, spool and
client against the scripted peer on loopback; every report parsed back with the email
package and read field by field as RFC 3464 2.2 and 2.3 define them."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

sys.path.insert(0, str(Path(__file__).parent))

from scripted_peer import Script, ScriptedPeer  # noqa: E402

from mailserver.core.diskio import started_disk  # noqa: E402
from mailserver.interfaces import OutboundEnvelope, RecipientDsn  # noqa: E402
from mailserver.queue.client import ClientSettings, Outcome  # noqa: E402
from mailserver.queue.destinations import Dispatcher  # noqa: E402
from mailserver.queue.envelope import DELIVERED, QueueEntry  # noqa: E402
from mailserver.queue.outbound import OutboundQueue  # noqa: E402
from mailserver.queue.routing import Router, Self, make_resolver  # noqa: E402
from mailserver.queue.scheduler import Policy, Scheduler  # noqa: E402
from mailserver.queue.spool import Spool  # noqa: E402

MESSAGE = (b"From: alice@example.org\nTo: bob@example.net\nSubject: dsn test\n"
           b"Message-ID: <m1@example.org>\n\nthe secret body\n")
DSN_PEER = ["PIPELINING", "8BITMIME", "SMTPUTF8", "DSN"]


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def report(raw: bytes) -> tuple[email.message.EmailMessage, list[email.message.Message],
                                 email.message.EmailMessage]:
    """(the report, [per-message block, per-recipient blocks...], the returned part)."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, returned = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    if status.get_content_type() == "message/global-delivery-status":
        # The email package reads the global type as one message (the first block its
        # header, the rest its body): split it into blocks again, as for RFC 3464.
        [inner] = status.get_payload()
        text = inner.as_bytes(policy=email.policy.default.clone(utf8=True)).decode()
        blocks = [email.message_from_string(b, policy=email.policy.default)
                  for b in text.split("\n\n") if b.strip()]
    else:
        assert status.get_content_type() == "message/delivery-status"
        blocks = list(status.get_payload())
    return msg, blocks, returned  # type: ignore[return-value]


class DsnTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dsn-"))
        self.disk = started_disk(self.addCleanup)
        self.spool = Spool(self.dir / "queue")
        self.spool.ensure_dirs()
        self.local: list[tuple[str, list[str], bytes]] = []

    def build(self, script: Script, policy: Policy | None = None) -> ScriptedPeer:
        peer = ScriptedPeer(script, self.dir / "tls")
        self.addCleanup(peer.stop)
        router = Router(make_resolver(["127.0.0.1:9"], 1), 25, Self,
                        smarthost=f"127.0.0.1:{peer.port_number}")
        dispatcher = Dispatcher(router, ClientSettings("mx.example.org", 5, 5), 10, 10)
        self.queue = OutboundQueue(self.spool, self.disk)
        self.scheduler = Scheduler(self.spool, self.disk, self.queue, dispatcher,
                                   policy or Policy(retry_initial=0.2, retry_max=0.4),
                                   "mx.example.org", lambda d: d == "example.org",
                                   self.deliver)
        self.queue.notify = self.scheduler.notify
        self.scheduler.start([])
        self.addCleanup(self.scheduler.stop)
        return peer

    def deliver(self, sender: str, rcpts: list[str], data: bytes) -> Deferred[dict[str, Outcome]]:
        self.local.append((sender, rcpts, data))
        return defer.succeed({r: Outcome(DELIVERED, "2.0.0", "250 2.0.0 delivered to maildir",
                                         "local") for r in rcpts})

    async def send(self, *dsn: RecipientDsn, ret: str = "", envid: str = "",
                   data: bytes = MESSAGE) -> str:
        txn = self.queue.begin(OutboundEnvelope(
            "alice@example.org", tuple(d.address for d in dsn), ret=ret, envid=envid,
            dsn=dsn))
        txn.write(data)
        queue_id = await txn.commit()
        await txn.release_now()
        await self.until_empty()
        return queue_id

    async def until_empty(self) -> None:
        for _ in range(400):
            if not self.spool.ids() and not self.scheduler.busy:
                return
            await task.deferLater(self.scheduler.clock, 0.025, lambda: None)
        raise AssertionError(f"queue not empty: {self.spool.ids()}")

    def reports(self) -> list[bytes]:
        """DSNs queued for alice (the scheduler delivers them through `deliver`)."""
        return [data for sender, rcpts, data in self.local
                if sender == "" and rcpts == ["alice@example.org"]]

    # -- passed on to a peer that offers DSN ------------------------------------------------

    @defer.inlineCallbacks
    def test_parameters_passed_on_to_a_dsn_peer(self) -> object:
        peer = self.build(Script(extensions=DSN_PEER))
        yield defer.ensureDeferred(self.send(
            RecipientDsn("bob@example.net", ("FAILURE", "SUCCESS"), "rfc822",
                         "Bob+list=x@example.net"),
            RecipientDsn("carol@example.net", ("NEVER",)),
            RecipientDsn("dave@example.net", (), "utf-8", "d\u00e9v\u00e9@example.net"),
            ret="HDRS", envid="QQ+314 = pi"))
        lines = [line.decode() for line in peer.sessions[0].lines]
        # RFC 3461 4.4: ENVID in xtext ("+", " " and "=" as +XX).
        self.assertIn("MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ+2B314+20+3D+20pi",
                      lines)
        self.assertIn("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE "
                      "ORCPT=rfc822;Bob+2Blist+3Dx@example.net", lines)
        self.assertIn("RCPT TO:<carol@example.net> NOTIFY=NEVER", lines)
        self.assertIn("RCPT TO:<dave@example.net> ORCPT=utf-8;d\\x{E9}v\\x{E9}@example.net",
                      lines)
        # The peer offers DSN and reports success itself: nothing from us.
        self.assertEqual(self.reports(), [])

    @defer.inlineCallbacks
    def test_nothing_passed_to_a_peer_without_dsn_and_relayed_reported(self) -> object:
        peer = self.build(Script())  # PIPELINING, 8BITMIME: no DSN
        queue_id = yield defer.ensureDeferred(self.send(
            RecipientDsn("bob@example.net", ("SUCCESS",), "rfc822", "bob@example.net"),
            RecipientDsn("carol@example.net", ("FAILURE",)),
            ret="FULL", envid="env-1"))
        lines = [line.decode() for line in peer.sessions[0].lines]
        self.assertIn("RCPT TO:<bob@example.net>", lines)
        self.assertIn("RCPT TO:<carol@example.net>", lines)
        self.assertFalse(any("NOTIFY" in x or "RET=" in x or "ENVID" in x for x in lines))
        [raw] = self.reports()
        msg, (per_message, per_rcpt), returned = report(raw)
        self.assertEqual(msg["Subject"], "Successful Mail Delivery Report")
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mx.example.org>")
        self.assertEqual(per_message["Original-Envelope-Id"], "env-1")
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.example.org")
        self.assertEqual(per_message["X-Mailserver-Queue-ID"], queue_id)
        self.assertEqual(per_rcpt["Original-Recipient"], "rfc822; bob@example.net")
        self.assertEqual(per_rcpt["Final-Recipient"], "rfc822; bob@example.net")
        self.assertEqual(per_rcpt["Action"], "relayed")  # RFC 3461 5.2.2
        self.assertEqual(per_rcpt["Status"], "2.0.0")
        self.assertEqual(per_rcpt["Remote-MTA"], "dns; 127.0.0.1")
        self.assertEqual(per_rcpt["Diagnostic-Code"], "smtp; 250 2.0.0 Ok: queued")
        # RFC 3461 4.3: a report without failures returns the headers only, RET=FULL
        # or not.
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: dsn test", returned.get_content())
        self.assertNotIn("secret body", raw.decode())

    # -- NOTIFY decides ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_never_and_success_only_get_no_bounce(self) -> object:
        self.build(Script(rcpt_replies={
            "bob@example.net": b"550 5.1.1 no such user\r\n",
            "carol@example.net": b"550 5.1.1 no such user\r\n",
            "dave@example.net": b"550 5.1.1 no such user\r\n"}))
        yield defer.ensureDeferred(self.send(
            RecipientDsn("bob@example.net", ("NEVER",)),
            RecipientDsn("carol@example.net", ("SUCCESS", "DELAY")),
            RecipientDsn("dave@example.net", ("FAILURE",))))
        [raw] = self.reports()
        _, (_, per_rcpt), returned = report(raw)
        self.assertEqual(per_rcpt["Final-Recipient"], "rfc822; dave@example.net")
        self.assertEqual((per_rcpt["Action"], per_rcpt["Status"]), ("failed", "5.1.1"))
        # One recipient block (the unpacking above): bob (NEVER) and carol (no FAILURE)
        # are in no report.
        self.assertNotIn(b"carol@example.net", raw)
        self.assertNotIn(b"<bob@example.net>:", raw)

    @defer.inlineCallbacks
    def test_delay_warning_only_where_delay_is_asked(self) -> object:
        self.build(Script(greeting=b"421 4.3.2 try later\r\n"),
                   Policy(retry_initial=0.05, retry_max=0.05, queue_lifetime=0.6,
                          delay_warning=0.1))
        yield defer.ensureDeferred(self.send(
            RecipientDsn("bob@example.net", ("DELAY",)),       # delay only: no bounce
            RecipientDsn("carol@example.net", ("FAILURE",)),   # failure only: no delay
            RecipientDsn("dave@example.net")))                 # default: both
        seen = []
        for raw in self.reports():
            _, (_, *blocks), _ = report(raw)
            seen += sorted((b["Action"], b["Final-Recipient"]) for b in blocks)
        self.assertEqual(sorted(seen), [
            ("delayed", "rfc822; bob@example.net"), ("delayed", "rfc822; dave@example.net"),
            ("failed", "rfc822; carol@example.net"), ("failed", "rfc822; dave@example.net")])

    # -- RET --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_ret_full_returns_the_message_and_hdrs_the_headers(self) -> object:
        self.build(Script(rcpt_replies={"bob@example.net": b"550 5.1.1 gone\r\n"}))
        yield defer.ensureDeferred(self.send(RecipientDsn("bob@example.net"), ret="FULL",
                                             envid="full-1"))
        yield defer.ensureDeferred(self.send(RecipientDsn("bob@example.net"), ret="HDRS"))
        full, hdrs = self.reports()
        msg, (per_message, per_rcpt), returned = report(full)
        self.assertEqual(msg["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(per_message["Original-Envelope-Id"], "full-1")
        self.assertNotIn("Original-Recipient", per_rcpt)  # RFC 3461 6.3: only from ORCPT
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        [inner] = returned.get_payload()
        self.assertEqual(inner["Subject"], "dsn test")
        self.assertEqual(inner.get_payload(), "the secret body\n")
        _, (per_message, _), returned = report(hdrs)
        self.assertNotIn("Original-Envelope-Id", per_message)
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"secret body", hdrs)

    # -- local delivery from the queue, UTF-8 -----------------------------------------

    @defer.inlineCallbacks
    def test_local_delivery_in_the_queue_reports_delivered_globally_for_utf8(self) -> object:
        self.build(Script())
        yield defer.ensureDeferred(self.send(
            RecipientDsn("carol@example.org", ("SUCCESS",), "utf-8",
                         "k\u00e4the@example.org"),
            RecipientDsn("dan@example.org", ("FAILURE",))))  # no success report
        [raw] = self.reports()
        msg, (per_message, per_rcpt), _ = report(raw)
        status = msg.get_payload()[1]
        # RFC 6533 6: a UTF-8 address makes the report message/global-delivery-status.
        self.assertEqual(status.get_content_type(), "message/global-delivery-status")
        self.assertEqual(per_rcpt["Original-Recipient"], "utf-8; k\u00e4the@example.org")
        self.assertEqual(per_rcpt["Final-Recipient"], "rfc822; carol@example.org")
        self.assertEqual((per_rcpt["Action"], per_rcpt["Status"]), ("delivered", "2.0.0"))
        self.assertNotIn("Remote-MTA", per_rcpt)

    def test_utf8_orcpt_in_a_plain_report_is_escaped(self) -> None:
        """A utf-8 ORCPT of ASCII characters leaves the report plain (RFC 3464), so its
        "\\" is written in RFC 6533 3's \\x{HEX} form there."""
        from mailserver.queue.bounce import build_dsn
        from mailserver.queue.envelope import FAILED, RecipientState
        entry = QueueEntry("0123456789ABCDEF", "alice@example.org", [RecipientState(
            "bob@example.net", FAILED, 1, "550 5.1.1 gone", "5.1.1", orcpt_type="utf-8",
            orcpt="b\\ob@example.net")])
        raw = build_dsn(entry, entry.recipients, b"Subject: x\n", "mx.example.org")
        msg, (_, per_rcpt), _ = report(raw)
        self.assertEqual(msg.get_payload()[1].get_content_type(), "message/delivery-status")
        self.assertEqual(per_rcpt["Original-Recipient"], "utf-8; b\\x{5C}ob@example.net")

    def test_envelopes_from_before_dsn_still_load(self) -> None:
        old = {"version": 1, "id": "0123456789ABCDEF", "sender": "alice@example.org",
               "recipients": [{"address": "bob@example.net", "state": "pending",
                               "attempts": 0, "last_error": "", "status": "", "remote": "",
                               "next_try": 0.0, "bounced": False, "warned": False}],
               "created": 1.0, "smtputf8": False, "body_8bit": False, "submitter": "",
               "size": 10}
        entry = QueueEntry.from_json(json.dumps(old).encode())
        self.assertEqual((entry.ret, entry.envid, entry.requiretls), ("", "", False))
        [r] = entry.recipients
        self.assertEqual((r.notify, r.orcpt_type, r.orcpt, r.report), ([], "", "", ""))
        self.assertTrue(r.wants("FAILURE") and r.wants("DELAY") and not r.wants("SUCCESS"))
        again = QueueEntry.from_json(entry.to_json())
        self.assertEqual(again, entry)
        bad = dict(old, recipients=[dict(old["recipients"][0], notify="NEVER")])  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            QueueEntry.from_json(json.dumps(bad).encode())

    @defer.inlineCallbacks
    def test_requiretls_and_dsn_fields_are_persisted(self) -> object:
        self.queue = OutboundQueue(self.spool, self.disk)
        txn = self.queue.begin(OutboundEnvelope(
            "alice@example.org", ("bob@example.net", "carol@example.net"), ret="HDRS",
            envid="e1", requiretls=True,
            dsn=(RecipientDsn("bob@example.net", ("SUCCESS", "FAILURE"), "rfc822", "b@x"),)))
        txn.write(MESSAGE)
        queue_id = yield txn.commit()
        entry = QueueEntry.from_json((self.spool.held / queue_id).read_bytes())
        self.assertEqual((entry.ret, entry.envid, entry.requiretls), ("HDRS", "e1", True))
        bob, carol = entry.recipients
        self.assertEqual((bob.notify, bob.orcpt_type, bob.orcpt),
                         (["SUCCESS", "FAILURE"], "rfc822", "b@x"))
        self.assertEqual((carol.notify, carol.orcpt_type), ([], ""))
        txn.abort()
