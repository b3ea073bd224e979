"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819) on the in-process session: the
exact untagged responses, option errors, and a LIST with 100 patterns."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_harness import Session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    for name in (b"a", b"a.b", b"a.c", b"d", b"d.e"):
        assert s.command(b"c CREATE " + name)[-1].startswith(b"c OK [MAILBOXID (")
    for name in (b"a.b", b"d.e", b"gone"):
        assert s.command(b"s SUBSCRIBE " + name)[-1].startswith(b"s OK")
    return s


def test_multiple_patterns_list_each_mailbox_once(session: Session) -> None:
    assert session.command(b'l LIST "" (a* a.b d)') == [
        b'* LIST (\\HasChildren) "." a',
        b'* LIST (\\HasNoChildren) "." a.b',
        b'* LIST (\\HasNoChildren) "." a.c',
        b'* LIST (\\HasChildren) "." d',
        b"l OK List completed",
    ]


def test_subscribed_selection_shows_nonexistent(session: Session) -> None:
    assert session.command(b'l LIST (SUBSCRIBED) "" (a* d* gone)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." a.b',
        b'* LIST (\\HasNoChildren \\Subscribed) "." d.e',
        b'* LIST (\\NonExistent \\Subscribed) "." gone',
        b"l OK List completed",
    ]


def test_recursivematch_gives_childinfo(session: Session) -> None:
    assert session.command(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" (a d gone)') == [
        b'* LIST (\\HasChildren) "." a ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\HasChildren) "." d ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\NonExistent \\Subscribed) "." gone',
        b"l OK List completed",
    ]
    # A child that matches a pattern itself is listed itself, its parent not.
    assert session.command(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" (d d.e)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." d.e',
        b"l OK List completed",
    ]


def test_return_options_and_status(session: Session) -> None:
    session.send(b"a APPEND d {14}")
    session.take()
    session.send(b"Subject: x\r\n\r\n")
    assert session.lines()[-1].startswith(b"a OK")
    assert session.command(b'l LIST "" (d d.e) RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))'
                           ) == [
        b'* LIST (\\HasChildren) "." d',
        b"* STATUS d (MESSAGES 1 UNSEEN 1)",
        b'* LIST (\\HasNoChildren \\Subscribed) "." d.e',
        b"* STATUS d.e (MESSAGES 0 UNSEEN 0)",
        b"l OK List completed",
    ]


def test_option_errors_are_bad(session: Session) -> None:
    for command, text in [
        (b'LIST (BOGUS) "" %', b"unknown LIST selection option BOGUS"),
        (b'LIST (RECURSIVEMATCH) "" %', b"RECURSIVEMATCH needs SUBSCRIBED"),
        (b'LIST (RECURSIVEMATCH REMOTE) "" %', b"RECURSIVEMATCH needs SUBSCRIBED"),
        (b'LIST "" % RETURN (BOGUS)', b"unknown LIST return option BOGUS"),
        (b'LIST "" % RETURN (STATUS (SIZES))', b"invalid STATUS items"),
        (b'LIST "" ()', b"expected a mailbox pattern"),
    ]:
        assert session.command(b"b " + command) == [b"b BAD " + text]


def test_a_hundred_patterns_and_one_more(session: Session) -> None:
    """MAX_LIST_PATTERNS: 100 are answered (each mailbox once), 101 are BAD [LIMIT]."""
    patterns = b" ".join(b"x%d*" % i for i in range(99)) + b" *"
    reply = session.command(b'l LIST "" (' + patterns + b")")
    assert reply[-1] == b"l OK List completed"
    assert len(reply) == 1 + 10  # INBOX, Drafts, Junk, Sent, Trash, a a.b a.c d d.e
    reply = session.command(b'l LIST "" (' + patterns + b" y)")
    assert reply == [b"l BAD [LIMIT] too many patterns (100 at most)"]


def test_capabilities(session: Session) -> None:
    caps = session.command(b"c CAPABILITY")[0].split()
    assert b"LIST-EXTENDED" in caps and b"LIST-STATUS" in caps
