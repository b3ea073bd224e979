"""Submission (RFC 6409) and AUTH (RFC 4954) in the SMTP session, over StringTransport.

The directory and the login portal are the real ones (users and aliases files in a temp
dir, the real PasswordChecker with a clock we advance and a thread pool we run by hand);
the local delivery and the outbound queue behind the real delivery router are in-memory
fakes (tests/fakes.py), so each test decides when a commit fires or fails and sees every
byte either copy got.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import Events, FakeReactor, FakeTarget
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.config import Config, config_from_dict
from mailserver.core.headers import HOP_LIMIT
from mailserver.core.throttle import LoginThrottle
from mailserver.delivery.router import DeliveryRouter
from mailserver.errors import ReplyError
from mailserver.interfaces import MailboxId, OutboundEnvelope, RecipientDsn
from mailserver.smtp.listener import MX_POLICY, SUBMISSION_POLICY, SUBMISSIONS_POLICY
from mailserver.smtp.server import SessionPolicy, SMTPServerFactory
from mailserver.smtp.submission import AUTH_FAILURE_LIMIT

USERS = "alice@example.org:{PLAIN}alicepw\nbob@example.org:{PLAIN}bobpw\n"
ALIASES = ("sales@example.org: alice@example.org, bob@example.org\n"
           "fwd@example.org: bob@example.org, friend@remote.test\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PLAIN_ALICE = b64(b"\0alice@example.org\0alicepw")


def make_config(tmp_path: Path, **auth: Any) -> Config:
    config = config_from_dict({"hostname": "mx.test", "data_dir": str(tmp_path),
                               "domains": {"local": ["example.org"]},
                               "auth": auth})
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.users_file.write_text(USERS)
    config.aliases_file.write_text(ALIASES)
    return config


class Session:
    def __init__(self, tmp_path: Path, policy: SessionPolicy, *, queue: bool = True,
                 tls_options: object | None = object(), reactor: FakeReactor | None = None,
                 throttle: LoginThrottle | None = None, **auth: Any) -> None:
        self.config = make_config(tmp_path, **auth)
        self.reactor = reactor or FakeReactor()
        directory = RecipientDirectory(self.config)
        self.events = Events()
        self.target = FakeTarget("local", self.events)
        self.queue = FakeTarget("queue", self.events) if queue else None
        self.factory = SMTPServerFactory(
            self.config, DeliveryRouter(self.config, directory, self.target, self.queue),
            tls_options=tls_options,  # type: ignore[arg-type]
            policy=policy, portal=make_portal(self.config, directory, reactor=self.reactor,
                                              threadpool=self.reactor.pool),  # type: ignore[arg-type]
            senders=directory,
            login_throttle=throttle or LoginThrottle(clock=self.reactor))
        peer = IPv4Address("TCP", "192.0.2.7", 4000)
        self.protocol = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.callLater = self.reactor.callLater  # type: ignore[method-assign]
        self.protocol.makeConnection(self.transport)
        assert self.replies() == ["220 mx.test ESMTP mailserver"]

    def replies(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return out.split("\r\n")[:-1]

    def send(self, data: bytes) -> list[str]:
        self.protocol.dataReceived(data)
        return self.replies()

    def ehlo(self) -> list[str]:
        return self.send(b"EHLO client.test\r\n")

    def login(self) -> None:
        self.ehlo()
        assert self.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
            "235 2.7.0 Authentication successful"]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


@pytest.fixture
def s465(tmp_path: Path) -> Session:
    """Implicit TLS (465): TLS is active from the first byte."""
    return Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)


# -- what EHLO offers, and AUTH before TLS -------------------------------------------------


def test_587_before_tls_offers_starttls_not_auth(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    keywords = [line[4:] for line in s.ehlo()[1:]]
    assert keywords == ["PIPELINING", "SIZE 36700160", "8BITMIME", "SMTPUTF8",
                        "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"]
    # RFC 4954 4 / 6: refused before TLS, whether or not the client saw it offered.
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "538 5.7.11 Encryption required for requested authentication mechanism"]
    assert s.send(b"MAIL FROM:<alice@example.org>\r\n") == [
        "530 5.7.0 Authentication required"]
    assert s.target.copies == [] and s.queue is not None and s.queue.copies == []


def test_plaintext_auth_when_the_operator_allows_it(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY, allow_plaintext_without_tls=True)
    assert s.ehlo()[-2:] == ["250-STARTTLS", "250 AUTH PLAIN LOGIN"]
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "235 2.7.0 Authentication successful"]


def test_465_offers_auth_and_no_starttls(s465: Session) -> None:
    lines = s465.ehlo()
    assert lines[-1] == "250 AUTH PLAIN LOGIN"
    assert "250-STARTTLS" not in lines
    assert s465.send(b"STARTTLS\r\n") == ["503 5.5.1 TLS already active"]


def test_mx_refuses_auth_and_never_offers_it(tmp_path: Path) -> None:
    s = Session(tmp_path, MX_POLICY)
    assert not any("AUTH" in line for line in s.ehlo())
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "503 5.5.1 AUTH not available on this port; use submission"]


# -- the SASL exchanges -------------------------------------------------------------------


def test_plain_with_empty_challenge(s465: Session) -> None:
    s465.ehlo()
    # RFC 4954 4: "334 " followed by the (empty) base64 challenge.
    assert s465.transport.value() == b""
    s465.protocol.dataReceived(b"AUTH PLAIN\r\n")
    assert s465.transport.value() == b"334 \r\n"
    s465.transport.clear()
    assert s465.send(PLAIN_ALICE.encode() + b"\r\n") == ["235 2.7.0 Authentication successful"]
    assert s465.protocol.user == "alice@example.org"


def test_login_mechanism(s465: Session) -> None:
    s465.ehlo()
    assert s465.send(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert s465.send(b64(b"alice").encode() + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert s465.send(b64(b"alicepw").encode() + b"\r\n") == [
        "235 2.7.0 Authentication successful"]
    assert s465.protocol.user == "alice@example.org"


def test_login_with_initial_response(s465: Session) -> None:
    s465.ehlo()
    assert s465.send(f"AUTH LOGIN {b64(b'alice@example.org')}\r\n".encode()) == [
        "334 UGFzc3dvcmQ6"]
    assert s465.send(b64(b"alicepw").encode() + b"\r\n")[0].startswith("235 2.7.0")


@pytest.mark.parametrize(("exchange", "reply"), [
    ([b"AUTH PLAIN", b"*"], "501 5.0.0 Authentication cancelled"),
    ([b"AUTH LOGIN", b"*"], "501 5.0.0 Authentication cancelled"),
    ([b"AUTH LOGIN", b64(b"alice").encode(), b"*"], "501 5.0.0 Authentication cancelled"),
    ([b"AUTH PLAIN", b"!!notbase64"], "501 5.5.2 Cannot decode response: invalid base64"),
    ([b"AUTH PLAIN ####"], "501 5.5.2 Cannot decode response: invalid base64"),
    ([b"AUTH PLAIN " + b64(b"alice@example.org alicepw").encode()],
     "501 5.5.2 Cannot decode response: PLAIN wants authzid NUL authcid NUL password"),
    ([b"AUTH PLAIN " + b64(b"bob@example.org\0alice@example.org\0alicepw").encode()],
     "501 5.5.2 Cannot decode response: authorization identity differs from "
     "authentication identity"),
    ([b"AUTH PLAIN " + b64(b"\0" + b"a" * 300 + b"\0pw").encode()],
     "501 5.5.2 Cannot decode response: PLAIN fields empty or too long"),
    ([b"AUTH LOGIN", b"="], "501 5.5.2 Cannot decode response: empty user name"),
    ([b"AUTH CRAM-MD5"], "504 5.5.4 Unrecognized authentication type"),
    ([b"AUTH"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
])
def test_malformed_sasl(s465: Session, exchange: list[bytes], reply: str) -> None:
    s465.ehlo()
    for line in exchange[:-1]:
        assert s465.send(line + b"\r\n")[0].startswith("334")
    assert s465.send(exchange[-1] + b"\r\n") == [reply]
    assert s465.protocol.user is None
    # The exchange is over: the next line is a command again, and AUTH still works.
    assert s465.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert s465.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())[0].startswith("235")


def test_overlong_sasl_response_ends_the_exchange(s465: Session) -> None:
    s465.ehlo()
    s465.send(b"AUTH PLAIN\r\n")
    assert s465.send(b"A" * (1024 * 1024) + b"\r\n") == ["500 5.5.2 Line too long"]
    assert s465.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert s465.protocol.user is None


def test_auth_twice_and_during_a_transaction(tmp_path: Path) -> None:
    s = Session(tmp_path / "a", SUBMISSIONS_POLICY, tls_options=None)
    s.login()
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "503 5.5.1 Error: already authenticated"]
    # A listener that offers AUTH without requiring it shows the transaction rule.
    optional = replace(SUBMISSIONS_POLICY, require_auth=False, check_sender=False)
    s = Session(tmp_path / "b", optional, tls_options=None)
    s.ehlo()
    s.send(b"MAIL FROM:<x@example.org>\r\n")
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "503 5.5.1 Error: AUTH not permitted during a mail transaction"]


def test_auth_needs_ehlo(s465: Session) -> None:
    assert s465.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "503 5.5.1 Error: send EHLO first"]


def test_wrong_passwords_then_disconnect(s465: Session) -> None:
    s465.ehlo()
    wrong = b64(b"\0alice@example.org\0guess").encode()
    for _attempt in range(AUTH_FAILURE_LIMIT):
        # The checker answers a failure only after its delay: nothing before that.
        assert s465.send(b"AUTH PLAIN " + wrong + b"\r\n") == []
        s465.reactor.advance(1)
        replies = s465.replies()
        assert replies[0] == "535 5.7.8 Authentication credentials invalid"
    assert replies[1:] == ["421 4.7.0 mx.test Error: too many failed authentications"]
    assert s465.closed
    assert s465.protocol.errors == AUTH_FAILURE_LIMIT


def test_pipelined_commands_wait_for_the_login(s465: Session) -> None:
    """RFC 2920 / RFC 4954: MAIL pipelined after AUTH is read only once AUTH is decided."""
    s465.reactor.pool.hold = True  # the password hash takes its time
    s465.ehlo()
    replies = s465.send(f"AUTH PLAIN {PLAIN_ALICE}\r\nMAIL FROM:<alice@example.org>\r\n"
                        "RCPT TO:<bob@example.org>\r\n".encode())
    assert replies == []
    s465.reactor.pool.run()
    assert s465.replies() == ["235 2.7.0 Authentication successful", "250 2.1.0 Ok",
                              "250 2.1.5 Ok"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("user", [b"alice@example.org", b"nobody@example.org"])
def test_over_long_password_is_a_wrong_password_and_is_not_hashed(
        s465: Session, monkeypatch: pytest.MonkeyPatch, mechanism: str, user: bytes) -> None:
    """A 1025-octet password (the SMTP line allows ~1500) gets the reply and the delay of
    any wrong password, and costs no hashing (SHA-crypt's cost is quadratic in it)."""
    from mailserver.auth import checker as checker_module

    hashed: list[object] = []
    monkeypatch.setattr(checker_module, "verify_password",
                        lambda p, s: hashed.append(p) or False)
    monkeypatch.setattr(checker_module, "dummy_verify", lambda p: hashed.append(p) or False)
    s465.ehlo()
    password = b"p" * 1025
    if mechanism == "PLAIN":
        response = b64(b"\0" + user + b"\0" + password).encode()
        assert s465.send(b"AUTH PLAIN " + response + b"\r\n") == []
    else:
        assert s465.send(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
        assert s465.send(b64(user).encode() + b"\r\n") == ["334 UGFzc3dvcmQ6"]
        assert s465.send(b64(password).encode() + b"\r\n") == []
    s465.reactor.advance(0.74)
    assert s465.replies() == []
    s465.reactor.advance(0.02)
    assert s465.replies() == ["535 5.7.8 Authentication credentials invalid"]
    assert hashed == [] and s465.protocol.user is None


def test_password_of_300_octets_is_checked(tmp_path: Path) -> None:
    """Over RFC 4616's 255 but under our 1024: verified, not refused as malformed."""
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)
    s.config.users_file.write_text("carol@example.org:{PLAIN}" + "c" * 300 + "\n")
    s.ehlo()
    response = b64(b"\0carol@example.org\0" + b"c" * 300).encode()
    assert s.send(b"AUTH PLAIN " + response + b"\r\n") == [
        "235 2.7.0 Authentication successful"]


def test_pipelined_after_a_failed_login_are_refused(s465: Session) -> None:
    s465.ehlo()
    wrong = b64(b"\0alice@example.org\0guess")
    s465.send(f"AUTH PLAIN {wrong}\r\nMAIL FROM:<alice@example.org>\r\n".encode())
    s465.reactor.advance(1)
    assert s465.replies() == ["535 5.7.8 Authentication credentials invalid",
                              "530 5.7.0 Authentication required"]


# -- RFC 6409: senders, headers -----------------------------------------------------------


@pytest.mark.parametrize("sender", ["alice@example.org", "ALICE@Example.Org",
                                    "alice+lists@example.org", "sales@example.org"])
def test_own_and_alias_senders_accepted(s465: Session, sender: str) -> None:
    s465.login()
    assert s465.send(f"MAIL FROM:<{sender}>\r\n".encode()) == ["250 2.1.0 Ok"]


@pytest.mark.parametrize("sender", ["bob@example.org", "nobody@example.org",
                                    "alice@evil.test", "fwd@example.org"])
def test_forged_senders_refused(s465: Session, sender: str) -> None:
    s465.login()
    assert s465.send(f"MAIL FROM:<{sender}>\r\n".encode()) == [
        f"553 5.7.1 <{sender}>: Sender address rejected: not owned by user "
        "alice@example.org"]


def test_null_sender_refused_on_submission(s465: Session) -> None:
    s465.login()
    assert s465.send(b"MAIL FROM:<>\r\n") == [
        "553 5.7.1 <>: Sender address rejected: not owned by user alice@example.org"]


def deliver(s: Session, message: bytes, rcpts: Sequence[str] = ("bob@example.org",),
            sender: str = "alice@example.org") -> list[str]:
    lines = f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
    return s.send(lines.encode() + b"DATA\r\n" + message + b".\r\n")


def test_message_id_and_date_added_when_missing(s465: Session) -> None:
    s465.login()
    deliver(s465, b"Subject: hi\r\n\r\nbody\r\n")
    copy = s465.target.copies[0]
    assert copy.commit_deferred is not None
    copy.commit_deferred.callback(None)
    assert s465.replies()[0].startswith("250 2.0.0 Ok: queued as ")
    head, body = copy.data.split(b"\n\n", 1)
    fields = head.split(b"\n")
    assert fields[0] == b"Return-Path: <alice@example.org>"
    assert b"with ESMTPSA id " in fields[2]
    assert b"alice" not in b"\n".join(fields[1:4]), "the login name is not published"
    assert fields[-3] == b"Subject: hi"
    assert fields[-2].startswith(b"Message-ID: <") and fields[-2].endswith(b"@mx.test>")
    assert fields[-1].startswith(b"Date: ")
    assert body == b"body\n"


def test_existing_message_id_and_date_kept(s465: Session) -> None:
    s465.login()
    message = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <x@y>\r\n\r\nb\r\n"
    deliver(s465, message)
    data = s465.target.copies[0].data
    assert data.endswith(message.replace(b"\r\n", b"\n"))
    assert data.count(b"Date:") == 1 and data.lower().count(b"message-id:") == 1


def test_mx_adds_nothing(tmp_path: Path) -> None:
    s = Session(tmp_path, MX_POLICY)
    s.ehlo()
    deliver(s, b"Subject: hi\r\n\r\nbody\r\n", sender="someone@remote.test")
    data = s.target.copies[0].data
    assert b"Message-ID" not in data and b"\nDate:" not in data
    assert b"with ESMTP id" in data


@pytest.mark.parametrize(("hops", "accepted"), [(HOP_LIMIT, True), (HOP_LIMIT + 1, False)])
def test_hop_count(tmp_path: Path, hops: int, accepted: bool) -> None:
    """RFC 5321 6.3: too many Received fields is a loop; refused after the data."""
    s = Session(tmp_path, MX_POLICY)
    s.ehlo()
    received = b"Received: from a.test by b.test;\r\n Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    replies = deliver(s, received * hops + b"Subject: loop\r\n\r\nx\r\n",
                      sender="someone@remote.test")
    copy = s.target.copies[0]
    if accepted:
        assert copy.commit_deferred is not None and not copy.aborted
    else:
        assert replies[-1] == "554 5.4.6 Error: too many hops (mail loop?)"
        assert copy.commit_deferred is None and copy.aborted


