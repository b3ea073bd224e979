"""The held transaction around the delivery router's: what reaches the router's local
and queue halves, and in which order (no DNS: the checker is a stub)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from mailserver.address import Address
from mailserver.delivery.router import RoutedTransaction, return_path_header
from mailserver.errors import ReplyError
from mailserver.interfaces import IHeldTransaction, IMessageHook, MailboxId
from mailserver.senderauth.transaction import InboundHook, SigningHook

BOB = MailboxId("example.org", "bob")


class FakeLocal:
    """An ILocalTransaction (or a Junk one) that records what it is given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = b""
        self.state = "open"

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self) -> Deferred[None]:
        self.state = "committed"
        return defer.succeed(None)

    def abort(self) -> None:
        if self.state == "open":
            self.state = "aborted"


class FakeJunk:
    def __init__(self) -> None:
        self.begun: list[FakeLocal] = []

    def begin(self, mailboxes: Any) -> FakeLocal:
        self.begun.append(FakeLocal("junk"))
        return self.begun[-1]


@dataclass
class FakeVerdict:
    action: str
    header: bytes = b"Authentication-Results: mx.test.example; dmarc=fail\n"
    message: bytes = b""
    reply: Any = None
    dmarc: Any = None
    iprev_name: str = ""
    summary: str = "dmarc=fail"


@dataclass
class FakeChecker:
    action: str = "junk"
    authserv_id: str = "mx.test.example"
    calls: list[bytes] = field(default_factory=list)

    def check_all(self, message: bytes, *client: str) -> Deferred[FakeVerdict]:
        self.calls.append(message)
        return defer.succeed(FakeVerdict(self.action, message=message))


@dataclass
class FakeEnvelope:
    recipients: list[Address]


@dataclass
class FakeSession:
    session_id: str = "smtp-1"
    peer_ip: str = "192.0.2.7"
    helo: str | None = "client.test"
    envelope: FakeEnvelope = field(
        default_factory=lambda: FakeEnvelope([Address("bob", "example.org")]))


def begun(local: FakeLocal, sender: str = "x@soft.test") -> RoutedTransaction:
    """A RoutedTransaction as DeliveryRouter.begin leaves it: Return-Path written."""
    transaction = RoutedTransaction(local, None)  # type: ignore[arg-type]
    transaction.write_local(return_path_header(sender))
    return transaction


def test_the_hooks_provide_the_interfaces() -> None:
    hook = InboundHook(FakeChecker(), FakeJunk())  # type: ignore[arg-type]
    assert IMessageHook.providedBy(hook)
    held = hook.wrap(begun(FakeLocal("inbox")), FakeSession(), "x@soft.test", [BOB])
    assert IHeldTransaction.providedBy(held)
    assert IMessageHook.providedBy(SigningHook(None))  # type: ignore[arg-type]


def test_quarantine_writes_return_path_into_the_junk_copy() -> None:
    """The router wrote Return-Path into the inbox copy at begin; the Junk copy that
    replaces it must start with it too (RFC 5321 4.4), and the inbox copy is gone."""
    junk = FakeJunk()
    hook = InboundHook(FakeChecker("junk"), junk)  # type: ignore[arg-type]
    inbox = FakeLocal("inbox")
    held = hook.wrap(begun(inbox), FakeSession(), "x@soft.test", [BOB])
    assert held is not None
    held.write(b"Received: from client.test ([192.0.2.7])\n")
    held.hold()
    held.write(b"Subject: hi\n\nbody\n")
    assert inbox.data == b"Return-Path: <x@soft.test>\n"  # the content is held
    result: list[Any] = []
    held.commit().addBoth(result.append)
    assert result == [None]
    assert inbox.state == "aborted"
    assert junk.begun[0].state == "committed"
    assert junk.begun[0].data == (
        b"Return-Path: <x@soft.test>\nReceived: from client.test ([192.0.2.7])\n"
        b"Authentication-Results: mx.test.example; dmarc=fail\nSubject: hi\n\nbody\n")


