"""The delivery router: where a recipient goes, and one message committed to local
mailboxes and the relay queue all or nothing (delivery/router.py), over the fakes of
tests/fakes.py failing one phase at a time. The SMTP session's use of it is in
tests/protocol/test_submission_session.py; the real queue and Maildir behind it in
tests/integration/test_submission_queue.py."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import Events, FakeTarget
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.config import config_from_dict
from mailserver.delivery.router import DeliveryRouter
from mailserver.errors import ReplyError
from mailserver.interfaces import (
    DeliveryEnvelope,
    IDeliveryTarget,
    IDeliveryTransaction,
    IRecipientDirectory,
    MailboxId,
    OutboundEnvelope,
    RecipientDsn,
    Resolution,
)
from mailserver.queue.envelope import DELIVERED, FAILED, PENDING
from mailserver.queue.service import LocalDeliverer

BOB = MailboxId("example.org", "bob")
CAROL = MailboxId("example.org", "carol")
MESSAGE = b"Received: from c.test\nSubject: s\n\nbody\n"


@implementer(IRecipientDirectory)
class Directory:
    """bob and carol, and fwd@ forwarding to bob and to friend@remote.test."""

    table = {"bob@example.org": Resolution(mailboxes=(BOB,)),
             "carol@example.org": Resolution(mailboxes=(CAROL,)),
             "fwd@example.org": Resolution(mailboxes=(BOB,), remote=("friend@remote.test",))}

    #: What unavailable() says: a users file that cannot be read, in one test.
    problem: str | None = None

    def resolve(self, address: str) -> Resolution:
        return self.table.get(address.lower(), Resolution())

    def unavailable(self) -> str | None:
        return self.problem


class Halves:
    def __init__(self, queue: bool = True, **local_failures: Any) -> None:
        self.events = Events()
        self.local = FakeTarget("local", self.events, **local_failures)
        self.queue = FakeTarget("queue", self.events) if queue else None
        config = config_from_dict({"hostname": "mx.test",
                                   "domains": {"local": ["example.org"]}})
        self.router = DeliveryRouter(config, Directory(), self.local, self.queue)


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def reply_of(d: Deferred[Any]) -> str:
    failure = result_of(d)
    assert isinstance(failure, Failure) and failure.check(ReplyError), failure
    return str(failure.value.reply.encode(), "ascii").strip()


BOTH = DeliveryEnvelope(sender="alice@example.org", mailboxes=(BOB,),
                        remote=("friend@remote.test",), submitter="alice@example.org")


# -- route -------------------------------------------------------------------------------


def test_route_local_alias_and_remote() -> None:
    router = Halves().router
    assert router.route("Bob@example.org", relay=False) == Resolution(mailboxes=(BOB,))
    assert router.route("fwd@example.org", relay=False).remote == ("friend@remote.test",)
    assert router.route("x@remote.test", relay=True) == Resolution(remote=("x@remote.test",))


@pytest.mark.parametrize("address,relay,queue,reply", [
    ("nobody@example.org", True, True, "550 5.1.1 Error: user unknown"),
    ("x@remote.test", False, True, "550 5.7.1 Error: relay access denied"),
    # Without a relay queue, a remote recipient waits (451) rather than getting lost.
    ("x@remote.test", True, False, "451 4.3.5 Error: relaying not available yet; try later"),
    ("fwd@example.org", False, False,
     "451 4.3.5 Error: relaying not available yet; try later"),
])
def test_route_refusals(address: str, relay: bool, queue: bool, reply: str) -> None:
    router = Halves(queue=queue).router
    with pytest.raises(ReplyError) as refused:
        router.route(address, relay)
    assert refused.value.reply.encode().decode().strip() == reply


def test_unknown_while_the_users_file_is_unreadable_is_temporary() -> None:
    """An empty answer from a directory that cannot read its files is "unknown for
    now": 451, so the sender retries, never 550 5.1.1 (a bounce for a real user)."""
    router = Halves().router
    router.directory.problem = "cannot read /data/users: Permission denied"  # type: ignore[attr-defined]
    with pytest.raises(ReplyError) as refused:
        router.route("nobody@example.org", relay=False)
    assert refused.value.reply.encode() == \
        b"451 4.3.0 Error: recipient lookup failed; try later\r\n"
    # What the directory does know is still delivered.
    assert router.route("bob@example.org", relay=False) == Resolution(mailboxes=(BOB,))


