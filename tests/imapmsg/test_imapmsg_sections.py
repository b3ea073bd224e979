"""BODY[section]<partial> corners beyond the golden corpus (RFC 3501 6.4.5)."""

from __future__ import annotations

from imapmsg_corpus import message, served

from mailserver.imap.message import ParsedMessage, header_fields, partial

HEADER = (
    b"From: a@example.com\r\n"
    b"Subject: folded\r\n"
    b"  onto two lines\r\n"
    b"to: b@example.com\r\n"
    b"X-Subject-Like: no\r\n"
    b"Subject: second\r\n"
    b"\r\n"
)


def test_header_fields_keep_order_folding_and_end_with_blank_line() -> None:
    assert header_fields(HEADER, ("SUBJECT", "To"), negate=False) == (
        b"Subject: folded\r\n  onto two lines\r\nto: b@example.com\r\n"
        b"Subject: second\r\n\r\n")


def test_header_fields_match_whole_names_only() -> None:
    assert header_fields(HEADER, ("Subject",), False).count(b"X-Subject-Like") == 0
    assert header_fields(HEADER, ("X-Subject",), False) == b"\r\n"
    assert header_fields(HEADER, ("Sub",), False) == b"\r\n"


def test_header_fields_not() -> None:
    assert header_fields(HEADER, ("subject", "from"), negate=True) == (
        b"to: b@example.com\r\nX-Subject-Like: no\r\n\r\n")
    assert header_fields(HEADER, (), negate=True) == HEADER


def test_header_fields_with_regex_characters_in_names() -> None:
    header = b"X-A.B: 1\r\nX-AxB: 2\r\nX-(y): 3\r\n\r\n"
    assert header_fields(header, ("X-A.B",), False) == b"X-A.B: 1\r\n\r\n"
    assert header_fields(header, ("X-(y)", "["), False) == b"X-(y): 3\r\n\r\n"
    assert header_fields(header, ("X-.*",), False) == b"\r\n"


def test_header_fields_from_a_header_block_alone() -> None:
    full = served("simple.eml")
    head = full[:full.index(b"\r\n\r\n") + 4]
    fields = ("FROM", "TO", "SUBJECT", "DATE", "MESSAGE-ID")
    assert (ParsedMessage.from_header(head).section((), "HEADER.FIELDS", fields)
            == ParsedMessage(full).section((), "HEADER.FIELDS", fields)
            == header_fields(head, fields, False))


def test_partial() -> None:
    assert partial(b"0123456789", 0, 4) == b"0123"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 10, 1) == b""
    assert partial(b"0123456789", 11, 1) == b""
    assert partial(b"0123456789", 3, None) == b"3456789"
    assert partial(b"0123456789", 3, 0) == b""


def test_top_level_message_rfc822_numbering() -> None:
    m = message("rfc822_top.eml")
    inner = b"From: inner@example.com\r\nSubject: inner\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\ninner body\r\n"
    assert m.section((1,), "") == inner
    assert m.section((1,), "HEADER").startswith(b"From: inner@example.com")
    assert m.section((1,), "TEXT") == b"inner body\r\n"
    assert m.section((1, 1), "") == b"inner body\r\n"
    assert m.section((1, 1, 1), "") == b""
    assert m.section((2,), "") == b""


def test_nonexistent_parts_are_empty() -> None:
    m = message("nested.eml")
    assert m.section((0,), "") == b""
    assert m.section((3,), "MIME") == b""
    assert m.section((1, 2, 3), "") == b""
    assert m.section((1, 2, 2), "") .startswith(b"iVBOR")
    assert m.section((1, 2, 2), "MIME").startswith(b"Content-Type: image/png\r\n")
    assert m.section((1, 2, 2), "TEXT") == b""  # not a message/rfc822 part


def test_body_structure_is_cached_and_stable() -> None:
    m = message("nested.eml")
    assert m.body_structure(True) is m.body_structure(True)
    assert m.body_structure(False) != m.body_structure(True)


def test_empty_message() -> None:
    m = ParsedMessage(b"")
    assert m.envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert m.body_structure(True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)')
    assert m.section((), "HEADER") == b""
    assert m.section((), "HEADER.FIELDS", ("From",)) == b"\r\n"
    assert m.section((1,), "") == b""


def test_bare_lf_message_is_read_too() -> None:
    raw = b"From: a@example.com\nSubject: lf\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhello\n--b--\n"
    m = ParsedMessage(raw)
    assert m.section((1,), "") == b"hello"
    assert m.section((1,), "MIME") == b"Content-Type: text/plain\n\n"
    assert b'"mixed"' in m.body_structure(False)
    assert m.envelope().startswith(b'(NIL "lf" ((NIL NIL "a" "example.com"))')
