"""Modified UTF-7 mailbox names (RFC 3501 5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.imap import mutf7


@pytest.mark.parametrize(("name", "wire"), [
    ("INBOX", "INBOX"),
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501
    ("Entw\u00fcrfe", "Entw&APw-rfe"),
    ("A&B", "A&-B"),
    ("&", "&-"),
    ("\U0001f600 smile", "&2D3eAA- smile"),
    ("caf\u00e9\u00e9", "caf&AOkA6Q-"),
    ("", ""),
])
def test_known_names(name: str, wire: str) -> None:
    assert mutf7.encode(name) == wire
    assert mutf7.decode(wire) == name


@pytest.mark.parametrize("wire", [
    "&",              # unterminated
    "&U,BTFw",        # unterminated run
    "a&Jjo!-",        # not base64
    "&AGE-",          # "a" (printable ASCII) encoded
    "&ACY-",          # "&" encoded instead of "&-"
    "&U,BTFw-&ZeVnLIqe-",  # two adjacent runs: must be one
    "&AO-",           # odd number of octets
    "&AOl-",          # non-zero leftover bits
    "&2D0-",          # lone high surrogate
    "caf\u00e9",      # 8-bit character not encoded
    "tab\there",      # control character
    "&U/BTFw-",       # "/" instead of ","
    "&U,BTFw=-",      # padding
])
def test_invalid_forms_raise(wire: str) -> None:
    with pytest.raises(ValueError):
        mutf7.decode(wire)


_names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(_names)
def test_round_trip(name: str) -> None:
    wire = mutf7.encode(name)
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert mutf7.decode(wire) == name


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_decode_accepts_only_what_encode_produces(wire: str) -> None:
    try:
        name = mutf7.decode(wire)
    except ValueError:
        return
    assert mutf7.encode(name) == wire
