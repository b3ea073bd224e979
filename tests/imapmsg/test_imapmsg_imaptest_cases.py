"""Sections of the messages of imaptest's fetch-body-mime and fetch-body-message-rfc822*
tests (Dovecot's IMAP compliance tester, https://github.com/dovecot/imaptest), with the
answers those tests expect."""

from __future__ import annotations

import pytest

from mailserver.imap.message import ParsedMessage


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


SUB = """From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/alternative; boundary="sub1"

"""
SUB_TEXT = """Sub MIME prologue
--sub1
Content-Type: text/html

<p>Hello world</p>

--sub1
Content-Type: text/plain

Hello another world

--sub1--
Sub MIME epilogue
"""
BODY_MIME = crlf("""From: user@domain.org
Date: Sat, 24 Mar 2007 23:00:00 +0200
Mime-Version: 1.0
Content-Type: multipart/mixed; boundary="foo
 bar"

Root MIME prologue

--foo bar
Content-Type: text/x-myown; charset=us-ascii

hello

--foo bar
Content-Type: message/rfc822

""" + SUB + SUB_TEXT + """
--foo bar--
Root MIME epilogue
""")

DIGEST = crlf("""From: user@domain.org
Date: Sat, 24 Mar 2007 23:00:00 +0200
Mime-Version: 1.0
Content-Type: message/rfc822

From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/digest; boundary="foo"

prologue

--foo \n
From: m1@example.com
Subject: m1

m1 body

--foo \nX-Mime: m2 header

From: m2@example.com
Subject: m2

m2 body

--foo--

epilogue
""")

X2 = crlf("""From: user@domain.org
Date: Sat, 24 Mar 2007 23:00:00 +0200
Mime-Version: 1.0
Content-Type: message/rfc822

From: user2@domain.org
Date: Fri, 23 Mar 2007 11:22:33 +0200
Mime-Version: 1.0
Content-Type: message/rfc822

From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg

Hello world
""")

CASES = [
    (BODY_MIME, (1,), "", (), "hello\n"),
    (BODY_MIME, (1,), "MIME", (), "Content-Type: text/x-myown; charset=us-ascii\n\n"),
    (BODY_MIME, (2,), "", (), SUB + SUB_TEXT),
    (BODY_MIME, (2,), "MIME", (), "Content-Type: message/rfc822\n\n"),
    (BODY_MIME, (2,), "HEADER", (), SUB),
    (BODY_MIME, (2,), "HEADER.FIELDS", ("from", "subject", "X-foo"),
     "From: sub@domain.org\nSubject: submsg\n\n"),
    (BODY_MIME, (2,), "HEADER.FIELDS.NOT", ("from", "subject", "X-foo"),
     'Date: Sun, 12 Aug 2012 12:34:56 +0300\n'
     'Content-Type: multipart/alternative; boundary="sub1"\n\n'),
    (BODY_MIME, (2,), "TEXT", (), SUB_TEXT),
    (BODY_MIME, (2, 1), "MIME", (), "Content-Type: text/html\n\n"),
    (BODY_MIME, (2, 1), "", (), "<p>Hello world</p>\n"),
    (BODY_MIME, (2, 2), "MIME", (), "Content-Type: text/plain\n\n"),
    (BODY_MIME, (2, 2), "", (), "Hello another world\n"),
    (DIGEST, (1, 1), "", (), "From: m1@example.com\nSubject: m1\n\nm1 body\n"),
    (DIGEST, (1, 1), "MIME", (), "\n"),
    (DIGEST, (1, 1), "HEADER", (), "From: m1@example.com\nSubject: m1\n\n"),
    (DIGEST, (1, 1), "TEXT", (), "m1 body\n"),
    (DIGEST, (1, 2), "MIME", (), "X-Mime: m2 header\n\n"),
    (DIGEST, (1, 2), "TEXT", (), "m2 body\n"),
    (X2, (1, 1), "", (), "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\n"
                         "Subject: submsg\n\nHello world\n"),
    (X2, (1, 1, 1), "", (), "Hello world\n"),
    (X2, (1, 1), "TEXT", (), "Hello world\n"),
    (X2, (1,), "HEADER", (), "From: user2@domain.org\nDate: Fri, 23 Mar 2007 11:22:33 +0200\n"
                             "Mime-Version: 1.0\nContent-Type: message/rfc822\n\n"),
]


@pytest.mark.parametrize(("raw", "part", "spec", "fields", "expected"), CASES)
def test_imaptest_sections(raw: bytes, part: tuple[int, ...], spec: str,
                           fields: tuple[str, ...], expected: str) -> None:
    assert ParsedMessage(raw).section(part, spec, fields) == crlf(expected)


def test_folded_boundary_parameter() -> None:
    # imaptest fetch-bodystructure: boundary="foo<CRLF> bar" unfolds to "foo bar".
    assert ParsedMessage(BODY_MIME).body_structure(False).startswith(
        b'(("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1)')
