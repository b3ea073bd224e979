"""STATUS=SIZE (RFC 8438), in STATUS and in LIST-STATUS (RFC 5819)."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_harness import Session

M1 = b"Subject: one\r\n\r\nbody\r\n"            # 22 octets
M2 = b"Subject: two\r\n\r\nlonger body\r\n"     # 29 octets


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def append(session: Session, message: bytes) -> None:
    session.send(b"a APPEND INBOX {%d}" % len(message))
    assert session.lines() == [b"+ Ready for literal data"]
    session.send(message)
    assert session.lines()[-1].startswith(b"a OK")


def test_status_size_follows_appends_and_expunges(session: Session) -> None:
    assert session.command(b"s STATUS INBOX (SIZE)") == [
        b"* STATUS INBOX (SIZE 0)", b"s OK Status completed"]
    append(session, M1)
    append(session, M2)
    assert session.command(b"s STATUS INBOX (MESSAGES SIZE)") == [
        b"* STATUS INBOX (MESSAGES 2 SIZE %d)" % (len(M1) + len(M2)), b"s OK Status completed"]
    session.command(b"s SELECT INBOX")
    session.command(b"t STORE 1 +FLAGS.SILENT (\\Deleted)")
    session.command(b"e EXPUNGE")
    assert session.command(b"s STATUS INBOX (SIZE)")[0] == b"* STATUS INBOX (SIZE %d)" % len(M2)
    assert session.command(b'l LIST "" (INBOX) RETURN (STATUS (SIZE))') == [
        b'* LIST (\\HasNoChildren) "." INBOX', b"* STATUS INBOX (SIZE %d)" % len(M2),
        b"l OK List completed"]
    assert b"STATUS=SIZE" in session.command(b"c CAPABILITY")[0].split()


def test_create_special_use_is_kept_through_rename_and_gone_with_delete(
        session: Session) -> None:
    """RFC 6154 5.2: CREATE ... (USE (\\Archive)); the attribute lives in the folder's
    directory, so it follows RENAME and goes with DELETE."""
    assert session.command(b"c CREATE Old (USE (\\archive))")[-1].startswith(b"c OK [MAILBOXID (")
    assert (session.config.mail_dir / "example.org" / "alice" / ".Old"
            / "mailserver-special-use").read_bytes() == b"\\Archive\n"
    assert session.command(b'l LIST (SPECIAL-USE) "" O*') == [
        b'* LIST (\\HasNoChildren \\Archive) "." Old', b"l OK List completed"]
    session.command(b"r RENAME Old Kept")
    assert session.command(b'l LIST "" K*') == [
        b'* LIST (\\HasNoChildren \\Archive) "." Kept', b"l OK List completed"]
    session.command(b"d DELETE Kept")
    session.command(b"c CREATE Kept")
    assert session.command(b'l LIST "" K*') == [
        b'* LIST (\\HasNoChildren) "." Kept', b"l OK List completed"]
    assert b"CREATE-SPECIAL-USE" in session.command(b"c CAPABILITY")[0].split()


@pytest.mark.parametrize("use", [b"(\\All)", b"(\\Flagged)", b"(\\Bogus)",
                                 b"(\\Drafts \\Sent)"])
def test_create_special_use_refusals_create_nothing(session: Session, use: bytes) -> None:
    reply = session.command(b"c CREATE Box (USE " + use + b")")
    assert reply[0].startswith(b"c NO [USEATTR] Cannot create a mailbox with USE ("), reply
    assert session.command(b'l LIST "" Box') == [b"l OK List completed"]