# -- local and remote recipients in one transaction ----------------------------------------


def test_remote_and_local_recipients_commit_in_order(s465: Session) -> None:
    s465.login()
    replies = deliver(s465, b"Subject: both\r\n\r\nbody\r\n",
                      rcpts=("bob@example.org", "Friend@Remote.Test", "fwd@example.org"))
    assert replies[:4] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"]
    assert s465.queue is not None
    [local], [queued] = s465.target.copies, s465.queue.copies
    assert queued.envelope == OutboundEnvelope(
        sender="alice@example.org", recipients=("Friend@remote.test", "friend@remote.test"),
        submitter="alice@example.org",
        # RFC 3461 5.2.7: the forwarded copy names the alias it came through as ORCPT.
        dsn=(RecipientDsn("friend@remote.test", orcpt_type="rfc822",
                          orcpt="fwd@example.org"),))
    assert local.mailboxes == [MailboxId("example.org", "bob")]
    # The same bytes; only the local copy starts with Return-Path (RFC 5321 4.4).
    assert local.data == b"Return-Path: <alice@example.org>\n" + queued.data
    assert queued.data.startswith(b"Received: ")
    assert s465.events == ["queue.commit"]
    assert queued.commit_deferred is not None
    queued.commit_deferred.callback("Q123")
    assert s465.events == ["queue.commit", "local.commit"]
    assert s465.replies() == []  # no 250 before the local copies are durable
    assert local.commit_deferred is not None
    local.commit_deferred.callback(None)
    assert s465.events == ["queue.commit", "local.commit", "queue.release"]
    assert s465.replies() == ["250 2.0.0 Ok: queued as Q123"]


