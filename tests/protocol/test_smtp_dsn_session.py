"""DSN (RFC 3461) and REQUIRETLS (RFC 8689) in the SMTP session: what EHLO offers on
each listener, the replies to good and hostile parameters, and what the session hands
the router (DeliveryEnvelope) and the router the queue (OutboundEnvelope)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_submission_session import PLAIN_ALICE, Session

from mailserver.interfaces import DeliveryEnvelope, MailboxId, RecipientDsn
from mailserver.smtp.listener import MX_POLICY, SUBMISSION_POLICY, SUBMISSIONS_POLICY


def keywords(s: Session) -> list[str]:
    return [line[4:] for line in s.ehlo()[1:]]


def test_ehlo_offers_dsn_everywhere_and_requiretls_only_under_tls(tmp_path: Path) -> None:
    mx = Session(tmp_path / "mx", MX_POLICY)
    assert "DSN" in keywords(mx) and "REQUIRETLS" not in keywords(mx)
    sub = Session(tmp_path / "sub", SUBMISSION_POLICY)
    assert "DSN" in keywords(sub) and "REQUIRETLS" not in keywords(sub)
    tls = Session(tmp_path / "465", SUBMISSIONS_POLICY, tls_options=None)
    offered = keywords(tls)
    assert offered.index("DSN") < offered.index("REQUIRETLS")
    # After STARTTLS (port 25 and 587) the session is TLS-protected: offered then.
    mx.protocol.tls_active = True  # what do_STARTTLS sets after the handshake starts
    assert "REQUIRETLS" in keywords(mx)


def test_requiretls_without_tls_is_555_and_with_a_value_501(tmp_path: Path) -> None:
    mx = Session(tmp_path, MX_POLICY)
    mx.ehlo()
    assert mx.send(b"MAIL FROM:<x@remote.test> REQUIRETLS\r\n") == [
        "555 5.5.4 Unsupported parameter: REQUIRETLS (needs TLS)"]
    assert mx.send(b"MAIL FROM:<x@remote.test> REQUIRETLS=YES\r\n") == [
        "501 5.5.4 Syntax: REQUIRETLS takes no value"]
    mx.protocol.tls_active = True
    mx.ehlo()
    assert mx.send(b"MAIL FROM:<x@remote.test> REQUIRETLS=YES\r\n") == [
        "501 5.5.4 Syntax: REQUIRETLS takes no value"]
    assert mx.send(b"MAIL FROM:<x@remote.test> REQUIRETLS\r\n") == ["250 2.1.0 Ok"]


def test_helo_session_gets_no_dsn_parameters(tmp_path: Path) -> None:
    mx = Session(tmp_path, MX_POLICY)
    mx.send(b"HELO client.test\r\n")
    assert mx.send(b"MAIL FROM:<x@remote.test> RET=HDRS\r\n") == [
        "555 5.5.4 MAIL parameters need EHLO"]
    assert mx.send(b"MAIL FROM:<x@remote.test>\r\n") == ["250 2.1.0 Ok"]
    assert mx.send(b"RCPT TO:<bob@example.org> NOTIFY=NEVER\r\n") == [
        "555 5.5.4 RCPT parameters need EHLO"]


@pytest.mark.parametrize(("command", "reply"), [
    (b"MAIL FROM:<x@remote.test> RET=FULL RET=FULL", "501 5.5.4 Duplicate parameter: RET"),
    (b"MAIL FROM:<x@remote.test> RET=ALL", "501 5.5.4 Syntax: RET must be FULL or HDRS "
                                           "(RFC 3461)"),
    (b"MAIL FROM:<x@remote.test> ENVID=" + b"a" * 101,
     "501 5.5.4 Syntax: ENVID is longer than 100 characters (RFC 3461)"),
    (b"MAIL FROM:<x@remote.test> ENVID=a+0D+0Ab",
     "501 5.5.4 Syntax: ENVID holds characters outside printable US-ASCII (RFC 3461)"),
    (b"MAIL FROM:<x@remote.test> ENVID=a+2b", "501 5.5.4 Syntax: ENVID is not xtext "
                                              "(RFC 3461)"),
    (b"MAIL FROM:<x@remote.test> ENVID", "501 5.5.4 Syntax: ENVID needs a value (RFC 3461)"),
])
def test_hostile_mail_parameters(tmp_path: Path, command: bytes, reply: str) -> None:
    mx = Session(tmp_path, MX_POLICY)
    mx.ehlo()
    assert mx.send(command + b"\r\n") == [reply]
    assert mx.protocol.envelope is None


@pytest.mark.parametrize(("params", "reply"), [
    (b"NOTIFY=NEVER,SUCCESS", "501 5.5.4 Syntax: NOTIFY must be NEVER alone or SUCCESS, "
                              "DELAY, FAILURE once each (RFC 3461)"),
    (b"NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 Syntax: NOTIFY must be NEVER alone or SUCCESS, "
                                "DELAY, FAILURE once each (RFC 3461)"),
    (b"NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate parameter: NOTIFY"),
    (b"ORCPT=rfc822;a@b ORCPT=rfc822;a@b", "501 5.5.4 Duplicate parameter: ORCPT"),
    (b"ORCPT=rfc822;" + b"a" * 495 + b"@b.c",
     "501 5.5.4 Syntax: ORCPT needs addr-type;address of at most 500 characters (RFC 3461)"),
    (b"ORCPT=rfc822;bob+0A@example.org",
     "501 5.5.4 Syntax: ORCPT rfc822 address holds non-ASCII or spaces (RFC 3461)"),
    (b"ORCPT=rfc822;b\xc3\xb6b@example.org",
     "501 5.5.4 Syntax: ORCPT is not xtext (RFC 3461)"),
    (b"ORCPT=utf-8;b\\x{D800}b@example.org",
     "501 5.5.4 Syntax: ORCPT has an escape that is not a printable code point (RFC 3461)"),
    # RFC 6533 3: raw UTF-8 (unitext) only in an SMTPUTF8 transaction.
    (b"ORCPT=utf-8;b\xc3\xb6b@example.org",
     "501 5.5.4 Syntax: ORCPT with raw UTF-8 needs SMTPUTF8 (RFC 6533)"),
    (b"X-NOTIFY=NEVER", "555 5.5.4 Unsupported parameter: X-NOTIFY"),
])
def test_hostile_rcpt_parameters(tmp_path: Path, params: bytes, reply: str) -> None:
    mx = Session(tmp_path, MX_POLICY)
    mx.ehlo()
    assert mx.send(b"MAIL FROM:<x@remote.test>\r\n") == ["250 2.1.0 Ok"]
    assert mx.send(b"RCPT TO:<bob@example.org> " + params + b"\r\n") == [reply]
    assert mx.protocol.envelope is not None and mx.protocol.envelope.recipients == []


def test_dsn_parameters_reach_the_router_and_the_queue(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)
    s.ehlo()
    assert s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())[0].startswith("235")
    replies = s.send(
        b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ+2B314159 REQUIRETLS SMTPUTF8\r\n"
        b"RCPT TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.org\r\n"
        b"RCPT TO:<friend@remote.test> NOTIFY=NEVER ORCPT=utf-8;fr\xc3\xa9d@remote.test\r\n"
        b"RCPT TO:<other@remote.test>\r\n"
        b"RCPT TO:<fwd@example.org> NOTIFY=DELAY\r\n"
        b"DATA\r\nSubject: dsn\r\n\r\nbody\r\n.\r\n")
    assert replies[:6] == ["250 2.1.0 Ok"] + ["250 2.1.5 Ok"] * 4 + [
        "354 End data with <CR><LF>.<CR><LF>"]
    assert s.queue is not None
    [queued] = s.queue.copies
    env = queued.envelope
    assert (env.ret, env.envid, env.requiretls) == ("HDRS", "QQ+314159", True)
    assert env.recipients == ("friend@remote.test", "other@remote.test")
    # fwd@example.org goes to bob (local) and friend@remote.test, already a recipient
    # with its own NOTIFY: the first request for an address wins.
    assert env.dsn == (RecipientDsn("friend@remote.test", ("NEVER",), "utf-8",
                                    "fr\u00e9d@remote.test"),)


def test_alias_that_fans_out_passes_on_notify_without_success(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)
    s.ehlo()
    s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    s.send(b"MAIL FROM:<alice@example.org>\r\n"
           b"RCPT TO:<fwd@example.org> NOTIFY=SUCCESS,FAILURE\r\n"
           b"DATA\r\nSubject: dsn\r\n\r\nbody\r\n.\r\n")
    assert s.queue is not None
    [queued] = s.queue.copies
    # RFC 3461 5.2.7.3: the alias reports "expanded"; its targets no longer ask for
    # SUCCESS, and name the alias as the original recipient.
    assert queued.envelope.dsn == (RecipientDsn("friend@remote.test", ("FAILURE",), "rfc822",
                                                "fwd@example.org"),)
    [local] = s.target.copies
    assert local.mailboxes == [MailboxId("example.org", "bob")]


def test_tls_required_no_header_is_kept_as_it_came(tmp_path: Path) -> None:
    """RFC 8689 5: the relay reads "TLS-Required: No"; the session passes it on as is."""
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)
    s.ehlo()
    s.send(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    s.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<friend@remote.test>\r\n"
           b"DATA\r\nSubject: x\r\nTLS-Required: No\r\n\r\nbody\r\n.\r\n")
    assert s.queue is not None
    [queued] = s.queue.copies
    assert b"\nTLS-Required: No\n" in queued.data
    assert queued.envelope.requiretls is False


def test_postmaster_without_domain_is_reported_as_our_postmaster(tmp_path: Path) -> None:
    mx = Session(tmp_path, MX_POLICY)
    with mx.config.aliases_file.open("a") as f:
        f.write("postmaster@example.org: bob@example.org\n")
    seen: list[DeliveryEnvelope] = []
    router = mx.factory.target
    begin = router.begin
    router.begin = lambda envelope: (seen.append(envelope), begin(envelope))[1]  # type: ignore[method-assign]
    mx.ehlo()
    replies = mx.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<Postmaster> NOTIFY=SUCCESS\r\n"
                      b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    assert replies[:2] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    [local] = mx.target.copies
    assert local.mailboxes == [MailboxId("example.org", "bob")]
    [envelope] = seen
    assert envelope.dsn == (RecipientDsn("postmaster@example.org", ("SUCCESS",),
                                         mailboxes=(MailboxId("example.org", "bob"),)),)
