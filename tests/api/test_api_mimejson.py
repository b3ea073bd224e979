"""A message as the API's JSON (mailserver/api/mimejson.py), hostile mail included, and
the listing's envelope cache in the folder index (mailserver/api/mailstore.py)."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from mailserver.api import mailstore, mimejson
from mailserver.api.resource import ApiError
from mailserver.interfaces import MailboxId
from mailserver.store.opener import MaildirOpener
from mailserver.store.view import MailboxView


def test_envelope_fields_last_one_wins_and_words_are_decoded() -> None:
    block = (b"Subject: first\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus\r\n"
             b" Berlin\r\nFrom: =?iso-8859-1?q?J=FCrgen?= <j@example.com>\r\n"
             b"To: undisclosed-recipients:;\r\nCc: a@example.com, \"B, C\" <b@example.com>\r\n"
             b"Date: Mon, 7 Dec 2026 10:00:00 -0000\r\nMessage-ID:  <x@y>  \r\n\r\n")
    assert mimejson.envelope(block) == {
        "date": "2026-12-07T10:00:00+00:00",
        "subject": "Grüße aus Berlin",
        "from": [{"name": "Jürgen", "address": "j@example.com"}],
        "to": [],
        "cc": [{"name": "", "address": "a@example.com"},
               {"name": "B, C", "address": "b@example.com"}],
        "message_id": "<x@y>",
        "in_reply_to": None,
    }


@pytest.mark.parametrize("block,subject", [
    (b"Subject: =?bogus-charset?q?x?=\r\n\r\n", "=?bogus-charset?q?x?="),
    (b"Subject: =?utf-8?b?!!!?=\r\n\r\n", "=?utf-8?b?!!!?="),
    (b"Subject: caf\xc3\xa9 \xff\r\n\r\n", "café \ufffd"),  # RFC 6532 UTF-8; junk replaced
    (b"Subject\r\nno colon\r\n\r\n", None),
    # Found by the mutation test below: the stdlib raises CharsetError/HeaderParseError.
    (b"Subject: =?U\xffTF-8?B?SsO8cmdlbg==?=\r\n\r\n", "=?U\ufffdTF-8?B?SsO8cmdlbg==?="),
    (b"Subject: =?UTF-8?B?\x1bsO8cmdlbg==?=\r\n\r\n", "=?UTF-8?B?\x1bsO8cmdlbg==?="),
    (b"", None),
])
def test_broken_headers_give_something_never_an_exception(block: bytes,
                                                          subject: str | None) -> None:
    env = mimejson.envelope(block)
    assert env["subject"] == subject
    assert env["date"] is None


def test_an_address_bomb_is_cut_off() -> None:
    block = b"To: " + b", ".join(b"u%d@example.com" % i for i in range(5000)) + b"\r\n\r\n"
    assert len(mimejson.envelope(block)["to"]) == mimejson.MAX_ADDRESSES


@pytest.mark.parametrize("depth", [900, 2000, 20000])
def test_deep_nesting_stops_and_lists_the_rest_as_one_part(depth: int) -> None:
    """Below the interpreter's recursion limit (900) the tree is parsed and cut at
    MAX_DEPTH; past it, the parser's RecursionError leaves the body unparsed."""
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(depth))
    data = b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    out = mimejson.parsed(data, "/x")
    assert out["text"] == [] and len(out["attachments"]) == 1
    assert out["attachments"][0]["content_type"] == "multipart/mixed"


def test_many_parts_are_counted_not_listed() -> None:
    parts = b"".join(b"--b\r\nContent-Type: application/x-n\r\n\r\n%d\r\n" % i
                     for i in range(mimejson.MAX_PARTS + 20))
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n")
    out = mimejson.parsed(data, "/x")
    assert len(out["attachments"]) == mimejson.MAX_PARTS
    assert out["parts_omitted"] == 20


def test_bad_base64_unknown_charset_and_an_attached_message() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
            b"caf\xc3\xa9\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!!QUJD====@@\r\n"
            b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
            b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
            b"--b--\r\n")
    out = mimejson.parsed(data, "/m/1/attachments")
    assert out["text"] == ["café"]  # unknown charset: read as UTF-8
    octets, inner = out["attachments"]
    assert octets["download"] == "/m/1/attachments/1"
    assert inner["content_type"] == "message/rfc822"  # an attachment, not more body text
    assert mimejson.attachment(data, 1) == (b"ABC", "application/octet-stream", None)
    found = mimejson.attachment(data, 2)
    assert found is not None and b"Subject: inner" in found[0] and b"inner body" in found[0]
    assert mimejson.attachment(data, 3) is None


