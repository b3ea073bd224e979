"""smtp/dsn.py: RFC 3461 4's MAIL and RCPT parameters (RET, ENVID, NOTIFY, ORCPT),
xtext, and RFC 6533's utf-8 ORCPT: what is accepted, and the 501 for what is not."""

from __future__ import annotations

import pytest

from mailserver.errors import ReplyError
from mailserver.smtp.dsn import (
    RcptDsn,
    decode_xtext,
    encode_xtext,
    format_orcpt,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
)


def refused(fn: object, value: str | None, text: str) -> None:
    with pytest.raises(ReplyError) as caught:
        fn(value)  # type: ignore[operator]
    reply = caught.value.reply
    assert (reply.code, reply.enhanced) == (501, "5.5.4")
    assert text in str(reply.text)


def test_ret() -> None:
    assert parse_ret("hdrs") == "HDRS" and parse_ret("FULL") == "FULL"
    refused(parse_ret, "BODY", "RET must be FULL or HDRS")
    refused(parse_ret, None, "RET must be FULL or HDRS")


def test_envid_xtext() -> None:
    assert parse_envid("QQ+2B314+3D") == "QQ+314="
    refused(parse_envid, "a+2b", "ENVID is not xtext")        # lower-case hex
    refused(parse_envid, "a+2", "ENVID is not xtext")         # short escape
    refused(parse_envid, "a=b", "ENVID is not xtext")         # raw "="
    refused(parse_envid, "caf\u00e9", "ENVID is not xtext")    # 8-bit
    refused(parse_envid, "x" * 101, "longer than 100")
    refused(parse_envid, "+0D+0A", "outside printable US-ASCII")
    refused(parse_envid, None, "ENVID needs a value")


def test_xtext_round_trip() -> None:
    text = "a+b=c d\\e"
    assert decode_xtext(encode_xtext(text), "X") == text
    assert encode_xtext(text) == "a+2Bb+3Dc+20d\\e"


@pytest.mark.parametrize(("value", "words"), [
    ("NEVER", {"NEVER"}), ("success,FAILURE", {"SUCCESS", "FAILURE"}),
    ("DELAY", {"DELAY"})])
def test_notify(value: str, words: set[str]) -> None:
    assert parse_notify(value) == words


@pytest.mark.parametrize("value", ["NEVER,SUCCESS", "SUCCESS,SUCCESS", "SOMETIMES", "",
                                   "SUCCESS,", None])
def test_notify_refused(value: str | None) -> None:
    refused(parse_notify, value, "NOTIFY")


def test_what_to_report() -> None:
    """RFC 3461 4.1: without NOTIFY, failures (and delays, our choice); NEVER: nothing."""
    assert RcptDsn().wants == {"FAILURE", "DELAY"}
    assert RcptDsn(notify=frozenset({"NEVER"})).wants == frozenset()
    assert RcptDsn(notify=frozenset({"SUCCESS"})).wants == {"SUCCESS"}


@pytest.mark.parametrize(("value", "parsed"), [
    ("rfc822;bob@example.org", ("rfc822", "bob@example.org")),
    ("RFC822;bob+2Btag@example.org", ("rfc822", "bob+tag@example.org")),
    ("utf-8;j\\x{F6}rg@example.org", ("utf-8", "j\u00f6rg@example.org")),
    ("utf-8;j\u00f6rg@example.org", ("utf-8", "j\u00f6rg@example.org")),   # unitext
    ("utf-8;a\\x{2B}b@example.org", ("utf-8", "a+b@example.org")),
])
def test_orcpt(value: str, parsed: tuple[str, str]) -> None:
    assert parse_orcpt(value) == parsed


@pytest.mark.parametrize(("value", "why"), [
    ("bob@example.org", "needs addr-type;address"),
    ("rfc822;", "needs addr-type;address"),
    ("x400;bob", "addr-type 'x400' is not rfc822 or utf-8"),
    ("rfc822;b\u00f6b@example.org", "ORCPT is not xtext"),
    ("rfc822;bob+20x@example.org", "non-ASCII or spaces"),
    ("utf-8;a+b@example.org", "holds '+', '='"),
    ("utf-8;a\\b@example.org", "a backslash that is no"),
    ("utf-8;a\\x{D800}@example.org", "not a printable code point"),
    ("utf-8;a\\x{0}@example.org", "not a printable code point"),
    ("utf-8;a\\x{110000}@example.org", "not a printable code point"),
    ("rfc822;" + "a" * 600, "at most 500"),
])
def test_orcpt_refused(value: str, why: str) -> None:
    refused(parse_orcpt, value, why)


@pytest.mark.parametrize(("kind", "address"), [
    ("rfc822", "bob+tag@example.org"), ("utf-8", "j\u00f6rg+x@example.org"),
    ("rfc822", "\u00e9@example.org")])
def test_orcpt_passed_on_reads_back(kind: str, address: str) -> None:
    sent = format_orcpt(kind, address)
    assert sent.isascii() and " " not in sent
    assert parse_orcpt(sent)[1] == address
