"""Submission checks the From header, not only the envelope sender (RFC 6409 6.1, 8).

Logged in as alice, `MAIL FROM:<alice@...>` with `From: Bob <bob@...>` used to be
delivered: any user could show a colleague as the author. Every From address must now
be one the user may send as (directory.may_send_as: own address, +tag, an alias that
reaches the user), or the message gets 550 5.7.1 at the end of data and nothing is
stored. Users and aliases are those of test_submission_session: alice, bob;
sales@ -> alice, bob; fwd@ -> bob, friend@remote.test.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from test_submission_session import Session

from mailserver.config import SubmissionConfig
from mailserver.core.headers import MAX_HEADER_SECTION
from mailserver.smtp.listener import MX_POLICY, SUBMISSION_POLICY, SUBMISSIONS_POLICY
from mailserver.smtp.server import SessionPolicy

NOT_OWNED = ("550 5.7.1 <bob@example.org>: From header address rejected: not owned by "
             "user alice@example.org")
UNPARSEABLE = "550 5.7.1 Error: From header cannot be parsed"


def logged_in(tmp_path: Path, policy: SessionPolicy = SUBMISSIONS_POLICY,
              check: bool = True) -> Session:
    s = Session(tmp_path, policy, tls_options=None, allow_plaintext_without_tls=True)
    if not check:
        config = replace(s.config, submission=SubmissionConfig(check_from_header=False))
        s.config = s.factory.config = s.protocol.config = config
    if policy.offer_auth:
        s.login()
    else:
        s.ehlo()
    return s


def send(s: Session, head: bytes, *, sender: bytes = b"alice@example.org",
         bdat: bool = False) -> list[str]:
    """One message with header section `head` (CRLF lines) and a one-line body; the
    replies after RCPT."""
    message = head + b"Subject: x\r\n\r\nbody\r\n"
    # BODY=8BITMIME (RFC 6152) for 8-bit headers, so the octets are not the reason.
    params = b"" if head.isascii() else b" BODY=8BITMIME"
    envelope = b"MAIL FROM:<" + sender + b">" + params + b"\r\nRCPT TO:<bob@example.org>\r\n"
    if bdat:
        replies = s.send(envelope + f"BDAT {len(message)} LAST\r\n".encode() + message)
        return replies[2:]
    replies = s.send(envelope + b"DATA\r\n" + message + b".\r\n")
    assert replies[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok",
                           "354 End data with <CR><LF>.<CR><LF>"], replies
    return replies[3:]


def assert_stored(s: Session, replies: list[str], head: bytes) -> None:
    assert replies == []  # the 250 waits for the commit
    copy = s.target.copies[-1]
    assert copy.commit_deferred is not None and not copy.aborted
    copy.commit_deferred.callback(None)
    assert s.replies()[0].startswith("250 2.0.0 Ok: queued as ")
    assert head.replace(b"\r\n", b"\n") in copy.data


def assert_refused(s: Session, replies: list[str], reply: str) -> None:
    assert replies == [reply]
    copy = s.target.copies[-1]
    assert copy.aborted and copy.commit_deferred is None
    assert "local.commit" not in s.events
    # The transaction is over, the session is not: the next message goes through.
    again = send(s, b"From: alice@example.org\r\n")
    assert_stored(s, again, b"From: alice@example.org\r\n")


ALLOWED = [
    b"From: alice@example.org\r\n",
    b"From: Alice <alice@example.org>\r\n",
    b"from: ALICE@Example.ORG\r\n",                        # any case, field name too
    b"From : alice@example.org\r\n",                       # obs-optional WSP before ":"
    b"From: alice+lists@example.org\r\n",                  # +tag
    b"From: Sales <sales@example.org>\r\n",                # an alias that reaches alice
    b"From: alice@example.org, sales@example.org\r\nSender: alice@example.org\r\n",
    b"From: alice@example.org (Bob <bob@example.org>)\r\n",  # a comment names nobody
    b'From: "bob@example.org" <alice@example.org>\r\n',     # nor does a display name
    b"From: =?utf-8?q?Bob_=3Cbob=40example=2Eorg=3E?= <alice@example.org>\r\n",
    b'From: "alice"@example.org\r\n',                      # quoted local part, same address
    b"From: Alice\r\n <alice@example.org>\r\n",            # folded (RFC 5322 2.2.3)
    b"From:\r\n\talice@example.org,\r\n\tsales@example.org\r\n",
    b"",                                                   # no From: accepted unchanged
]


@pytest.mark.parametrize("head", ALLOWED)
@pytest.mark.parametrize("bdat", [False, True])
def test_from_the_user_may_send_as_is_delivered(tmp_path: Path, head: bytes,
                                                bdat: bool) -> None:
    s = logged_in(tmp_path)
    assert_stored(s, send(s, head, bdat=bdat), head)


REFUSED = [
    # The reported case: someone else's name and address.
    (b"From: Bob <bob@example.org>\r\n", NOT_OWNED),
    (b"From: bob@example.org\r\n", NOT_OWNED),
    (b"From: BOB+x@EXAMPLE.org\r\n", "550 5.7.1 <BOB+x@EXAMPLE.org>: From header address "
                                     "rejected: not owned by user alice@example.org"),
    # Several addresses: every one must be allowed.
    (b"From: alice@example.org, bob@example.org\r\nSender: alice@example.org\r\n",
     NOT_OWNED),
    (b"From: alice@example.org,\r\n bob@example.org\r\n", NOT_OWNED),  # on a fold
    (b"From: Alice\r\n\t<bob@example.org>\r\n", NOT_OWNED),
    (b"From: =?utf-8?q?Alice?= <bob@example.org>\r\n", NOT_OWNED),
    (b"From: alice@example.org (comment) <bob@example.org>\r\n", UNPARSEABLE),
    (b"From: somebody@remote.test\r\n", "550 5.7.1 <somebody@remote.test>: From header "
                                        "address rejected: not owned by user "
                                        "alice@example.org"),
    # Two From fields: clients show either one (RFC 5322 3.6 allows a single one).
    (b"From: alice@example.org\r\nFrom: bob@example.org\r\n",
     "550 5.7.1 Error: 2 From header fields; RFC 5322 3.6 allows one"),
    (b"From: alice@example.org\r\nfrom: alice@example.org\r\n",
     "550 5.7.1 Error: 2 From header fields; RFC 5322 3.6 allows one"),
    # Forms a receiving client might read otherwise than we do.
    (b"From: <alice@example.org> <bob@example.org>\r\n", UNPARSEABLE),
    (b"From: alice@example.org; bob@example.org\r\n", UNPARSEABLE),
    (b"From: alice@example.org@bob.example\r\n", UNPARSEABLE),
    (b"From: =?utf-8?q?bob=40example.org?=\r\n", UNPARSEABLE),  # encoded-word address
    (b"From: Bob <@relay.test:bob@example.org>\r\n", UNPARSEABLE),  # obsolete route
    (b"From: alice\r\n", UNPARSEABLE),
    (b"From: <>\r\n", UNPARSEABLE),
    (b"From: Team: alice@example.org, bob@example.org;\r\n",
     "550 5.7.1 Error: From header group syntax is not allowed in From"),
    (b"From: undisclosed-senders:;\r\n",
     "550 5.7.1 Error: From header group syntax is not allowed in From"),
    (b"From:\r\n", "550 5.7.1 Error: From header no address"),
    (b"From: \xff\xfe <alice@example.org>\r\n", "550 5.7.1 Error: From header not UTF-8"),
    (b"From: " + b"a" * 2100 + b" <alice@example.org>\r\n",
     "550 5.7.1 Error: From header longer than 2048 octets"),
]


@pytest.mark.parametrize(("head", "reply"), REFUSED)
@pytest.mark.parametrize("bdat", [False, True])
def test_other_or_unreadable_from_is_refused_and_not_stored(tmp_path: Path, head: bytes,
                                                            reply: str, bdat: bool) -> None:
    s = logged_in(tmp_path)
    assert_refused(s, send(s, head, bdat=bdat), reply)


@pytest.mark.parametrize("policy", [SUBMISSION_POLICY, SUBMISSIONS_POLICY])
def test_both_submission_listeners_check(tmp_path: Path, policy: SessionPolicy) -> None:
    s = logged_in(tmp_path, policy)
    assert_refused(s, send(s, b"From: Bob <bob@example.org>\r\n"), NOT_OWNED)


def test_a_from_past_the_inspected_header_section_is_refused(tmp_path: Path) -> None:
    """The inspector stops reading headers after MAX_HEADER_SECTION octets; a From it did
    not see cannot be vouched for."""
    s = logged_in(tmp_path)
    filler = b"X-Filler: " + b"x" * 70 + b"\r\n"
    # Stored with LF line ends: one octet less per line than sent.
    head = filler * (MAX_HEADER_SECTION // (len(filler) - 1) + 1) + b"From: bob@example.org\r\n"
    assert_refused(s, send(s, head),
                   "550 5.7.1 Error: header section too long to check the From header")


def test_the_switch_turns_the_check_off(tmp_path: Path) -> None:
    s = logged_in(tmp_path, check=False)
    head = b"From: Bob <bob@example.org>\r\n"
    assert_stored(s, send(s, head), head)
    # The envelope sender is still checked.
    assert s.send(b"MAIL FROM:<bob@example.org>\r\n") == [
        "553 5.7.1 <bob@example.org>: Sender address rejected: not owned by user "
        "alice@example.org"]


def test_the_mx_does_not_check_from(tmp_path: Path) -> None:
    """Port 25 carries other people's mail: its From is whatever the sender's MSA let by."""
    s = logged_in(tmp_path, MX_POLICY)
    head = b"From: Bob <bob@example.org>\r\n"
    assert_stored(s, send(s, head, sender=b"someone@remote.test"), head)


def test_a_forwarding_alias_lets_its_target_send_as_it(tmp_path: Path) -> None:
    """What README says an alias grants: fwd@ forwards to bob (and a remote address), so
    bob may use fwd@ as envelope sender and in From, like any alias that reaches him."""
    s = Session(tmp_path, SUBMISSIONS_POLICY, tls_options=None)
    s.ehlo()
    token = base64.b64encode(b"\0bob@example.org\0bobpw")
    assert s.send(b"AUTH PLAIN " + token + b"\r\n") == ["235 2.7.0 Authentication successful"]
    head = b"From: Forward <fwd@example.org>\r\n"
    assert_stored(s, send(s, head, sender=b"fwd@example.org"), head)



def test_from_after_a_line_that_ends_the_header_section_stays_in_the_body(
        tmp_path: Path) -> None:
    """`Subject`, then a line that is no header field, then `From: bob`: for us the
    header section ended at the odd line, so the From is body. The stored message gets
    the empty line that makes every reader agree."""
    s = logged_in(tmp_path)
    head = (b"Message-ID: <m@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"this is no header field\r\nFrom: bob@example.org\r\n")
    assert send(s, head) == []
    copy = s.target.copies[-1]
    assert copy.commit_deferred is not None
    copy.commit_deferred.callback(None)
    assert s.replies()[0].startswith("250 2.0.0 Ok: queued as ")
    assert copy.data.endswith(b"+0000\n\nthis is no header field\nFrom: bob@example.org\n"
                              b"Subject: x\n\nbody\n")