# -- one message, two halves -------------------------------------------------------------


def test_both_halves_commit_queue_first_and_release_last() -> None:
    h = Halves()
    txn = h.router.begin(BOTH)
    assert IDeliveryTransaction.providedBy(txn) and IDeliveryTarget.providedBy(h.router)
    txn.write(MESSAGE)
    d = txn.commit()
    assert h.queue is not None
    [local], [queued] = h.local.transactions, h.queue.transactions
    assert queued.request == OutboundEnvelope(
        sender="alice@example.org", recipients=("friend@remote.test",),
        submitter="alice@example.org")
    # RFC 5321 4.4: Return-Path in the final delivery only, never in the relayed copy.
    assert local.data == b"Return-Path: <alice@example.org>\n" + MESSAGE
    assert queued.data == MESSAGE
    assert h.events == ["queue.commit"]
    assert queued.commit_deferred is not None
    queued.commit_deferred.callback("Q1")
    assert h.events == ["queue.commit", "local.commit"]
    assert local.commit_deferred is not None
    local.commit_deferred.callback(None)
    assert h.events == ["queue.commit", "local.commit", "queue.release"]
    assert result_of(d) == "Q1"
    txn.abort()  # after a successful commit: changes nothing
    assert h.events[-1] == "local.abort" and queued.state == "released"


def test_null_sender_return_path() -> None:
    h = Halves()
    h.router.begin(DeliveryEnvelope(sender="", mailboxes=(BOB,))).write(MESSAGE)
    assert h.local.transactions[0].data == b"Return-Path: <>\n" + MESSAGE


def test_local_failure_takes_back_the_queue_copy() -> None:
    h = Halves(fail_commit=ReplyError(452, "4.3.1", "Insufficient system storage"))
    txn = h.router.begin(BOTH)
    d = txn.commit()
    assert h.queue is not None
    h.queue.transactions[0].commit_deferred.callback("Q1")  # type: ignore[union-attr]
    assert reply_of(d) == "452 4.3.1 Insufficient system storage"
    assert h.events == ["queue.commit", "local.commit", "local.abort", "queue.abort"]


def test_unexpected_local_error_is_451() -> None:
    h = Halves(queue=False, fail_commit=RuntimeError("disk on fire"))
    d = h.router.begin(DeliveryEnvelope(sender="a@x.test", mailboxes=(BOB,))).commit()
    assert reply_of(d) == "451 4.3.0 Error: local delivery failed; try again later"


def test_queue_failure_takes_back_the_local_copy_before_its_commit() -> None:
    h = Halves()
    d = h.router.begin(BOTH).commit()
    assert h.queue is not None
    h.queue.transactions[0].commit_deferred.errback(  # type: ignore[union-attr]
        ReplyError(451, "4.3.0", "Error: queue write failed"))
    assert reply_of(d) == "451 4.3.0 Error: queue write failed"
    assert h.events == ["queue.commit", "local.abort", "queue.abort"]
    assert h.local.transactions[0].commit_deferred is None


def test_begin_failure_of_the_queue_aborts_the_begun_local_copy() -> None:
    h = Halves()
    assert h.queue is not None
    h.queue.fail_begin = ValueError("a bug in the queue")
    txn = h.router.begin(BOTH)  # does not raise: a BDAT chunk in flight stays in step
    txn.write(MESSAGE)
    assert h.events == ["local.abort"]
    assert reply_of(txn.commit()) == "451 4.3.0 Error: local delivery failed; try again later"
    assert h.events == ["local.abort"]


def test_begin_failure_of_the_local_half_begins_no_queue_copy() -> None:
    h = Halves(fail_begin=ValueError("unsafe mailbox"))
    txn = h.router.begin(BOTH)
    assert reply_of(txn.commit()) == "451 4.3.0 Error: local delivery failed; try again later"
    assert h.queue is not None and h.queue.transactions == [] and h.events == []


