"""MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469) on the in-process session: what is
stored (bytes in the Maildir, FETCH), the tagged answers, and the hostile forms (a
literal too big among several, URLs to other users' mailboxes or missing UIDs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from session_harness import Session

from mailserver.imap import grammar
from mailserver.imap.grammar_ext import AppendMany, ImapUrl, parse_url

M1 = b"From: a@example.org\r\nSubject: one\r\n\r\nbody one\r\n"
M2 = b"From: b@example.org\r\nSubject: two\r\n\r\nbody two\r\n"
M3 = b"From: c@example.org\r\nSubject: three\r\n\r\nbody three\r\n"


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def stored(session: Session, user: str = "alice") -> list[bytes]:
    """The bytes on disk (LF ends) of the messages in `user`'s INBOX, sorted."""
    inbox = session.config.mail_dir / "example.org" / user
    return sorted(p.read_bytes() for p in (inbox / "new").iterdir())


def send_literals(session: Session, head: bytes, literals: list[bytes],
                  between: list[bytes] | None = None, tail: bytes = b"") -> list[bytes]:
    """Send `head {n1}` + lit1 + between[0] + `{n2}` ... synchronizing, as a client does;
    returns every line the server sent."""
    between = between or [b" "] * (len(literals) - 1)
    out: list[bytes] = []
    session.send(head + b"{%d}" % len(literals[0]))
    for i, lit in enumerate(literals):
        out += session.lines()
        if out and not out[-1].startswith(b"+"):
            return out
        nxt = (between[i] + b"{%d}" % len(literals[i + 1])) if i + 1 < len(literals) else tail
        session.send(lit + nxt)
    return out + session.lines()