def test_local_failure_takes_back_the_queued_copy(s465: Session) -> None:
    s465.login()
    deliver(s465, b"Subject: x\r\n\r\n", rcpts=("bob@example.org", "x@remote.test"))
    assert s465.queue is not None
    [local], [queued] = s465.target.copies, s465.queue.copies
    assert queued.commit_deferred is not None
    queued.commit_deferred.callback("Q1")
    assert local.commit_deferred is not None
    local.commit_deferred.errback(ReplyError(452, "4.3.1", "Error: disk full"))
    assert s465.replies() == ["452 4.3.1 Error: disk full"]
    assert queued.state == "aborted" and "queue.release" not in s465.events


def test_queue_failure_takes_back_the_local_copy(s465: Session) -> None:
    s465.login()
    deliver(s465, b"Subject: x\r\n\r\n", rcpts=("bob@example.org", "x@remote.test"))
    assert s465.queue is not None
    [local], [queued] = s465.target.copies, s465.queue.copies
    assert queued.commit_deferred is not None
    queued.commit_deferred.errback(ReplyError(451, "4.3.0", "Error: queue write failed"))
    assert s465.replies() == ["451 4.3.0 Error: queue write failed"]
    assert local.aborted and local.commit_deferred is None


def test_remote_only_message(s465: Session) -> None:
    s465.login()
    deliver(s465, b"Subject: x\r\n\r\n", rcpts=("x@remote.test",))
    assert s465.target.copies == []
    assert s465.queue is not None
    [queued] = s465.queue.copies
    assert queued.commit_deferred is not None
    queued.commit_deferred.callback("Q9")
    assert s465.replies() == ["250 2.0.0 Ok: queued as Q9"]
    assert queued.state == "released"