def test_write_failure_drops_both_halves_and_fails_the_commit() -> None:
    h = Halves()
    assert h.queue is not None
    h.queue.fail_write = OSError("spill failed")
    txn = h.router.begin(BOTH)
    txn.write(MESSAGE)  # never raises into the session
    txn.write(b"more\n")
    assert h.events == ["local.abort", "queue.abort"]
    assert reply_of(txn.commit()) == "451 4.3.0 Error: local delivery failed; try again later"
    assert h.events == ["local.abort", "queue.abort"], "no half is committed"


# -- the queue's local delivery uses the same target -------------------------------------


def deliver(target: FakeTarget | DeliveryRouter, *rcpts: str) -> dict[str, Any]:
    deliverer = LocalDeliverer(Directory(), target)
    return result_of(deliverer.deliver("alice@example.org", list(rcpts), MESSAGE))  # type: ignore[no-any-return]


def test_queue_local_delivery_through_the_router_gets_return_path() -> None:
    h = Halves()
    h.local.hold = False
    outcomes = deliver(h.router, "bob@example.org", "carol@example.org", "fwd@example.org",
                       "nobody@example.org")
    assert {r: (o.state, o.status) for r, o in outcomes.items()} == {
        "bob@example.org": (DELIVERED, "2.0.0"), "carol@example.org": (DELIVERED, "2.0.0"),
        "fwd@example.org": (DELIVERED, "2.0.0"), "nobody@example.org": (FAILED, "5.1.1")}
    [local] = h.local.transactions
    assert local.mailboxes == [BOB, CAROL]  # one copy each, fwd's bob included once
    assert local.data == b"Return-Path: <alice@example.org>\n" + MESSAGE
    assert h.queue is not None and h.queue.transactions == []  # nothing queued again


def test_queue_local_delivery_commit_failure_stays_pending() -> None:
    target = FakeTarget(fail_commit=ReplyError(452, "4.3.1", "Insufficient system storage"))
    outcomes = deliver(target, "bob@example.org")
    assert outcomes["bob@example.org"].state == PENDING
    assert outcomes["bob@example.org"].status == "4.3.0"
    assert target.transactions[0].aborted
    assert target.transactions[0].envelope == DeliveryEnvelope(
        sender="alice@example.org", mailboxes=(BOB,))


# -- success reports of local copies (RFC 3461 NOTIFY=SUCCESS) ---------------------------


def with_reports(h: Halves) -> list[tuple[str, DeliveryEnvelope, list[Any], bytes]]:
    calls: list[tuple[str, DeliveryEnvelope, list[Any], bytes]] = []
    h.router.reporter = lambda *args: calls.append(args)  # type: ignore[arg-type,misc]
    return calls


def test_success_report_only_after_the_local_commit_and_only_when_asked() -> None:
    h = Halves(queue=False)
    calls = with_reports(h)
    asked = RecipientDsn("bob@example.org", ("SUCCESS",), "rfc822", "b@x", mailboxes=(BOB,))
    default = RecipientDsn("carol@example.org", (), "rfc822", "c@x", mailboxes=(CAROL,))
    envelope = DeliveryEnvelope(sender="alice@example.org", mailboxes=(BOB, CAROL),
                                envid="E1", dsn=(asked, default))
    txn = h.router.begin(envelope)
    txn.write(MESSAGE)
    d = txn.commit()
    assert calls == [], "nothing before the copies are durable"
    h.local.transactions[0].commit_deferred.callback(None)  # type: ignore[union-attr]
    assert result_of(d) is None
    # The head as the sessions wrote it: no Return-Path (the local copies' own).
    assert calls == [("mx.test", envelope, [(asked, "delivered")], MESSAGE)]


def test_no_report_for_a_failed_commit_or_a_null_sender() -> None:
    h = Halves(queue=False, fail_commit=ReplyError(452, "4.3.1", "Insufficient storage"))
    calls = with_reports(h)
    asked = RecipientDsn("bob@example.org", ("SUCCESS",), mailboxes=(BOB,))
    txn = h.router.begin(DeliveryEnvelope(sender="alice@example.org", mailboxes=(BOB,),
                                          dsn=(asked,)))
    txn.write(MESSAGE)
    assert reply_of(txn.commit()) == "452 4.3.1 Insufficient storage"
    assert calls == []
    h = Halves(queue=False)
    calls = with_reports(h)
    txn = h.router.begin(DeliveryEnvelope(sender="", mailboxes=(BOB,), dsn=(asked,)))
    txn.write(MESSAGE)
    d = txn.commit()
    h.local.transactions[0].commit_deferred.callback(None)  # type: ignore[union-attr]
    assert result_of(d) is None
    assert calls == [], "RFC 5321 6.1: never a report to <>"


