"""Corner cases found by a compliance review against RFC 3501 and its extensions and
Dovecot's imaptest scripts (src/tests/ in https://github.com/dovecot/imaptest): each
test failed before its fix. Sessions over StringTransport with the real store."""

from __future__ import annotations

from pathlib import Path

from session_harness import Session

MESSAGE = b"From: a@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n"


def append(session: Session, count: int, folder: bytes = b"INBOX") -> None:
    for n in range(count):
        data = MESSAGE % (n, n)
        session.send(b"ap APPEND " + folder + b" {%d+}\r\n" % len(data) + data)
        assert session.lines()[-1].startswith(b"ap OK [APPENDUID"), n


def two_sessions(tmp_path: Path, messages: int) -> tuple[Session, Session]:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, messages)
    a.command(b"s SELECT INBOX")
    b.command(b"s SELECT INBOX")
    return a, b


def test_copy_or_move_of_messages_expunged_elsewhere_is_refused(tmp_path: Path) -> None:
    """RFC 4315's uid-set is never empty: 'OK [COPYUID 17  ]' broke client parsers.
    Nothing copied -> NO [EXPUNGEISSUED] (RFC 2180 4.4.1, RFC 5530)."""
    a, b = two_sessions(tmp_path, 3)
    a.command(b"c CREATE Archive")
    b.command(b"x STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    b.command(b"e EXPUNGE")
    copied = a.command(b"c COPY 1 Archive")
    assert copied[-1] == b"c NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    assert not any(b"COPYUID" in line for line in copied)
    moved = a.command(b"m MOVE 2 Archive")
    assert moved[-1] == b"m NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    assert not any(b"COPYUID" in line for line in moved)
    a.command(b"n NOOP")
    # the message that still exists is copied as usual
    assert a.command(b"c COPY 1 Archive")[-1].startswith(b"c OK [COPYUID ")
    assert a.command(b"t STATUS Archive (MESSAGES)")[0] == b"* STATUS Archive (MESSAGES 1)"


def test_examine_shows_recent_without_taking_it(tmp_path: Path) -> None:
    """RFC 3501 6.3.2: EXAMINE returns the same output as SELECT and MUST NOT cause
    messages to lose \\Recent: new mail shows as recent to the examining session, and
    the next SELECT still gets it."""
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(b, 2)
    examined = a.command(b"e EXAMINE INBOX")
    assert b"* 2 RECENT" in examined and examined[-1] == b"e OK [READ-ONLY] Examine completed"
    assert a.command(b"f FETCH 1:* FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))",
                                              b"* 2 FETCH (FLAGS (\\Recent))",
                                              b"f OK Fetch completed"]
    append(b, 1)
    assert a.command(b"n NOOP") == [b"* 3 EXISTS", b"* 3 RECENT", b"n OK Noop completed"]
    assert a.command(b"r SEARCH RECENT") == [b"* SEARCH 1 2 3", b"r OK Search completed"]
    assert b"* 3 RECENT" in b.command(b"s SELECT INBOX")  # EXAMINE took nothing
    a.command(b"c CLOSE")
    assert b"* 0 RECENT" in a.command(b"e EXAMINE INBOX")  # now they are b's


def test_search_from_matches_the_parsed_address(tmp_path: Path) -> None:
    """RFC 3501 6.4.4: FROM/TO/CC/BCC search the envelope's address, so comments and
    spaces around the @ do not hide it (imaptest search-addresses, message 3)."""
    s = Session(tmp_path)
    s.login()
    for data in (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
                 b"To: Real \\\"Quoted\\\" <user-to@domain.org>\r\n\r\nbody3\r\n",
                 b"From: other@domain.org (user-from@domain.org is not me)\r\n\r\nx\r\n",
                 b"From: someone@else.org\r\n\r\nx\r\n"):
        s.send(b"ap APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert s.lines()[-1].startswith(b"ap OK")
    s.command(b"s SELECT INBOX")
    assert s.command(b"q SEARCH FROM user-from@domain.org") == [
        b"* SEARCH 1 2", b"q OK Search completed"]
    assert s.command(b"q SEARCH FROM USER-FROM@DOMAIN") == [
        b"* SEARCH 1 2", b"q OK Search completed"]
    assert s.command(b"q SEARCH TO user-to@domain.org") == [
        b"* SEARCH 1", b"q OK Search completed"]
    assert s.command(b"q SEARCH NOT FROM user-from@domain.org") == [
        b"* SEARCH 3", b"q OK Search completed"]


def test_list_pattern_spelling_inbox_in_another_case(tmp_path: Path) -> None:
    """RFC 3501 5.1: INBOX is case-insensitive, so "inbox*" lists INBOX and its
    children (as Dovecot does), while other names still match case-sensitively."""
    s = Session(tmp_path)
    s.login()
    for name in (b"inbox.child", b"Inbound", b"inboxes"):
        assert s.command(b"c CREATE " + name)[-1].startswith(b"c OK [MAILBOXID (")

    def listed(pattern: bytes) -> list[bytes]:
        reply = s.command(b'l LIST "" ' + pattern)
        assert reply[-1] == b"l OK List completed"
        return [line.rsplit(b" ", 1)[1] for line in reply[:-1]]

    assert listed(b'"iNbOx*"') == [b"INBOX", b"INBOX.child"]
    assert listed(b"inb*") == [b"INBOX", b"INBOX.child", b"inboxes"]
    assert listed(b"Inb%") == [b"INBOX", b"Inbound"]
    assert listed(b"inbox%") == [b"INBOX", b"inboxes"]
    assert listed(b"INBOX.*") == [b"INBOX.child"]


def test_fetch_item_errors_name_the_item_not_python_bytes(tmp_path: Path) -> None:
    """The BAD text went out as `unknown FETCH item b')\\r\\n'` (a Python repr)."""
    s = Session(tmp_path)
    s.login()
    append(s, 1)
    s.command(b"s SELECT INBOX")
    assert s.command(b"a FETCH 1 ()") == [b"a BAD expected a FETCH item"]
    assert s.command(b"b FETCH 1 (FLAGS )") == [b"b BAD expected a FETCH item"]
    assert s.command(b"c FETCH 1 X-GM-LABELS") == [b"c BAD unknown FETCH item X-GM-LABELS"]
    assert s.command(b"d FETCH 1 (UID X-GUID)") == [b"d BAD unknown FETCH item X-GUID"]
    assert s.command(b"e FETCH 1 (FLAGS UID)")[-1] == b"e OK Fetch completed"


def test_status_of_the_selected_mailbox_counts_its_own_recent(tmp_path: Path) -> None:
    """RFC 3501 7.3.2 RECENT: the messages with \\Recent, which includes the ones this
    session holds (STATUS said 0 right after SELECT had said 2; Dovecot says 2)."""
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(b, 2)
    assert b"* 2 RECENT" in a.command(b"s SELECT INBOX")
    assert a.command(b"t STATUS INBOX (MESSAGES RECENT)") == [
        b"* STATUS INBOX (MESSAGES 2 RECENT 2)", b"t OK Status completed"]
    append(b, 1)  # not yet claimed by a: recent to whoever syncs first, counted once
    assert a.command(b"t STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 3)"
    assert b.command(b"t STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 0)"
    a.command(b"e EXAMINE INBOX")
    assert a.command(b"t STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 0)"


def test_new_keywords_are_announced_with_flags(tmp_path: Path) -> None:
    """RFC 3501 7.2.6: a keyword created after SELECT is announced with FLAGS and
    PERMANENTFLAGS (to the session that stored it and to the others), before the FETCH
    that shows it, once; keywords compare case-insensitively. Dovecot does the same."""
    a, b = two_sessions(tmp_path, 2)
    system = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"
    assert a.command(b"1 STORE 1 +FLAGS ($Forwarded)") == [
        b"* FLAGS (" + system + b" $Forwarded)",
        b"* OK [PERMANENTFLAGS (" + system + b" $Forwarded \\*)] Flags permitted",
        b"* 1 FETCH (FLAGS ($Forwarded \\Recent))", b"1 OK Store completed"]
    assert a.command(b"2 STORE 2 +FLAGS.SILENT ($forwarded)") == [b"2 OK Store completed"]
    assert b.command(b"n NOOP") == [
        b"* FLAGS (" + system + b" $Forwarded)",
        b"* OK [PERMANENTFLAGS (" + system + b" $Forwarded \\*)] Flags permitted",
        b"* 1 FETCH (UID 1 FLAGS ($Forwarded))", b"* 2 FETCH (UID 2 FLAGS ($Forwarded))",
        b"n OK Noop completed"]
    assert a.command(b"3 STORE 1 -FLAGS ($Forwarded)") == [
        b"* 1 FETCH (FLAGS (\\Recent))", b"3 OK Store completed"]


def test_authenticate_as_another_user_is_no_not_bad(tmp_path: Path) -> None:
    """RFC 3501 6.2.2: rejected credentials are NO; the SASL PLAIN message asking to
    act as another user (authzid != authcid) is well-formed, so BAD was wrong."""
    import base64

    s = Session(tmp_path)
    s.take()
    response = base64.b64encode(b"bob@example.org\0alice@example.org\0secret")
    assert s.command(b"a AUTHENTICATE PLAIN " + response) == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert s.protocol.auth_failures == 1
    same = base64.b64encode(b"Alice@example.org\0alice@example.org\0secret")
    assert s.command(b"b AUTHENTICATE PLAIN " + same)[-1].startswith(b"b OK [CAPABILITY")


def test_an_overlong_authenticate_response_ends_the_exchange(tmp_path: Path) -> None:
    """A refused (overlong) line while AUTHENTICATE waits for its `+` answer ends the
    exchange; the next line is a command again, not taken as the SASL response."""
    s = Session(tmp_path)
    s.take()
    assert s.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
    s.send(b"A" * (70 * 1024))
    replies = s.lines()
    assert replies[-1] == b"a BAD Authentication cancelled", replies
    assert s.command(b"n NOOP") == [b"n OK Noop completed"]
