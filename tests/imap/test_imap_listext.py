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


def test_list_status_highestmodseq(session: Session) -> None:
    """RFC 5819 2 takes any STATUS item, and CONDSTORE adds HIGHESTMODSEQ (RFC 7162
    3.1.9): it was answered NO [SERVERBUG] (a KeyError in the LIST-STATUS answer)."""
    session.send(b"a APPEND d {14}")
    session.take()
    session.send(b"Subject: x\r\n\r\n")
    assert session.lines()[-1].startswith(b"a OK")
    expected = [int(line.rsplit(b" ", 1)[1][:-1]) for line in (
        session.command(b"s STATUS %s (HIGHESTMODSEQ)" % name)[0] for name in (b"d", b"d.e"))]
    assert session.command(
        b'l LIST "" (d d.e) RETURN (STATUS (MESSAGES HIGHESTMODSEQ))') == [
        b'* LIST (\\HasChildren) "." d',
        b"* STATUS d (MESSAGES 1 HIGHESTMODSEQ %d)" % expected[0],
        b'* LIST (\\HasNoChildren) "." d.e',
        b"* STATUS d.e (MESSAGES 0 HIGHESTMODSEQ %d)" % expected[1],
        b"l OK List completed",
    ]
    assert expected[0] > 0 and expected[1] > 0


def test_list_status_recent_of_the_selected_mailbox_is_statuss(session: Session) -> None:
    """RFC 5819 2 / RFC 3501 7.3.2: the STATUS a LIST-STATUS returns for the selected
    mailbox counts this session's \\Recent messages as STATUS does; it said RECENT 0
    while STATUS said 1 (the selecting session had claimed the new message)."""
    session.send(b"a APPEND d {14}")
    session.take()
    session.send(b"Subject: x\r\n\r\n")
    assert session.lines()[-1].startswith(b"a OK")
    assert session.command(b"s SELECT d")[-1] == b"s OK [READ-WRITE] Select completed"
    assert session.command(b"t STATUS d (MESSAGES RECENT)") == [
        b"* STATUS d (MESSAGES 1 RECENT 1)", b"t OK Status completed"]
    assert session.command(b'l LIST "" (d d.e) RETURN (STATUS (MESSAGES RECENT))') == [
        b'* LIST (\\HasChildren) "." d',
        b"* STATUS d (MESSAGES 1 RECENT 1)",
        b'* LIST (\\HasNoChildren) "." d.e',
        b"* STATUS d.e (MESSAGES 0 RECENT 0)",
        b"l OK List completed",
    ]