def test_alias_to_several_places_reports_expanded() -> None:
    h = Halves()
    calls = with_reports(h)
    fwd = RecipientDsn("fwd@example.org", ("SUCCESS", "FAILURE"), mailboxes=(BOB,),
                       remote=("friend@remote.test",))
    txn = h.router.begin(DeliveryEnvelope(sender="alice@example.org", mailboxes=(BOB,),
                                          remote=("friend@remote.test",), dsn=(fwd,)))
    txn.write(MESSAGE)
    d = txn.commit()
    assert h.queue is not None
    [queued] = h.queue.transactions
    assert queued.request.dsn == (RecipientDsn(  # type: ignore[union-attr]
        "friend@remote.test", ("FAILURE",), "rfc822", "fwd@example.org"),)
    queued.commit_deferred.callback("Q1")  # type: ignore[union-attr]
    h.local.transactions[0].commit_deferred.callback(None)  # type: ignore[union-attr]
    assert result_of(d) == "Q1"
    [(_, _, reports, _)] = calls
    assert reports == [(fwd, "expanded")]


def test_a_failing_reporter_does_not_undo_the_delivery() -> None:
    h = Halves(queue=False)

    def broken(*args: Any) -> None:
        raise RuntimeError("no queue today")

    h.router.reporter = broken
    txn = h.router.begin(DeliveryEnvelope(sender="alice@example.org", mailboxes=(BOB,), dsn=(
        RecipientDsn("bob@example.org", ("SUCCESS",), mailboxes=(BOB,)),)))
    txn.write(MESSAGE)
    d = txn.commit()
    h.local.transactions[0].commit_deferred.callback(None)  # type: ignore[union-attr]
    assert result_of(d) is None
    assert h.events == ["local.commit"]


def test_alias_to_remote_addresses_only_reports_expanded_after_the_queue_commit() -> None:
    h = Halves(queue=True)
    calls = with_reports(h)
    team = RecipientDsn("team@example.org", ("SUCCESS",),
                        remote=("a@remote.test", "b@remote.test"))
    txn = h.router.begin(DeliveryEnvelope(sender="alice@example.org",
                                          remote=("a@remote.test", "b@remote.test"),
                                          dsn=(team,)))
    txn.write(MESSAGE)
    d = txn.commit()
    assert h.queue is not None
    [queued] = h.queue.transactions
    # NOTIFY=SUCCESS alone, SUCCESS taken away: the targets ask for nothing.
    assert queued.request.dsn == (  # type: ignore[union-attr]
        RecipientDsn("a@remote.test", ("NEVER",), "rfc822", "team@example.org"),
        RecipientDsn("b@remote.test", ("NEVER",), "rfc822", "team@example.org"))
    assert calls == []
    queued.commit_deferred.callback("Q1")  # type: ignore[union-attr]
    assert result_of(d) == "Q1"
    [(_, _, reports, head)] = calls
    assert reports == [(team, "expanded")] and head == MESSAGE


def test_one_remote_target_is_reported_by_the_queue_not_the_router() -> None:
    h = Halves(queue=True)
    calls = with_reports(h)
    one = RecipientDsn("friend@remote.test", ("SUCCESS",), remote=("friend@remote.test",))
    txn = h.router.begin(DeliveryEnvelope(sender="alice@example.org",
                                          remote=("friend@remote.test",), dsn=(one,)))
    txn.write(MESSAGE)
    d = txn.commit()
    assert h.queue is not None
    [queued] = h.queue.transactions
    assert queued.request.dsn == (  # type: ignore[union-attr]
        RecipientDsn("friend@remote.test", ("SUCCESS",)),)
    queued.commit_deferred.callback("Q1")  # type: ignore[union-attr]
    assert result_of(d) == "Q1" and calls == []