@pytest.mark.parametrize("disposition,expected", [
    (b'attachment; filename="C:\\\\Windows\\\\evil.exe"', "evil.exe"),
    (b'attachment; filename="=?utf-8?b?' + base64.b64encode("Übersicht.pdf".encode())
     + b'?="', "Übersicht.pdf"),
    (b"attachment; filename*=UTF-8''a%00b%0Dc%0A.txt", "abc.txt"),
    (b'attachment; filename="../.."', ".."),
    (b'attachment; filename=""', None),
])
def test_file_names_lose_paths_and_control_characters(disposition: bytes,
                                                      expected: str | None) -> None:
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Disposition: " + disposition
            + b"\r\n\r\nx\r\n--b--\r\n")
    assert mimejson.parsed(data, "/x")["attachments"][0]["filename"] == expected


def test_unicode_folder_names_in_paths_are_modified_utf7() -> None:
    assert mailstore.folder_name("Entwürfe") == "Entw&APw-rfe"
    assert mailstore.folder_name("Entwürfe & Co") == "Entw&APw-rfe &- Co"
    assert mailstore.folder_name("Archive.2026") == "Archive.2026"
    assert mailstore.display_name("Entw&APw-rfe &- Co") == "Entwürfe & Co"
    assert mailstore.display_name("&broken") == "&broken"
    with pytest.raises(ApiError):
        mailstore.folder_name("x" * 1001)


# --------------------------------------------------------------------------- the cache


def test_a_warm_listing_reads_no_header(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second listing takes every envelope from the folder index (the IMAP FETCH
    cache's table), so a big folder's pages open no file and parse no header."""
    opener = MaildirOpener(tmp_path)
    mailbox = MailboxId("example.org", "alice")
    store = opener.open_user_store(mailbox)
    for i in range(30):
        store.append("INBOX", b"Subject: n%d\r\nFrom: a@example.org\r\n\r\nbody\r\n" % i)
    cold = json.loads(mailstore.messages(opener.open_user_store(mailbox), "INBOX", 0, None,
                                         100, None, str))
    assert [m["subject"] for m in cold["messages"]] == [f"n{i}" for i in range(30)]

    def no_header(self: MailboxView, uid: int) -> bytes:
        raise AssertionError(f"header({uid}) read on a warm listing")

    monkeypatch.setattr(MailboxView, "header", no_header)
    warm = json.loads(mailstore.messages(opener.open_user_store(mailbox), "INBOX", 0, None,
                                         100, None, str))
    assert warm == cold


def test_eight_bit_mime_fields_are_utf8_text_not_a_crash() -> None:
    """compat32 turns a field with raw 8-bit octets into a Header object; every field we
    read from a part is text, the UTF-8 decoded (RFC 6532) and anything else replaced."""
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"\xff\xfe.bin\"\r\n"
            b"Content-ID: <caf\xc3\xa9@b>\r\n  folded\r\n\r\nxx\r\n"
            b"--b\r\nContent-Type: text/pl\xc3\xa9in\r\n\r\nyy\r\n--b--\r\n")
    first, second = mimejson.parsed(data, "/x")["attachments"]
    assert first["content_id"] == "<café@b>  folded"
    assert first["filename"] == "\ufffd\ufffd.bin"
    assert second["content_type"] == "text/pl\ufffd\ufffdin"
    json.dumps(first, ensure_ascii=False).encode("utf-8")  # no lone surrogate left
    assert mimejson.attachment(data, 1) == (b"xx", "application/octet-stream",
                                            "\ufffd\ufffd.bin")


SEED = (b"From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.com>\r\nSubject: s =?ISO-8859-1?Q?caf=E9?=\r\n"
        b"Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\n"
        b"Content-Type: multipart/alternative; boundary=\"i\"\r\n\r\n--i\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n--i\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\nPHA+R3LDvMOfZTwvcD4=\r\n--i--\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\n\r\nbody\r\n--o\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''R%C3%A4.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--o--\r\n")
_SPLICES = (b"\r\n", b"=?", b"?=", b"--o", b"--i", b";", b'"', b"\x00", b"=?utf-8?b?",
            b"filename*0*=", b"%", b"\xff", b"boundary=", b"Content-Type: message/rfc822")


def test_mutated_mail_never_raises() -> None:
    """Random byte flips, cuts and splices of a many-part message: every answer is JSON
    that encodes as UTF-8, and every listed attachment downloads (found failures in the
    stdlib's header decoding and its generator, now caught)."""
    rng = random.Random(18)
    for _ in range(400):
        data = bytearray(SEED)
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.4:
                data[at] = rng.randrange(256)
            elif roll < 0.7:
                del data[at:at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice(_SPLICES)
        out = mimejson.parsed(bytes(data), "/x")
        json.dumps(out, ensure_ascii=False).encode("utf-8")
        for attachment in out["attachments"]:
            assert mimejson.attachment(bytes(data), attachment["number"]) is not None
