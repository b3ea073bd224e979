"""api/mimebuild.py writes the common structured message directly: it must give the
very bytes the email package gives (compose.build_with_email), the random multipart
boundary aside, and leave every other shape to the email package."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.api import compose, mimebuild
from mailserver.api.addresses import Mailbox

ALICE = Mailbox("alice@example.org")
BOB = Mailbox("bob@example.org")
_BOUNDARY = re.compile(rb"={15}\d{19}==(?:\.\d+)?")


def both(author: Mailbox = ALICE, to: list[Mailbox] | None = None,
         cc: list[Mailbox] | None = None, reply_to: list[Mailbox] | None = None,
         subject: str | None = None, text: str | None = None, html: str | None = None,
         extra: list[tuple[str, str]] | None = None) -> tuple[bytes | None, bytes]:
    """(mimebuild's bytes or None, the email package's bytes), boundaries made equal."""
    to = [BOB] if to is None else to
    direct = mimebuild.build(author, to, cc or [], reply_to or [], subject, text, html,
                             extra or [])
    found = {"to": to, "cc": cc or [], "bcc": []}
    try:
        reference = compose.build_with_email(author, found, reply_to or [], subject, text,
                                             html, extra or [], [], False)
    except (ValueError, TypeError, UnicodeError):
        # What compose answers 400 for: the direct path must not build it either.
        assert direct is None
        return None, b""
    if direct is not None:
        direct = _BOUNDARY.sub(b"B", direct)
    return direct, _BOUNDARY.sub(b"B", reference)


@pytest.mark.parametrize("kwargs", [
    {"text": "Hello.\n"},
    {"text": ""},
    {"text": "no final newline"},
    {"text": "crlf\r\nline ends\r\n"},
    {"text": "x" * 78 + "\n"},                       # 7bit at the limit
    {"text": "x" * 79 + "\n"},                       # past it: quoted-printable
    {"text": "ü" * 100},                             # long non-ASCII: base64
    {"text": "kurz ü\n"},                            # short non-ASCII: 8bit
    {"text": ("line\n" * 12) + "y" * 100},           # qp past the ten-line sniff
    {"text": ("line\n" * 10) + "y" * 100},           # eleven lines: one past it
    {"text": "=" * 200},
    {"text": "trailing space \nand tab\t\n" + "z" * 90},
    {"html": "<p>only html</p>"},
    {"html": "<p>" + "x" * 100 + "</p>"},
    {"text": "both\n", "html": "<p>both</p>\n"},
    {"text": "ü" * 90, "html": "<b>" + "é" * 5 + "</b>"},
    {"text": "--" + "=" * 15, "html": "x"},
    {"subject": "Tea at four", "text": "x"},
    {"subject": "a!b#c$ ~weird~ but (plain) [ascii]", "text": "x"},
    {"subject": "", "text": "x"},
    {"subject": "two  spaces", "text": "x"},
    {"subject": " leading", "text": "x"},
    {"subject": "=?utf-8?q?encoded?=", "text": "x"},
    {"subject": "Tee um vier — ü", "text": "x"},
    {"subject": "long " * 20, "text": "x"},
    {"author": Mailbox("alice@example.org", "Alice Liddell"), "text": "x"},
    {"author": Mailbox("alice@example.org", "Liddell, Alice"), "text": "x"},
    {"author": Mailbox("alice@example.org", "Alice \"the\" L."), "text": "x"},
    {"author": Mailbox("alice@example.org", "Jöran"), "text": "x"},
    {"author": Mailbox("alice@example.org", "=?utf-8?q?x?="), "text": "x"},
    {"author": Mailbox("alice@example.org", "Bob =?utf-8?b?QQ==?="), "text": "x"},
    {"author": Mailbox("alice@example.org", "a=?b x?="), "text": "x"},
    {"author": Mailbox('"a b"@example.org'), "text": "x"},
    {"to": [BOB, Mailbox("carol@example.net", "Carol")], "cc": [ALICE],
     "reply_to": [Mailbox("sales@example.org")], "text": "x"},
    {"to": [Mailbox(f"user{i}@example.org") for i in range(8)], "text": "x"},
    {"to": [Mailbox("x@[192.0.2.1]")], "text": "x"},
    {"to": [Mailbox("=?utf-8?q?x?=@example.org", "Al")], "text": "x"},
    {"to": [Mailbox("a.b+c@example.org"), Mailbox("o'neil@example.org", "A'b"),
            Mailbox("{x}|~@sub.example-1.org", "x/y")], "text": "x"},
    {"extra": [("X-Campaign", "spring"), ("In-Reply-To", "<earlier@example.org>")],
     "text": "x"},
    {"extra": [("References", "<a@example.org> <b@example.org>")], "text": "x"},
    {"extra": [("Date", "Mon, 7 Dec 2026 10:00:00 +0000")], "text": "x"},
    {"extra": [("Message-ID", "<m@example.org>")], "text": "x"},
    {"extra": [("X-Long", "v " * 50)], "text": "x"},
    {"extra": [("Content-Language", "de"), ("Content-ID", "<a@b>")], "text": "x"},
    {"extra": [("Content-Description", "d"), ("Keywords", "k"), ("x-lower", "v")],
     "text": "x", "html": "y"},
])
def test_same_bytes_as_the_email_package(kwargs: dict[str, object]) -> None:
    direct, reference = both(**kwargs)  # type: ignore[arg-type]
    assert direct is None or direct == reference


def test_the_common_shapes_are_written_directly() -> None:
    """The shapes the fast path is for do not fall back (else it saves nothing)."""
    for kwargs in ({"text": "x" * 100}, {"text": "t", "html": "h"},
                   {"author": Mailbox("alice@example.org", "Alice Liddell"),
                    "subject": "Invoice 42", "text": "ü\n",
                    "extra": [("In-Reply-To", "<a@example.org>")]}):
        direct, reference = both(**kwargs)  # type: ignore[arg-type]
        assert direct == reference


@pytest.mark.parametrize("kwargs", [
    {"subject": "Tee um vier — ü", "text": "x"},             # RFC 2047 encoded-word
    {"subject": "=?utf-8?q?x?=", "text": "x"},
    {"subject": "long " * 20, "text": "x"},                 # folded
    {"author": Mailbox("alice@example.org", "Liddell, Alice"), "text": "x"},  # quoted
    {"author": Mailbox("alice@example.org", "=?utf-8?q?x?="), "text": "x"},  # decoded
    {"to": [Mailbox('"a b"@example.org')], "text": "x"},
    # The email package decodes an encoded-word look-alike local part in the header
    # (To: x@example.org for =?utf-8?q?x?=@example.org): its bytes, not ours.
    {"to": [Mailbox("=?utf-8?q?x?=@example.org")], "text": "x"},
    {"extra": [("Date", "Mon, 7 Dec 2026 10:00:00 +0000")], "text": "x"},
    # set_content clears Content-* fields: the email package drops this one.
    {"extra": [("Content-Language", "de")], "text": "x"},
])
def test_other_shapes_are_left_to_the_email_package(kwargs: dict[str, object]) -> None:
    direct, _ = both(**kwargs)  # type: ignore[arg-type]
    assert direct is None


_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                max_size=12)


_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(locals_=st.lists(_LOCAL, min_size=1, max_size=3),
       names=st.lists(st.from_regex(r"[A-Za-z'=?/]{0,6}", fullmatch=True), min_size=3,
                      max_size=3))
def test_same_bytes_for_any_dot_atom_address(locals_: list[str], names: list[str]) -> None:
    to = [Mailbox(f"{local}@example.org", name)
          for local, name in zip(locals_, names[:len(locals_)], strict=True)]
    direct, reference = both(to=to, text="x")
    assert direct is None or direct == reference


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.none(), st.text(max_size=400)),
       html=st.one_of(st.none(), st.text(max_size=200)),
       subject=st.one_of(st.none(), st.text(max_size=90),
                         st.lists(_WORD, min_size=1, max_size=8).map(" ".join)),
       name=st.one_of(st.just(""), st.text(max_size=20),
                      st.from_regex(r"[A-Za-z=?]{1,8}( [A-Za-z=?]{1,8}){0,2}",
                                    fullmatch=True)))
def test_same_bytes_for_any_text(text: str | None, html: str | None, subject: str | None,
                                 name: str) -> None:
    if text is None and html is None:
        text = ""
    if any(s is not None and (re.search(r"[\r\n\x00]", s) or
                              re.search(r"[\ud800-\udfff]", s))
           for s in (subject, name)) or re.search(r"[\ud800-\udfff]", (text or "")
                                                  + (html or "")):
        return  # refused before building (no_injection, the JSON lone-surrogate check)
    direct, reference = both(author=Mailbox("alice@example.org", name), subject=subject,
                             text=text, html=html)
    assert direct is None or direct == reference
