"""UTF8=ACCEPT (RFC 6855): after ENABLE, mailbox names are UTF-8 both ways (modified
UTF-7 on disk as before), and APPEND takes UTF8 (~{n})."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_harness import Session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def test_enable_then_utf8_names_both_ways(session: Session, tmp_path: Path) -> None:
    assert b"UTF8=ACCEPT" in session.command(b"c CAPABILITY")[0].split()
    assert session.command(b"e ENABLE UTF8=ACCEPT") == [
        b"* ENABLED UTF8=ACCEPT", b"e OK Enable completed"]
    assert session.command(b"e ENABLE UTF8=ACCEPT X-UNKNOWN") == [
        b"* ENABLED", b"e OK Enable completed"]  # RFC 5161: only what this one enabled
    assert session.command('c CREATE "Café.Ünter"'.encode())[-1].startswith(b"c OK [MAILBOXID (")
    assert session.command(b'c CREATE "A&B"')[-1].startswith(b"c OK [MAILBOXID (")
    maildir = session.config.mail_dir / "example.org" / "alice"
    assert (maildir / ".Caf&AOk-.&ANw-nter" / "cur").is_dir()
    assert (maildir / ".A&-B" / "cur").is_dir()
    assert session.command(b'l LIST "" "Caf*"') == [
        '* LIST (\\HasChildren) "." "Café"'.encode(),
        '* LIST (\\HasNoChildren) "." "Café.Ünter"'.encode(),
        b"l OK List completed"]
    assert session.command('l LIST "" ("Café.%" A*) RETURN (STATUS (MESSAGES))'.encode()) == [
        b'* LIST (\\HasNoChildren) "." "A&B"', b'* STATUS "A&B" (MESSAGES 0)',
        '* LIST (\\HasNoChildren) "." "Café.Ünter"'.encode(),
        '* STATUS "Café.Ünter" (MESSAGES 0)'.encode(),
        b"l OK List completed"]
    message = "Subject: Grüße\r\n\r\nhé\r\n".encode()
    session.send('a APPEND "Café" UTF8 (~{%d}'.encode() % len(message))
    assert session.lines() == [b"+ Ready for literal data"]
    session.send(message + b")")
    assert session.lines()[-1].startswith(b"a OK [APPENDUID ")
    assert session.command('s STATUS "Café" (MESSAGES)'.encode()) == [
        '* STATUS "Café" (MESSAGES 1)'.encode(), b"s OK Status completed"]
    assert session.command('s SELECT "Café"'.encode())[-1] == b"s OK [READ-WRITE] Select completed"
    # Another session, not enabled, sees modified UTF-7 as before.
    other = Session(tmp_path, session.config)
    other.login()
    assert other.command(b'l LIST "" Caf*') == [
        b'* LIST (\\HasChildren) "." Caf&AOk-', b'* LIST (\\HasNoChildren) "." Caf&AOk-.&ANw-nter',
        b"l OK List completed"]


def test_without_enable_utf8_names_are_refused(session: Session) -> None:
    assert session.command('c CREATE "Café"'.encode()) == [
        b"c NO [CANNOT] mailbox names must be modified UTF-7 (RFC 3501 5.1.3)"]


def test_control_characters_in_a_utf8_name_are_bad(session: Session) -> None:
    session.command(b"e ENABLE UTF8=ACCEPT")
    assert session.command('c CREATE "é\x01x"'.encode()) == [
        b"c BAD control characters in mailbox name"]
    assert session.command(b"n NOOP") == [b"n OK Noop completed"]