def test_inbox_copy_keeps_the_routers_return_path_first() -> None:
    hook = InboundHook(FakeChecker("accept"), FakeJunk())  # type: ignore[arg-type]
    inbox = FakeLocal("inbox")
    held = hook.wrap(begun(inbox, ""), FakeSession(), "", [BOB])
    assert held is not None
    held.write(b"Received: x\n")
    held.hold()
    held.write(b"\nbody\n")
    held.commit()
    assert inbox.state == "committed"
    assert inbox.data == (b"Return-Path: <>\nReceived: x\n"
                          b"Authentication-Results: mx.test.example; dmarc=fail\n\nbody\n")


def test_a_delivery_the_router_could_not_begin_is_not_checked() -> None:
    """No DNS work for a message that cannot be delivered anyway: the router's reply
    (here: no relay queue) is what the client gets."""
    checker = FakeChecker("accept")
    hook = InboundHook(checker, FakeJunk())  # type: ignore[arg-type]
    failed = RoutedTransaction(None, None, failed=ReplyError(
        451, "4.3.5", "Error: relaying not available yet; try later"))
    held = hook.wrap(failed, FakeSession(), "x@soft.test", [BOB])
    assert held is not None
    held.hold()
    held.write(b"\nbody\n")
    errors: list[Any] = []
    held.commit().addErrback(errors.append)
    assert checker.calls == []
    assert errors[0].value.reply.code == 451
    assert errors[0].value.reply.enhanced == "4.3.5"


def test_trusted_client_is_not_wrapped() -> None:
    hook = InboundHook(FakeChecker(), FakeJunk(), ("192.0.2.0/24",))  # type: ignore[arg-type]
    assert hook.wrap(begun(FakeLocal("inbox")), FakeSession(), "x@soft.test", [BOB]) is None


def test_inbound_hook_refuses_another_transaction_type() -> None:
    """The quarantine needs the router's local half: anything else is a wiring bug."""
    hook = InboundHook(FakeChecker(), FakeJunk())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RoutedTransaction"):
        hook.wrap(FakeLocal("not a router transaction"),  # type: ignore[arg-type]
                  FakeSession(), "x@soft.test", [BOB])


class SubmissionSigningTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_submission_makes_8bit_parts_7bit_before_signing(self) -> Any:
        """Our users' 8-bit mail is signed as 7-bit (mime7bit.py), so a relay converting
        for a peer without 8BITMIME (RFC 6152 3) cannot break the body hash; the
        signature covers what is stored and sent, and 8-bit headers stay as they were."""
        import email
        import email.policy

        signed: list[bytes] = []

        class Signer:
            def sign(self, message: bytes, domain: str | None = None) -> Deferred[bytes]:
                signed.append(message)
                return defer.succeed(b"DKIM-Signature: v=1; stub\n")

        for body, seven_bit in [
            (b"Subject: t\nContent-Type: text/plain; charset=utf-8\n\nGr\xc3\xbc\xc3\x9fe\n",
             True),
            (b"Subject: Gr\xc3\xbc\xc3\x9fe\n\n\xc3\xa9\n", False),  # SMTPUTF8 headers
        ]:
            signed.clear()
            inbox = FakeLocal("inbox")
            held = SigningHook(Signer()).wrap(  # type: ignore[arg-type]
                begun(inbox), FakeSession(), "x@soft.test", [BOB])
            held.hold()
            held.write(body)
            yield held.commit()
            self.assertEqual(inbox.state, "committed")
            stored = inbox.data.split(b"DKIM-Signature: v=1; stub\n", 1)[1]
            self.assertEqual(signed, [stored])
            self.assertIs(stored.isascii(), seven_bit)
            if seven_bit:
                text = email.message_from_bytes(stored, policy=email.policy.default)
                self.assertEqual(text.get_content(), "Grüße\n")
            else:
                self.assertEqual(stored, body)
