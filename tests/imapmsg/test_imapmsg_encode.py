"""IMAP strings, flag lists and dates on the wire (RFC 3501 4.3, 4.5, 9)."""

from __future__ import annotations

import calendar
import datetime

import pytest

from mailserver.imap.encode import (
    astring,
    flag_list,
    internal_date,
    literal,
    nstring,
    parse_date,
    parse_date_time,
    quoted_or_literal,
)


def test_quoted_string_escapes_backslash_and_quote() -> None:
    assert quoted_or_literal(b'say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'


@pytest.mark.parametrize("value", [b"a\r\nb", b"a\nb", b"a\rb", b"nul\x00", b"caf\xc3\xa9"])
def test_unsafe_octets_make_a_literal(value: bytes) -> None:
    assert quoted_or_literal(value) == b"{%d}\r\n" % len(value) + value


def test_long_values_become_literals() -> None:
    assert quoted_or_literal(b"x" * 999).startswith(b'"')
    assert quoted_or_literal(b"x" * 1000) == literal(b"x" * 1000)


def test_nstring_nil_and_empty() -> None:
    assert nstring(None) == b"NIL"
    assert nstring(b"") == b'""'
    assert nstring(b"NIL") == b'"NIL"'


@pytest.mark.parametrize(("value", "wire"), [
    (b"INBOX", b"INBOX"),
    (b"Sent]", b"Sent]"),
    (b"two words", b'"two words"'),
    (b"", b'""'),
    (b"NIL", b'"NIL"'),
    (b"50%", b'"50%"'),
    (b"a*", b'"a*"'),
    (b"{x", b'"{x"'),
    (b"(x)", b'"(x)"'),
    (b"\xc3\xa9", b"{2}\r\n\xc3\xa9"),
])
def test_astring(value: bytes, wire: bytes) -> None:
    assert astring(value) == wire


def test_flag_list_adds_recent_last() -> None:
    assert flag_list(["\\Seen", "$Label1"], True) == b"(\\Seen $Label1 \\Recent)"
    assert flag_list([], False) == b"()"


def test_internal_date_is_utc_and_space_padded() -> None:
    ts = calendar.timegm((1996, 7, 7, 9, 44, 25, 0, 0, 0))
    assert internal_date(ts) == b'" 7-Jul-1996 09:44:25 +0000"'
    assert internal_date(0) == b'" 1-Jan-1970 00:00:00 +0000"'


@pytest.mark.parametrize(("text", "expected"), [
    ('"17-Jul-1996 02:44:25 -0700"', (1996, 7, 17, 9, 44, 25)),
    ("17-Jul-1996 02:44:25 -0700", (1996, 7, 17, 9, 44, 25)),
    (" 7-JUL-1996 02:44:25 +0200", (1996, 7, 7, 0, 44, 25)),
    ("7-jul-1996 02:44:25 +0000", (1996, 7, 7, 2, 44, 25)),
])
def test_parse_date_time(text: str, expected: tuple[int, ...]) -> None:
    assert parse_date_time(text) == calendar.timegm(expected + (0, 0, 0))


def test_internal_date_round_trips() -> None:
    for ts in (0.0, 1e9, 1700000000.0, 4102444799.0):
        assert parse_date_time(internal_date(ts).decode()) == ts


@pytest.mark.parametrize("text", [
    "", "17-Jul-96 02:44:25 -0700", "17-Jux-1996 02:44:25 -0700", "32-Jul-1996 02:44:25 +0000",
    "17-Jul-1996 24:00:00 +0000", "17-Jul-1996 02:44:25", "17-Jul-1996 02:44:25 0700",
    "17-Jul-1996 02:44:25 +0760", "30-Feb-2024 00:00:00 +0000", "17-Jul-1996  02:44:25 +0000",
])
def test_parse_date_time_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date_time(text)


def test_parse_date() -> None:
    assert parse_date("1-Feb-1994") == datetime.date(1994, 2, 1)
    assert parse_date("01-feb-1994") == datetime.date(1994, 2, 1)
    assert parse_date('"29-FEB-2024"') == datetime.date(2024, 2, 29)
    for bad in ("1-Feb-94", "1 Feb 1994", "29-Feb-2023", "1-Fev-1994", "", "1-Feb-1994 "):
        with pytest.raises(ValueError):
            parse_date(bad)