def test_multiappend_stores_every_message_with_one_appenduid(session: Session) -> None:
    lines = send_literals(session, b"a APPEND INBOX (\\Seen) ", [M1, M2, M3],
                          [b' (\\Flagged) "01-Jan-2020 10:00:00 +0000" ', b" "])
    assert lines[-1] == b"a OK [APPENDUID %s 1:3] Append completed" % (
        re.search(rb"APPENDUID (\d+)", lines[-1]).group(1))  # type: ignore[union-attr]
    assert sorted(stored(session)) == sorted(m.replace(b"\r\n", b"\n") for m in (M1, M2, M3))
    session.command(b"s SELECT INBOX")
    fetched = session.command(b"f FETCH 1:3 (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    text = b"\n".join(fetched)
    assert b"* 1 FETCH (FLAGS (\\Seen \\Recent)" in text
    assert b'* 2 FETCH (FLAGS (\\Flagged \\Recent) INTERNALDATE " 1-Jan-2020 10:00:00 +0000"' in text
    assert fetched.index(b"Subject: one") < fetched.index(b"Subject: two") \
        < fetched.index(b"Subject: three")


def test_multiappend_third_literal_too_big_appends_none(session: Session) -> None:
    """RFC 3502: all or nothing. The third literal is over APPENDLIMIT: NO [TOOBIG] with
    no "+" (RFC 7889), and the first two are not stored either."""
    big = 100001  # the harness's message_size is 100000
    session.send(b"a APPEND INBOX {%d}" % len(M1))
    assert session.lines() == [b"+ Ready for literal data"]
    session.send(M1 + b" {%d}" % len(M2))
    assert session.lines() == [b"+ Ready for literal data"]
    session.send(M2 + b" {%d}" % big)
    assert session.lines() == [b"a NO [TOOBIG] Message too large"]
    assert stored(session) == []
    assert session.command(b"b NOOP") == [b"b OK Noop completed"]


def test_multiappend_with_a_bad_flag_or_missing_folder_appends_none(session: Session) -> None:
    lines = send_literals(session, b"a APPEND INBOX ", [M1, M2], [b" (\\Bogus) "])
    assert lines[-1] == b"a BAD Invalid system flag \\Bogus"
    lines = send_literals(session, b"b APPEND Nowhere ", [M1, M2])
    assert lines[-1] == b"b NO [TRYCREATE] Mailbox does not exist (create it first)"
    assert stored(session) == []


def test_multiappend_of_big_messages_collected_apart(session: Session) -> None:
    """Literals over server.BIG_LITERAL (64 KiB): the first is collected apart, then put
    back in its place because more follows; the last, big too, also lands intact."""
    b1 = b"Subject: big1\r\n\r\n" + b"x" * 70000 + b"\r\n"
    b2 = b"Subject: big2\r\n\r\n" + b"y" * 30000 + b"\r\n"
    b3 = b"Subject: big3\r\n\r\n" + b"z" * 70000 + b"\r\n"
    lines = send_literals(session, b"a APPEND INBOX ", [b1, b2, b3])
    assert lines[-1].startswith(b"a NO [TOOBIG]")  # 170 KB: over APPENDLIMIT + 64 KiB for the command
    assert stored(session) == []
    lines = send_literals(session, b"b APPEND INBOX ", [b2, b3])
    assert lines[-1].startswith(b"b OK [APPENDUID "), lines
    assert sorted(stored(session)) == sorted(m.replace(b"\r\n", b"\n") for m in (b2, b3))
    lines = send_literals(session, b"c APPEND INBOX ", [b1, M1])
    assert lines[-1].startswith(b"c OK [APPENDUID "), lines
    assert len(stored(session)) == 4


def test_catenate_text_and_urls(session: Session) -> None:
    send_literals(session, b"a APPEND INBOX ", [M1, M2])
    lines = send_literals(
        session, b"b APPEND INBOX CATENATE (TEXT ", [b"X-New: yes\r\n"],
        tail=b' URL "/INBOX/;UID=1/;SECTION=HEADER" URL "/INBOX;UIDVALIDITY=%s/;UID=2/;SECTION=TEXT"'
             b" URL \"imap://alice%%40example.org@imap.test.example/INBOX/;UID=1/;PARTIAL=0.4\")"
        % uidvalidity(session))
    assert lines[-1].startswith(b"b OK [APPENDUID "), lines
    want = b"X-New: yes\r\n" + M1[:M1.index(b"\r\n\r\n") + 4] + b"body two\r\n" + b"From"
    assert want.replace(b"\r\n", b"\n") in stored(session)


def uidvalidity(session: Session) -> bytes:
    status = session.command(b"s STATUS INBOX (UIDVALIDITY)")
    return re.search(rb"UIDVALIDITY (\d+)", status[0]).group(1)  # type: ignore[union-attr]


def test_catenate_bad_urls_are_badurl_and_append_nothing(session: Session,
                                                         tmp_path: Path) -> None:
    send_literals(session, b"a APPEND INBOX ", [M1])
    bob = Session(tmp_path)
    bob.login(b"bob@example.org")
    send_literals(bob, b"a APPEND INBOX ", [M2])
    before = stored(session)
    cases = {
        # another user's mailbox (RFC 4469 5: same user only)
        b"imap://bob%40example.org@imap.test.example/INBOX/;UID=1":
            b"[BADURL imap://bob%40example.org@imap.test.example/INBOX/;UID=1]",
        b"/INBOX/;UID=7": b"[BADURL /INBOX/;UID=7]",                 # a missing UID
        b"/INBOX;UIDVALIDITY=1/;UID=1": b"[BADURL /INBOX;UIDVALIDITY=1/;UID=1]",
        b"/Nowhere/;UID=1": b"[BADURL /Nowhere/;UID=1]",
        b"/INBOX/;UID=1/;URLAUTH=anonymous": b"[BADURL /INBOX/;UID=1/;URLAUTH=anonymous]",
        b"/INBOX/;UID=1/;SECTION=HEADER]x": b"[BADURL /INBOX/;UID=1/;SECTION=HEADER%5Dx]",
    }
    for n, (url, code) in enumerate(cases.items()):
        lines = send_literals(session, b"c%d APPEND INBOX CATENATE (TEXT " % n, [M3],
                              tail=b' URL "' + url + b'")')
        assert lines[-1] == b"c%d NO %s CATENATE URL names no message of yours" % (n, code)
    # One bad URL among MULTIAPPEND's messages: none of them is stored.
    lines = send_literals(session, b"d APPEND INBOX ", [M2],
                          tail=b' CATENATE (URL "/INBOX/;UID=9")')
    assert lines[-1] == b"d NO [BADURL /INBOX/;UID=9] CATENATE URL names no message of yours"
    assert stored(session) == before


def test_catenate_too_big_and_to_missing_folder(session: Session) -> None:
    part = b"Subject: x\r\n\r\n" + b"a" * 60000 + b"\r\n"
    send_literals(session, b"a APPEND INBOX ", [part])
    lines = send_literals(session, b"b APPEND INBOX CATENATE (URL \"/INBOX/;UID=1\" TEXT ",
                          [b"more" * 20000], tail=b")")
    assert lines[-1] == b"b NO [TOOBIG] Message too large"
    lines = send_literals(session, b"c APPEND Nowhere CATENATE (TEXT ", [b"x"],
                          tail=b' URL "/INBOX;UIDVALIDITY=1/;UID=1")')
    assert lines[-1] == b"c NO [TRYCREATE] Mailbox does not exist (create it first)"
    assert len(stored(session)) == 1


def test_capabilities_and_grammar() -> None:
    command = grammar.parse_command(
        b'a APPEND INBOX (\\Seen) CATENATE (URL "/a%20b/;uid=3/;section=1.MIME" TEXT {1}\r\n'
        b"x) {2}\r\nyz\r\n")
    assert isinstance(command, AppendMany)
    first, second = command.messages
    url = first.parts[0]
    assert isinstance(url, ImapUrl) and url.mailbox == "a b" and url.uid == 3
    assert url.section is not None and url.section.part == (1,) and url.section.spec == "MIME"
    assert first.parts[1] == b"x" and second.parts == (b"yz",)
    assert parse_url(b"/INBOX.%C3%A9t%C3%A9/;UID=1").mailbox == "INBOX.&AOk-t&AOk-"
    with pytest.raises(grammar.ParseError):
        grammar.parse_command(b"a APPEND INBOX CATENATE ()\r\n")
    with pytest.raises(grammar.ParseError):
        grammar.parse_command(b"a APPEND INBOX CATENATE (FOO {1}\r\nx)\r\n")
    with pytest.raises(grammar.ParseError):
        grammar.parse_command(b"a APPEND INBOX\r\n")


def test_capability_lists_multiappend_and_catenate(session: Session) -> None:
    caps = session.command(b"c CAPABILITY")[0].split()
    assert b"MULTIAPPEND" in caps and b"CATENATE" in caps


def test_catenate_limits_and_nul_in_text(session: Session) -> None:
    parts = b" ".join([b'URL "/INBOX/;UID=1"'] * 101)
    assert session.command(b"a APPEND INBOX CATENATE (" + parts + b")") == [
        b"a BAD [LIMIT] too many CATENATE parts (100 at most)"]
    lines = send_literals(session, b"b APPEND INBOX CATENATE (TEXT ", [b"Subject: x\r\n\r\na\x00b"],
                          tail=b")")
    assert lines[-1] == (b"b BAD [CLIENTBUG] NUL in a literal; send binary content as "
                         b"literal8 (~{n})")
    # The same octets as literal8 are stored (re-encoded as base64, see test_imap_binary).
    session.send(b"c APPEND INBOX CATENATE (TEXT ~{17}")
    assert session.lines() == [b"+ Ready for literal data"]
    session.send(b"Subject: x\r\n\r\na\x00b)")
    assert session.lines()[-1].startswith(b"c OK [APPENDUID ")
    assert stored(session) == [b"Subject: x\nContent-Transfer-Encoding: base64\n\nYQBi"]


def test_many_urls_to_one_big_message_are_bounded(session: Session) -> None:
    """Each URL's data counts against one budget for the whole APPEND (APPENDLIMIT +
    64 KiB), so twenty URLs to a 60 KB message are TOOBIG, not twenty copies; more than
    100 URLs in one APPEND are BAD [LIMIT] before anything is read."""
    big = b"Subject: big\r\n\r\n" + b"b" * 60000 + b"\r\n"
    send_literals(session, b"a APPEND INBOX ", [big])
    many = b" ".join([b'CATENATE (URL "/INBOX/;UID=1/;SECTION=TEXT")'] * 20)
    assert session.command(b"b APPEND Junk " + many) == [b"b NO [TOOBIG] Message too large"]
    urls = b" ".join([b'URL "/INBOX/;UID=1/;PARTIAL=0.1"'] * 50)
    assert session.command(b"c APPEND Junk CATENATE (" + urls + b") CATENATE (" + urls
                           + b' URL "/INBOX/;UID=1")') == [
        b"c BAD [LIMIT] too many CATENATE URLs (100 at most)"]
    assert session.command(b"d STATUS Junk (MESSAGES)")[0] == b"* STATUS Junk (MESSAGES 0)"


def test_two_spaces_between_messages_as_imapclient_sends() -> None:
    """IMAPClient 4.1's multiappend() writes " " after a literal and " {n+}" before the
    next: two spaces. Taken between messages only."""
    command = grammar.parse_command(b"a APPEND INBOX {1+}\r\nx  {1+}\r\ny\r\n")
    assert isinstance(command, AppendMany)
    assert [m.parts for m in command.messages] == [(b"x",), (b"y",)]
    with pytest.raises(grammar.ParseError):
        grammar.parse_command(b"a APPEND INBOX  {1+}\r\nx\r\n")
