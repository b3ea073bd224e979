"""SEARCH work is bounded: at most MAX_SEARCH_KEYS keys (BAD [LIMIT] beyond, RFC 5530),
and each message's body is decoded once per SEARCH, however many BODY/TEXT keys ask."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_harness import Session

from mailserver.imap import message
from mailserver.imap.grammar import MAX_SEARCH_KEYS, ParseError, SearchAnd, parse_command

BASE64_BODY = (b"Subject: encoded\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8"
               b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               b"R3LDvMOfZSBhdXMgZGVtIFNjaHdhcnp3YWxk\r\n")  # "Grüße aus dem Schwarzwald"
MULTIPART = (b"Subject: parts\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
             b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable"
             b"\r\n\r\nsee you at the lake=\r\n side\r\n"
             b"--b\r\nContent-Type: text/html\r\n\r\n<p>the lake side</p>\r\n--b--\r\n")
PLAIN = b"Subject: plain\r\n\r\nnothing to see\r\n"


def keys(n: int) -> bytes:
    return b" ".join([b"UNDELETED"] * n)


def test_key_count_is_capped() -> None:
    program = parse_command(b"a SEARCH " + keys(MAX_SEARCH_KEYS) + b"\r\n").program  # type: ignore
    assert isinstance(program, SearchAnd) and len(program.keys) == MAX_SEARCH_KEYS
    for text in (keys(MAX_SEARCH_KEYS + 1),
                 b"(" + keys(MAX_SEARCH_KEYS) + b") 1:*",
                 b"OR (" + keys(60) + b") (" + keys(41) + b")",
                 b" ".join([b"TEXT x"] * (MAX_SEARCH_KEYS + 1))):
        with pytest.raises(ParseError) as caught:
            parse_command(b"a UID SEARCH " + text + b"\r\n")
        error = caught.value
        assert (error.code, error.text, error.tag) == (
            "LIMIT", "too many search keys (100 at most)", "a")
    # NOT, OR and parentheses are not keys of their own.
    parse_command(b"a SEARCH NOT (" + keys(50) + b") OR (" + keys(49) + b") ALL\r\n")


def test_too_many_keys_over_the_session(tmp_path: Path) -> None:
    s = Session(tmp_path)
    s.login()
    s.command(b"s SELECT INBOX")
    assert s.command(b"a SEARCH " + keys(MAX_SEARCH_KEYS + 1)) == [
        b"a BAD [LIMIT] too many search keys (100 at most)"]
    assert s.command(b"b SEARCH " + keys(MAX_SEARCH_KEYS)) == [
        b"* SEARCH", b"b OK Search completed"]


def test_each_body_is_decoded_once_per_search(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten BODY/TEXT keys over three messages: each text part is decoded (transfer
    encoding and charset) once per SEARCH, not once per key; the answers are right."""
    s = Session(tmp_path)
    s.login()
    for data in (BASE64_BODY, MULTIPART, PLAIN):
        s.send(b"ap APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert s.lines()[-1].startswith(b"ap OK")
    s.command(b"s SELECT INBOX")
    calls: list[bytes] = []
    real = message.decode_transfer

    def counting(body: bytes, encoding: bytes | None) -> bytes:
        calls.append(body)
        return real(body, encoding)

    monkeypatch.setattr(message, "decode_transfer", counting)
    query = (b"SEARCH OR BODY schwarzwald BODY lake NOT BODY nothing TEXT aus TEXT GR\xc3\x9c"
             b"SSE OR TEXT zzz TEXT encoded BODY dem NOT TEXT absent BODY Gr")
    query = b"SEARCH CHARSET UTF-8 " + query[len(b"SEARCH "):]
    assert s.command(b"q " + query) == [b"* SEARCH 1", b"q OK Search completed"]
    # Message 1: one text part; message 2: two (text/plain, text/html); message 3: one.
    assert len(calls) == 4
    calls.clear()
    assert s.command(b"r SEARCH " + b" ".join(
        [b"OR BODY lake TEXT nothing", b"NOT BODY xyzzy"] * 5)) == [
        b"* SEARCH 2 3", b"r OK Search completed"]
    assert len(calls) == 4


def test_appendlimit_of_a_big_literal_at_and_past_the_limit(tmp_path: Path) -> None:
    """The session harness's APPENDLIMIT is 100000, past the size (64 KiB) from which
    the message literal is gathered apart from the command: exactly 100000 octets (CRLF
    included) are stored, 100001 are refused before the "+" (RFC 7889)."""
    s = Session(tmp_path)
    s.login()
    line = b"z" * 98 + b"\r\n"
    data = b"Subject: big\r\n\r\n" + line * 999 + b"z" * (100000 - 16 - 100 * 999 - 2) + b"\r\n"
    assert len(data) == 100000
    assert b"APPENDLIMIT=100000" in s.command(b"c CAPABILITY")[0]
    assert s.command(b"a APPEND INBOX {100001}") == [b"a NO [TOOBIG] Message too large"]
    s.send(b"b APPEND INBOX {100000+}\r\n" + data)
    assert s.lines()[-1].startswith(b"b OK [APPENDUID ")
    s.command(b"s SELECT INBOX")
    assert s.command(b"f FETCH 1 RFC822.SIZE") == [b"* 1 FETCH (RFC822.SIZE 100000)",
                                                  b"f OK Fetch completed"]
