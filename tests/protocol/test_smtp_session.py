"""The SMTP session state machine over StringTransport: fast, and in full control of when
the delivery commit fires, which is how we show replies stay in order (twisted#8126)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeReactor, FakeTarget
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from mailserver.config import DomainsConfig, LimitsConfig, default_config
from mailserver.delivery.router import DeliveryRouter
from mailserver.errors import ReplyError
from mailserver.interfaces import IRecipientDirectory, MailboxId, Resolution
from mailserver.smtp.server import SMTPServerFactory, SMTPSession


@implementer(IRecipientDirectory)
class StaticDirectory:
    """Two users; the real directory has its own tests in tests/auth."""

    users = {"bob@example.org": MailboxId("example.org", "bob"),
             "carol@example.org": MailboxId("example.org", "carol")}

    def unavailable(self) -> str | None:
        return None

    def resolve(self, address: str) -> Resolution:
        box = self.users.get(address.lower())
        return Resolution(mailboxes=(box,)) if box else Resolution()

    def user_exists(self, address: str) -> bool:
        return address.lower() in self.users


class Session:
    def __init__(self, **limits: int) -> None:
        config = default_config()
        from dataclasses import replace
        config = replace(config, hostname="mx.test",
                         domains=DomainsConfig(local=("example.org",)),
                         limits=replace(LimitsConfig(), **limits), data_dir=Path("/nonexistent"))
        # Local delivery whose commits the test fires by hand (an injected slow disk),
        # behind the real router.
        self.target = FakeTarget("local")
        self.factory = SMTPServerFactory(
            config, DeliveryRouter(config, StaticDirectory(), self.target))
        self.protocol: SMTPSession = self.factory.buildProtocol(
            IPv4Address("TCP", "192.0.2.7", 4000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
        # TimeoutMixin schedules on this clock, never on the global reactor.
        self.clock = FakeReactor()
        self.protocol.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.protocol.makeConnection(self.transport)

    def replies(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def send(self, data: bytes) -> list[str]:
        self.protocol.dataReceived(data)
        return self.replies()


@pytest.fixture
def session() -> Session:
    s = Session()
    assert s.replies() == ["220 mx.test ESMTP mailserver"]
    return s


def test_pipelined_burst_waits_for_commit(session: Session) -> None:
    replies = session.send(
        b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        b"Subject: one\r\n\r\n1\r\n.\r\n"
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
        b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n")
    # Everything up to the first end-of-data is answered; the rest waits for the disk.
    assert replies[-3:] == ["250 2.1.0 Ok", "250 2.1.5 Ok",
                            "354 End data with <CR><LF>.<CR><LF>"]
    assert len(session.target.transactions) == 1
    first = session.target.transactions[0]
    assert first.commit_deferred is not None
    first.commit_deferred.callback(None)
    replies = session.replies()
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    assert replies[1:] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    second = session.target.transactions[1]
    assert second.mailboxes == [MailboxId("example.org", "carol")]
    assert second.data.endswith(b"Subject: two\n\n2\n")
    assert second.commit_deferred is not None
    second.commit_deferred.callback(None)
    replies = session.replies()
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    assert replies[1].startswith("221 2.0.0")
    assert session.transport.disconnecting


def test_commit_failure_is_451_with_store_reply(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\n")
    t = session.target.transactions[0]
    assert t.commit_deferred is not None
    t.commit_deferred.errback(ReplyError(452, "4.3.1", "Insufficient system storage"))
    assert session.replies() == ["452 4.3.1 Insufficient system storage"]
    assert t.aborted
    assert session.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_unexpected_commit_error_is_451(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\n")
    t = session.target.transactions[0]
    assert t.commit_deferred is not None
    t.commit_deferred.errback(RuntimeError("disk on fire"))
    assert session.replies() == ["451 4.3.0 Error: local delivery failed; try again later"]


def test_trace_headers_written_first(session: Session) -> None:
    session.send(b"HELO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bob@example.org>\r\n"
                 b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    data = session.target.transactions[0].data
    assert data.startswith(b"Return-Path: <a@x.test>\nReceived: from c.test ([192.0.2.7])\n"
                           b"\tby mx.test (mailserver) with SMTP id ")
    assert data.endswith(b"\n\tfor <bob@example.org>; " + data.split(b"; ", 1)[1].split(b"\n")[0]
                         + b"\nSubject: s\n\nbody\n")


def test_data_split_across_packets_byte_by_byte(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
    for byte in b"Subject: s\r\n\r\n..dot\r\n.\r\n":
        session.protocol.dataReceived(bytes([byte]))
    t = session.target.transactions[0]
    assert t.data.endswith(b"Subject: s\n\n.dot\n")
    assert t.commit_deferred is not None


def test_rset_mid_bdat_aborts(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n")
    assert session.send(b"BDAT 3\r\nabc") == ["250 2.0.0 3 octets received"]
    assert session.send(b"RSET\r\n") == ["250 2.0.0 Ok"]
    assert session.target.transactions[0].aborted
    assert session.send(b"BDAT 1 LAST\r\nx") == ["503 5.5.1 Error: need MAIL command"]


def test_data_after_bdat_refused(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n")
    session.send(b"BDAT 3\r\nabc")
    assert session.send(b"DATA\r\n") == ["503 5.5.1 Error: DATA after BDAT"]


def test_connection_lost_mid_data_aborts(session: Session) -> None:
    session.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\npartial")
    session.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert session.target.transactions[0].aborted


def test_mail_params_need_ehlo() -> None:
    s = Session()
    s.replies()
    s.send(b"HELO c\r\n")
    assert s.send(b"MAIL FROM:<> BODY=8BITMIME\r\n") == ["555 5.5.4 MAIL parameters need EHLO"]


def test_input_held_while_busy_is_bounded() -> None:
    s = Session()
    s.replies()
    s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\n")
    s.send(b"NOOP\r\n" * 100_000)  # 600 KB while the commit is pending
    assert s.transport.producerState == "paused"
    t = s.target.transactions[0]
    assert t.commit_deferred is not None
    t.commit_deferred.callback(None)
    assert s.transport.producerState == "producing"
    replies = s.replies()
    assert replies[0].startswith("250 2.0.0 Ok: queued")
    assert replies[1:] == ["250 2.0.0 Ok"] * 100_000


def test_idle_session_times_out_with_421() -> None:
    s = Session(command_timeout=60)
    s.replies()
    s.clock.advance(59)
    assert s.replies() == []
    s.send(b"NOOP\r\n")
    s.clock.advance(59)
    assert not s.transport.disconnecting, "activity resets the timer"
    s.clock.advance(2)
    assert s.replies() == ["421 4.4.2 mx.test Error: timeout exceeded"]
    assert s.transport.disconnecting


def test_no_timeout_while_our_disk_is_busy() -> None:
    s = Session(command_timeout=60)
    s.replies()
    s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\n")
    s.clock.advance(600)
    assert not s.transport.disconnecting
    t = s.target.transactions[0]
    assert t.commit_deferred is not None
    t.commit_deferred.callback(None)
    assert s.replies()[-1].startswith("250 2.0.0 Ok: queued")


def test_refused_line_does_not_stall_the_pipeline(session: Session) -> None:
    """Found by the fuzz test: after a refused line the rest of the packet waited for
    the next one to arrive."""
    assert session.send(b"\n.\nNOOP\r\n" + b"x" * 3000 + b"\r\nQUIT\r\n") == [
        "500 5.5.2 Syntax error: bare CR or LF in command",
        "500 5.5.2 Syntax error: bare CR or LF in command",
        "250 2.0.0 Ok",
        "500 5.5.2 Line too long",
        "221 2.0.0 mx.test closing connection",
    ]


def test_a_client_that_reads_no_replies_stops_being_served(session: Session) -> None:
    """Pipelined commands from a client that reads nothing: once the transport's write
    buffer is full (pauseProducing), no further command is handled, so our replies
    cannot pile up without bound; reading stops too once the input backs up."""
    assert session.transport.producer is session.protocol
    session.protocol.pauseProducing()
    assert session.send(b"NOOP\r\n" * 10) == []
    session.protocol.dataReceived(b"NOOP\r\n" * 50_000)  # 300 KB: past the input bound
    assert session.transport.producerState == "paused"
    session.protocol.resumeProducing()
    replies = session.replies()
    assert len(replies) == 50_010 and set(replies) == {"250 2.0.0 Ok"}
    assert session.transport.producerState == "producing"


def test_timeout_aborts_a_client_that_does_not_read(session: Session) -> None:
    session.protocol.pauseProducing()
    session.clock.advance(301)
    assert session.transport.disconnecting  # aborted: its buffered replies are dropped
    assert session.replies() == []


def test_timeout_then_a_close_that_never_drains_is_aborted(session: Session) -> None:
    session.clock.advance(301)
    assert session.replies() == ["421 4.4.2 mx.test Error: timeout exceeded"]
    aborted: list[bool] = []
    session.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    session.clock.advance(31)
    assert aborted == [True]
