"""DSN format (RFC 3464 / RFC 6522 / RFC 3463), parsed back with the email package."""

from __future__ import annotations

import email
import email.message
import email.policy
import re

from mailserver.queue.bounce import MAX_HEADERS, build_dsn, original_headers
from mailserver.queue.envelope import FAILED, PENDING, QueueEntry, RecipientState

ORIGINAL = (b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: lunch?\n"
            b"Message-ID: <m1@example.org>\n\nsecret body text\n")


def entry() -> QueueEntry:
    return QueueEntry(id="0123456789ABCDEF", sender="alice@example.org", created=1_700_000_000,
                      recipients=[
                          RecipientState("bob@example.net", FAILED, 1,
                                         "550 5.1.1 <bob@example.net>: user unknown",
                                         "5.1.1", "mx.example.net[192.0.2.1]:25"),
                          RecipientState("carol@example.net", PENDING, 3,
                                         "connect to mx.example.net[192.0.2.1]:25: "
                                         "Connection refused", "4.4.1"),
                      ])


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_failure_dsn_structure() -> None:
    e = entry()
    raw = build_dsn(e, [e.recipients[0]], original_headers(ORIGINAL), "mx.example.org",
                    now=1_700_000_100)
    assert b"\r" not in raw, "stored form: LF line ends"
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert msg["To"] == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] and msg["Date"]
    text, status, headers = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "<bob@example.net>: 550 5.1.1 <bob@example.net>: user unknown" in \
        text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: user unknown"
    assert headers.get_content_type() == "text/rfc822-headers"
    body = headers.get_payload()
    assert "Subject: lunch?" in body and "Message-ID: <m1@example.org>" in body
    assert b"secret body text" not in raw, "the body is not returned"


def test_delay_warning() -> None:
    e = entry()
    msg = parse(build_dsn(e, [e.recipients[1]], original_headers(ORIGINAL),
                          "mx.example.org", delayed=True))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    per_rcpt = msg.get_payload()[1].get_payload()[1]
    assert per_rcpt["Action"] == "delayed"
    assert per_rcpt["Status"] == "4.4.1"
    assert per_rcpt["Diagnostic-Code"].startswith("X-Mailserver; connect to")


def test_several_recipients_and_bad_status() -> None:
    e = entry()
    e.recipients[1].state = FAILED
    e.recipients[1].status = "garbage"
    msg = parse(build_dsn(e, e.recipients, original_headers(ORIGINAL), "mx.example.org"))
    blocks = msg.get_payload()[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; bob@example.net",
                                                          "rfc822; carol@example.net"]
    assert blocks[2]["Status"] == "5.0.0", "always a valid RFC 3463 code"


def test_header_injection_in_errors_is_flattened() -> None:
    e = entry()
    e.recipients[0].last_error = "550 evil\nX-Injected: yes\n\nbody"
    raw = build_dsn(e, [e.recipients[0]], b"", "mx.example.org")
    assert b"\nX-Injected" not in raw


def test_original_headers_are_bounded() -> None:
    huge = b"X-Big: " + b"a" * 100 + b"\n"
    headers = original_headers(huge * 2000 + b"\nbody\n")
    assert len(headers) <= MAX_HEADERS and headers.endswith(b"\n")
    assert original_headers(b"Subject: no body") == b"Subject: no body"


def test_internationalized_recipient_and_headers_use_the_global_types() -> None:
    # RFC 6533 6: a UTF-8 address is "utf-8;" (rfc822 is ASCII only) in a
    # message/global-delivery-status, and UTF-8 headers return as
    # message/global-headers, never as 8-bit text/rfc822-headers.
    e = QueueEntry(id="0123456789ABCDEF", sender="alice@example.org",
                   created=1_700_000_000, smtputf8=True, recipients=[
                       RecipientState("jörg@bücher.example", FAILED, 1,
                                      "550 5.1.1 unknown", "5.1.1",
                                      "mx.bücher.example[192.0.2.1]:25")])
    original = "From: alice@example.org\nSubject: Grüße\n\nbody\n".encode()
    raw = build_dsn(e, e.recipients, original_headers(original), "mx.example.org")
    msg = parse(raw)
    assert msg.get_param("report-type") == "delivery-status"
    _text, status, headers = msg.iter_parts()
    assert status.get_content_type() == "message/global-delivery-status"
    assert headers.get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; jörg@bücher.example".encode() in raw
    assert b"rfc822; j" not in raw


def test_local_failure_names_no_remote_mta() -> None:
    e = entry()
    e.recipients[0].remote = "local"
    raw = build_dsn(e, [e.recipients[0]], original_headers(ORIGINAL), "mx.example.org")
    assert b"Remote-MTA" not in raw
    assert b"Final-Recipient: rfc822; bob@example.net" in raw
    assert b"Content-Type: text/rfc822-headers" in raw


def dsn_lines_are_clean(raw: bytes) -> None:
    """RFC 5322 2.1.1: no line over 998 octets; and nothing but LF and the HTAB of
    folding among the control characters (a raw ESC reaches the sender's terminal)."""
    for line in raw.split(b"\n"):
        assert len(line) <= 998, len(line)
        assert re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line) is None, line[:80]
        assert re.search("[\x80-\x9f]", line.decode("utf-8")) is None, line[:80]


def test_hostile_remote_reply_in_a_dsn_is_bounded_and_printable() -> None:
    """An envelope recorded before replies were cut (or any text quoting one): the DSN
    still has short lines, no control characters, and the reply code first."""
    e = entry()
    e.recipients[0].last_error = "550 " + " ".join(  # as the client once joined a reply
        "5.1.1 <bob@example.net>: no \x1b[2J\x07\x00\x9b\r" + "A" * 3900
        for _ in range(200))
    raw = build_dsn(e, [e.recipients[0]], original_headers(ORIGINAL), "mx.example.org")
    assert len(raw) < 8 * 1024
    dsn_lines_are_clean(raw)
    text, status, _headers = parse(raw).iter_parts()
    human = text.get_content()
    assert "<bob@example.net>: 550 5.1.1 <bob@example.net>: no ?[2J???\n AAAA" in human
    per_rcpt = status.get_payload()[1]
    diagnostic = per_rcpt["Diagnostic-Code"]
    assert diagnostic.startswith("smtp; 550 5.1.1 <bob@example.net>: no ?[2J??? AAAA")
    assert diagnostic.endswith("...")
    assert per_rcpt["Status"] == "5.1.1"


def test_long_diagnostic_is_folded_and_unfolds_to_the_text() -> None:
    """RFC 3464 2.3.6 / RFC 5322 2.2.3: a long reply is folded at spaces into lines of
    78 characters or fewer, and a receiver unfolds it back to the same words."""
    e = entry()
    words = " ".join(f"word{i}" for i in range(60))
    e.recipients[0].last_error = f"550 5.7.1 {words}"
    raw = build_dsn(e, [e.recipients[0]], b"", "mx.example.org")
    field = raw[raw.index(b"Diagnostic-Code:"):raw.index(b"\nLast-Attempt-Date")]
    assert field.count(b"\n ") >= 4
    assert all(len(line) <= 78 for line in field.split(b"\n"))
    status = list(parse(raw).iter_parts())[1]
    assert status.get_payload()[1]["Diagnostic-Code"] == f"smtp; 550 5.7.1 {words}"
