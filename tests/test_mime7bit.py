"""mime7bit.py: 8-bit mail made 7-bit for a peer without 8BITMIME (RFC 6152 3):
what a receiver decodes is what was sent, and nothing else changed."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailserver.mime7bit import DowngradeError, to_7bit

HEAD = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n"


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_seven_bit_is_left_alone() -> None:
    raw = HEAD + b"\r\nplain ascii\r\n"
    assert to_7bit(raw) is raw


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_text_becomes_quoted_printable(newline: bytes) -> None:
    text = "Grüße aus Köln, " * 10 + "\nzweite Zeile mit Leerzeichen am Ende   \n.\n"
    raw = (HEAD + b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode()).replace(b"\r\n", newline)
    out = to_7bit(raw)
    assert out.isascii()
    assert out.startswith(HEAD.replace(b"\r\n", newline))  # other headers byte for byte
    assert b"Content-Transfer-Encoding: quoted-printable" + newline in out
    assert max(len(line) for line in out.split(newline)) <= 76
    assert parsed(out).get_content().replace("\r\n", "\n") == text


def test_multipart_only_eight_bit_parts_change() -> None:
    binary = bytes(range(256))
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
           b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii part\r\n"
           b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
           b"--b1\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding:\r\n 8bit\r\n\r\n" + binary + b"\r\n"
           b"--b1--\r\nepilogue\r\n")
    out = to_7bit(raw)
    assert out.isascii()
    assert b"--b1\r\nContent-Type: text/plain\r\n\r\nascii part\r\n--b1\r\n" in out
    assert out.endswith(b"--b1--\r\nepilogue\r\n") and b"preamble\r\n--b1" in out
    parts = list(parsed(out).iter_parts())
    assert parts[1]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[1].get_content() == "été"
    assert parts[2]["Content-Transfer-Encoding"] == "base64"  # the folded one replaced
    assert parts[2].get_content() == binary
    assert out.count(b"Content-Transfer-Encoding") == 2


def test_attached_message_is_walked() -> None:
    inner = (b"From: x@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             b"na\xc3\xafve\r\n")
    raw = HEAD + b"Content-Type: message/rfc822\r\n\r\n" + inner
    out = to_7bit(raw)
    assert out.isascii()
    attached = parsed(out).get_content()
    assert attached.get_content().replace("\r\n", "\n") == "naïve\n"


@pytest.mark.parametrize(("raw", "why"), [
    (b"Subject: gr\xc3\xbc\xc3\x9fe\r\n\r\nbody\xc3\xa9\r\n", "header holds 8-bit"),
    (HEAD + b"Content-Transfer-Encoding: binary\r\n\r\n\xff\r\n", "binary part"),
    (HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n\xff\r\n", "encoded part"),
    (HEAD + b"Content-Type: message/global\r\n\r\nSubject: \xc3\xa9\r\n\r\nx\r\n",
     "message/global"),
    (HEAD + b"Content-Type: multipart/mixed\r\n\r\n\xff\r\n", "without a boundary"),
    (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n\xff\r\n--b\r\n\r\nx\r\n'
     b"--b--\r\n", "outside any part"),
])
def test_what_cannot_be_downgraded(raw: bytes, why: str) -> None:
    with pytest.raises(DowngradeError, match=why):
        to_7bit(raw)


def test_hostile_nesting_is_bounded() -> None:
    raw = b"x\xc3\xa9\r\n"
    for _ in range(40):
        raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
    with pytest.raises(DowngradeError, match="nesting deeper than 32"):
        to_7bit(raw)
