"""grammar_quota.py: COMPRESS (RFC 4978 5) and GETQUOTA, GETQUOTAROOT, SETQUOTA (RFC
9208 7), well-formed and not."""

from __future__ import annotations

import pytest

from mailserver.imap.grammar import ParseError, parse_command
from mailserver.imap.grammar_quota import Compress, QuotaRootCommand, SetQuota


def test_well_formed() -> None:
    assert parse_command(b"a compress deflate\r\n") == Compress("a", "COMPRESS", "DEFLATE")
    assert parse_command(b'b GETQUOTA ""\r\n') == QuotaRootCommand("b", "GETQUOTA", "")
    assert parse_command(b"c GETQUOTAROOT inbox\r\n") == QuotaRootCommand(
        "c", "GETQUOTAROOT", "INBOX")
    assert parse_command(b"d GETQUOTAROOT {4}\r\nWork\r\n") == QuotaRootCommand(
        "d", "GETQUOTAROOT", "Work")
    assert parse_command(b'e SETQUOTA "" (STORAGE 512 message 9223372036854775807)\r\n'
                         ) == SetQuota("e", "SETQUOTA", "", (("STORAGE", 512),
                                                            ("MESSAGE", 2**63 - 1)))
    assert parse_command(b'f SETQUOTA "" ()\r\n') == SetQuota("f", "SETQUOTA", "", ())


@pytest.mark.parametrize("line, text", [
    (b"a COMPRESS\r\n", "expected a space"),
    (b"a COMPRESS DEFLATE extra\r\n", "unexpected characters at the end of the command"),
    (b"a GETQUOTA\r\n", "expected a space"),
    (b'a SETQUOTA "" (STORAGE)\r\n', "expected a space"),
    (b'a SETQUOTA "" (STORAGE -1)\r\n', "expected a number"),
    (b'a SETQUOTA "" (STORAGE 9223372036854775808)\r\n', "number out of range"),
    (b'a SETQUOTA "" STORAGE 1\r\n', "expected ("),
    (b'a SETQUOTA "" (STORAGE 1\r\n', "expected a space"),
    (b'a SETQUOTA "" (' + b"S 1 " * 16 + b"S 1)\r\n", "too many resources"),
])
def test_malformed(line: bytes, text: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_command(line)
    assert caught.value.text == text and caught.value.tag == "a"