def test_without_a_queue_remote_recipients_wait(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None, queue=False)
    s.login()
    s.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert s.send(b"RCPT TO:<x@remote.test>\r\n") == [
        "451 4.3.5 Error: relaying not available yet; try later"]


def test_unknown_local_user_refused_on_submission(s465: Session) -> None:
    s465.login()
    s465.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert s465.send(b"RCPT TO:<nobody@example.org>\r\n") == [
        "550 5.1.1 Error: user unknown"]


def test_mx_never_relays_but_forwards_with_the_original_sender(tmp_path: Path) -> None:
    s = Session(tmp_path, MX_POLICY)
    s.ehlo()
    s.send(b"MAIL FROM:<someone@remote.test>\r\n")
    assert s.send(b"RCPT TO:<x@remote.test>\r\n") == ["550 5.7.1 Error: relay access denied"]
    assert s.send(b"RCPT TO:<fwd@example.org>\r\n") == ["250 2.1.5 Ok"]
    s.send(b"DATA\r\nSubject: fwd\r\n\r\nbody\r\n.\r\n")
    assert s.queue is not None
    [queued] = s.queue.copies
    assert queued.envelope.sender == "someone@remote.test"
    assert queued.envelope.recipients == ("friend@remote.test",)
    assert queued.envelope.submitter == ""
    assert b"Return-Path" not in queued.data


def test_bdat_message_gets_the_same_treatment(s465: Session) -> None:
    """RFC 3030 chunks: headers split across chunks, fields added at the header's end."""
    s465.login()
    s465.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n")
    assert s465.send(b"BDAT 9\r\nSubject: ") == ["250 2.0.0 9 octets received"]
    assert s465.send(b"BDAT 13 LAST\r\nchunks\r\n\r\nb\r\n") == []
    copy = s465.target.copies[0]
    head, body = copy.data.split(b"\n\n", 1)
    assert head.split(b"\n")[-3] == b"Subject: chunks"
    assert head.split(b"\n")[-2].startswith(b"Message-ID: <")
    assert body == b"b\n"


def test_mail_auth_parameter_accepted(s465: Session) -> None:
    """RFC 4954 5: a server offering AUTH must accept MAIL's AUTH= parameter."""
    s465.login()
    assert s465.send(b"MAIL FROM:<alice@example.org> AUTH=<>\r\n") == ["250 2.1.0 Ok"]
    s465.send(b"RSET\r\n")
    assert s465.send(b"MAIL FROM:<alice@example.org> AUTH=alice+2Bx@example.org\r\n") == [
        "250 2.1.0 Ok"]


def test_failures_across_connections_block_the_address(tmp_path: Path) -> None:
    """A guesser who reconnects after each 421 gets no more password checks."""
    reactor = FakeReactor()
    throttle = LoginThrottle(limit=4, window=600, clock=reactor)
    wrong = b"AUTH PLAIN " + b64(b"\0alice@example.org\0guess").encode() + b"\r\n"

    def connect() -> Session:
        s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None, reactor=reactor,
                    throttle=throttle)
        s.ehlo()
        return s

    first = connect()
    for _ in range(AUTH_FAILURE_LIMIT):
        first.send(wrong)
        reactor.advance(1)
    assert first.closed
    second = connect()
    second.send(wrong)
    reactor.advance(1)
    assert second.replies() == ["535 5.7.8 Authentication credentials invalid"]
    # Now blocked: even the right password is not checked.
    assert second.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "421 4.7.0 mx.test Error: too many failed authentications from your address; "
        "try again later"]
    assert second.closed
    third = connect()
    assert third.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())[0].startswith("421 4.7.0")
    reactor.advance(600)  # the failures age out
    fourth = connect()
    assert fourth.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode()) == [
        "235 2.7.0 Authentication successful"]


def test_throttle_memory_is_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, max_clients=100, clock=clock)
    for i in range(1000):
        throttle.failed(f"192.0.2.{i}")
    assert len(throttle._failures) == 100
    for _ in range(50):
        throttle.failed("198.51.100.1")
    assert len(throttle._failures["198.51.100.1"]) == 3
    assert throttle.blocked("198.51.100.1") and not throttle.blocked("192.0.2.1")
    clock.advance(61)
    assert not throttle.blocked("198.51.100.1")
