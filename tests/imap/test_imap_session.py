"""The IMAP session state machine over StringTransport, with the real store on a temp
Maildir and disk calls run inline (or held, to test ordering)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from session_harness import PASSWORD, PausingTransport, Session, make_config

from mailserver.imap import fetch as fetching

MESSAGE = b"From: a@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n"


def append(session: Session, count: int, folder: bytes = b"INBOX") -> None:
    for n in range(count):
        data = MESSAGE % (n, n)
        session.send(b"ap APPEND " + folder + b" {%d+}\r\n" % len(data) + data)
        assert session.lines()[-1].startswith(b"ap OK [APPENDUID"), n


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path)


def test_greeting_and_logindisabled_without_tls(tmp_path: Path) -> None:
    s = Session(tmp_path, make_config(tmp_path, allow_plaintext_without_tls=False),
                tls=object())
    greeting = s.take()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b" STARTTLS " in greeting and b" LOGINDISABLED " in greeting
    assert b"AUTH=PLAIN" not in greeting
    assert s.command(b"a LOGIN alice@example.org secret") == [
        b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use "
        b"STARTTLS"]
    assert s.command(b"b AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==")[0] \
        .startswith(b"b NO [PRIVACYREQUIRED]")
    assert s.command(b"c SELECT INBOX") == [b"c BAD SELECT needs authentication first"]


def test_state_machine(session: Session) -> None:
    session.take()
    assert session.command(b"a FETCH 1 FLAGS") == [b"a BAD FETCH needs authentication first"]
    session.login()
    assert session.command(b"b LOGIN x y") == [b"b BAD LOGIN is only valid before "
                                                b"authentication"]
    assert session.command(b"c FETCH 1 FLAGS") == [b"c BAD FETCH needs a selected mailbox"]
    assert session.command(b"d FROB") == [b"d BAD unknown command FROB"]
    assert session.command(b"e SELECT INBOX")[-1] == b"e OK [READ-WRITE] Select completed"
    assert session.command(b"f CLOSE") == [b"f OK Close completed"]
    assert session.command(b"g EXPUNGE") == [b"g BAD EXPUNGE needs a selected mailbox"]
    assert session.command(b"h LOGOUT") == [b"* BYE Logging out", b"h OK Logout completed"]
    assert session.transport.disconnecting


def test_authenticate_plain_continuation_and_sasl_ir(session: Session) -> None:
    session.take()
    assert session.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
    assert session.command(b"*") == [b"a BAD Authentication cancelled"]
    assert session.command(b"b AUTHENTICATE PLAIN") == [b"+ "]
    assert session.command(b"!!notbase64") == [b"b BAD Invalid SASL response: invalid "
                                               b"base64 data"]
    assert session.command(b"c AUTHENTICATE CRAM-MD5")[0].startswith(b"c NO [CANNOT]")
    token = base64.b64encode(b"\0alice@example.org\0" + PASSWORD.encode())
    reply = session.command(b"d AUTHENTICATE PLAIN " + token)
    assert reply[-1].startswith(b"d OK [CAPABILITY IMAP4rev1")
    assert b"AUTH=PLAIN" not in reply[-1] and b"UIDPLUS" in reply[-1]


def test_pipelined_commands_wait_for_the_disk(session: Session) -> None:
    session.login()
    append(session, 2)
    session.disk.hold = True
    session.send(b"a SELECT INBOX\r\nb FETCH 1:* (FLAGS)\r\nc NOOP", crlf=True)
    assert session.take() == b""  # SELECT waits for its disk call; nothing else ran
    assert len(session.disk.held) == 1
    session.disk.hold = False
    session.disk.release()
    lines = session.lines()
    tags = [line.split(b" ")[0] for line in lines if not line.startswith(b"*")]
    assert tags == [b"a", b"b", b"c"]
    assert b"* 2 FETCH (FLAGS (\\Recent))" in lines


def test_select_responses(session: Session) -> None:
    session.login()
    append(session, 3)
    session.command(b"s SELECT INBOX")
    session.command(b"st STORE 1 +FLAGS ($Work \\Seen)")
    session.command(b"c CLOSE")
    lines = session.command(b"a SELECT inbox")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)"
    assert lines[1] == (b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
                        b"\\Draft $Work \\*)] Flags permitted")
    assert lines[2:5] == [b"* 3 EXISTS", b"* 0 RECENT", b"* OK [UNSEEN 2] First unseen"]
    assert lines[5].startswith(b"* OK [UIDVALIDITY ")
    assert lines[6] == b"* OK [UIDNEXT 4] Predicted next UID"
    assert lines[7].startswith(b"* OK [MAILBOXID (F") and lines[7].endswith(b")] Ok")
    assert lines[8] == b"a OK [READ-WRITE] Select completed"
    examine = session.command(b"b EXAMINE INBOX")
    assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in examine
    assert examine[-1] == b"b OK [READ-ONLY] Examine completed"
    assert session.command(b"c STORE 1 +FLAGS \\Deleted") == [
        b"c NO [CANNOT] Mailbox is read-only (EXAMINE)"]
    # EXAMINE never sets \Seen
    fetched = session.command(b"d FETCH 3 BODY[]")
    assert b"FLAGS" not in fetched[0]


def test_fetch_items(session: Session) -> None:
    session.login()
    append(session, 2)
    session.command(b"s SELECT INBOX")
    lines = session.take_after = session.command(
        b"a UID FETCH 2 (FLAGS RFC822.SIZE BODY[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<2.3>)")
    head = b"\r\n".join(lines)
    # the non-PEEK section set \Seen before the answer was built
    assert head == (b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) RFC822.SIZE 43 "
                    b"BODY[HEADER.FIELDS (SUBJECT)] {14}\r\nSubject: 1\r\n\r\n "
                    b"BODY[TEXT]<2> {3}\r\ndy )\r\na OK Fetch completed")
    # without FLAGS asked for, the changed flags are added (RFC 3501 6.4.5)
    assert session.command(b"b FETCH 1 RFC822.TEXT") == [
        b"* 1 FETCH (RFC822.TEXT {8}", b"body 0", b" FLAGS (\\Seen \\Recent))",
        b"b OK Fetch completed"]
    assert session.command(b"c FETCH 3 FLAGS") == [b"c BAD [CLIENTBUG] invalid message "
                                                   b"sequence number"]
    assert session.command(b"d UID FETCH 9:* FLAGS")[0] == b"* 2 FETCH (UID 2 FLAGS " \
        b"(\\Seen \\Recent))"


def test_store_variants_and_case_insensitive_flags(session: Session) -> None:
    session.login()
    append(session, 2)
    session.command(b"s SELECT INBOX")
    assert session.command(b"a STORE 1:2 +FLAGS (\\SEEN \\flagged)")[:2] == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
        b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent))"]
    assert session.command(b"b UID STORE 2 -FLAGS.SILENT (\\Flagged)") == [
        b"b OK Store completed"]
    assert session.command(b"c UID STORE 2 FLAGS (\\Draft)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Draft \\Recent))", b"c OK Store completed"]
    assert session.command(b"d STORE 1 +FLAGS (\\Bogus)") == [b"d BAD Invalid system flag "
                                                              b"\\Bogus"]


def test_expunge_close_and_uid_expunge(session: Session) -> None:
    session.login()
    append(session, 4)
    session.command(b"s SELECT INBOX")
    session.command(b"a STORE 1:4 +FLAGS.SILENT (\\Deleted)")
    assert session.command(b"b UID EXPUNGE 2:3") == [b"* 2 EXPUNGE", b"* 2 EXPUNGE",
                                                     b"b OK Expunge completed"]
    assert session.command(b"c CLOSE") == [b"c OK Close completed"]  # silent
    assert session.command(b"d STATUS INBOX (MESSAGES)") == [
        b"* STATUS INBOX (MESSAGES 0)", b"d OK Status completed"]


def test_two_sessions_see_each_other(tmp_path: Path) -> None:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, 3)
    a.command(b"s SELECT INBOX")
    b.command(b"s SELECT INBOX")
    a.command(b"x STORE 2 +FLAGS.SILENT (\\Deleted \\Seen)")
    assert b.command(b"n NOOP") == [b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Seen))",
                                    b"n OK Noop completed"]
    a.command(b"e EXPUNGE")
    # RFC 3501 7.4.1: no EXPUNGE during FETCH; the message is still there for b
    fetched = b.command(b"f FETCH 2 BODY.PEEK[]")
    assert fetched[-1] in (b"f NO [EXPUNGEISSUED] Some of the requested messages no longer "
                           b"exist", b"f OK Fetch completed")
    assert b"* 2 EXPUNGE" not in fetched
    assert b.command(b"n NOOP") == [b"* 2 EXPUNGE", b"n OK Noop completed"]
    append(a, 1)
    assert b.command(b"n NOOP") == [b"* 3 EXISTS", b"* 0 RECENT", b"n OK Noop completed"]


def test_idle(tmp_path: Path) -> None:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    a.command(b"s SELECT INBOX")
    assert a.command(b"i IDLE") == [b"+ idling"]
    append(b, 1)
    a.protocol.folder_changed()  # what the store's watch calls
    assert a.lines() == [b"* 1 EXISTS", b"* 1 RECENT"]
    assert a.command(b"DONE") == [b"i OK Idle completed"]
    assert a.command(b"j IDLE") == [b"+ idling"]
    assert a.command(b"k NOOP") == [b"j BAD Expected DONE to end IDLE"]
    assert a.command(b"l NOOP") == [b"l OK Noop completed"]


def test_literal_never_sent_times_out(session: Session) -> None:
    session.take()
    assert session.command(b"a LOGIN {5}") == [b"+ Ready for literal data"]
    session.clock.advance(59)
    assert session.take() == b""
    session.clock.advance(2)
    assert session.lines() == [b"* BYE Autologout; idle for too long"]
    assert session.transport.disconnecting


def test_line_endings(session: Session) -> None:
    session.take()
    session.send(b"a NOOP\n", crlf=False)
    assert session.lines() == [b"a OK Noop completed"]
    assert session.command(b"b NOOP\rc NOOP") == [b"b BAD Bare CR in command line"]


def test_too_many_errors_closes(session: Session) -> None:
    session.take()
    for n in range(19):
        assert session.command(b"x%d FROB" % n)[0].startswith(b"x%d BAD" % n)
    assert session.command(b"last FROB") == [b"last BAD unknown command FROB",
                                             b"* BYE Too many invalid commands"]
    assert session.transport.disconnecting


def test_big_fetch_respects_flow_control(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetching, "BODY_BATCH", 2)
    session = Session(tmp_path, transport=PausingTransport())
    session.login()
    append(session, 5)
    session.command(b"s SELECT INBOX")
    producer = session.transport.producer
    assert producer is session.protocol  # the session is the producer all along
    session.transport.slow = True
    session.send(b"a FETCH 1:* BODY.PEEK[]")
    assert session.take().count(b" FETCH (") == 2  # one batch, then it waits
    producer.resumeProducing()
    assert session.take().count(b" FETCH (") == 2
    producer.resumeProducing()
    assert session.take().count(b" FETCH (") == 1
    producer.resumeProducing()
    assert session.take() == b"a OK Fetch completed\r\n"


def test_a_client_that_reads_no_replies_stops_being_served(tmp_path: Path) -> None:
    """Pipelined commands from a client that reads nothing: once the write buffer is
    full no further command is handled (replies cannot pile up), and reading stops
    once the input backs up; all are answered, in order, when it reads again."""
    session = Session(tmp_path, transport=PausingTransport())
    session.login()
    session.transport.slow = True
    session.send(b"".join(b"n%d NOOP\r\n" % i for i in range(40_000)), crlf=False)
    assert session.take().count(b"OK Noop completed") == 1  # then paused
    assert session.transport.producerState == "paused"  # 400 KB of input: reading stopped
    session.transport.slow = False
    session.protocol.resumeProducing()
    assert session.take().count(b"OK Noop completed") == 39_999
    assert session.transport.producerState == "producing"


def test_list_and_lsub_patterns(session: Session) -> None:
    session.login()
    for name in (b"a.b.c", b"a.d", b"x"):
        assert session.command(b"c CREATE " + name)[-1].startswith(b"c OK [MAILBOXID (")
    top = session.command(b'l LIST "" %')
    assert top[0] == b'* LIST (\\HasNoChildren) "." INBOX'
    assert b'* LIST (\\HasChildren) "." a' in top and b'* LIST (\\HasNoChildren) "." x' in top
    assert b'* LIST (\\HasNoChildren \\Sent) "." Sent' in top
    listed = session.command(b'l LIST "a." %')
    assert listed == [b'* LIST (\\HasChildren) "." a.b', b'* LIST (\\HasNoChildren) "." a.d',
                      b"l OK List completed"]
    session.command(b"s SUBSCRIBE a.b.c")
    assert session.command(b'm LSUB "" a.%') == [b'* LSUB (\\Noselect) "." a.b',
                                                 b"m OK Lsub completed"]
    special = session.command(b'n LIST (SPECIAL-USE) "" *')
    assert all(b"\\Sent" in x or b"\\Trash" in x or b"\\Drafts" in x or b"\\Junk" in x
               for x in special[:-1]) and len(special) == 5


def test_search_keys(session: Session) -> None:
    session.login()
    messages = [
        b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Invoice 42\r\n"
        b"Date: Mon, 2 Mar 2020 10:00:00 +0000\r\nX-Tag: red\r\n\r\nPlease pay.\r\n",
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.net>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?="
        b"\r\nDate: Tue, 3 Mar 2020 10:00:00 +0000\r\n\r\nHallo Welt\r\n",
        b"From: carol@example.org\r\nCc: alice@example.org\r\nSubject: lunch\r\n"
        b"Date: Wed, 4 Mar 2020 10:00:00 +0000\r\n\r\n" + b"x" * 500 + b"\r\n",
    ]
    for data in messages:
        session.send(b"ap APPEND INBOX (\\Seen) \"05-Mar-2020 10:00:00 +0000\" {%d+}\r\n"
                     % len(data) + data)
        assert session.lines()[-1].startswith(b"ap OK")
    session.command(b"s SELECT INBOX")
    session.command(b"st STORE 3 FLAGS (\\Flagged $Todo)")

    def search(query: bytes) -> bytes:
        lines = session.command(b"q " + query)
        assert lines[-1] == b"q OK Search completed", lines
        return lines[0]

    assert search(b"SEARCH FROM alice") == b"* SEARCH 1"
    assert search(b"SEARCH CC alice") == b"* SEARCH 3"
    assert search(b"SEARCH SUBJECT invoice") == b"* SEARCH 1"
    assert search(b"SEARCH CHARSET UTF-8 SUBJECT {6+}\r\ngr\xc3\xbc\xc3\x9f") == b"* SEARCH 2"
    assert search(b"SEARCH FROM j\xc3\xbcrgen") == b"* SEARCH 2"
    assert search(b"SEARCH HEADER X-Tag red") == b"* SEARCH 1"
    assert search(b'SEARCH HEADER X-Tag ""') == b"* SEARCH 1"
    assert search(b"SEARCH BODY welt") == b"* SEARCH 2"
    assert search(b"SEARCH TEXT pay") == b"* SEARCH 1"
    assert search(b"SEARCH LARGER 400") == b"* SEARCH 3"
    assert search(b"SEARCH SMALLER 400") == b"* SEARCH 1 2"
    assert search(b"SEARCH SENTON 3-Mar-2020") == b"* SEARCH 2"
    assert search(b"SEARCH SENTSINCE 3-Mar-2020 SENTBEFORE 4-Mar-2020") == b"* SEARCH 2"
    assert search(b"SEARCH ON 5-Mar-2020") == b"* SEARCH 1 2 3"
    assert search(b"SEARCH BEFORE 5-Mar-2020") == b"* SEARCH"
    assert search(b"SEARCH FLAGGED KEYWORD $todo") == b"* SEARCH 3"
    assert search(b"SEARCH UNKEYWORD $Todo") == b"* SEARCH 1 2"
    assert search(b"SEARCH UNSEEN") == b"* SEARCH 3"
    assert search(b"SEARCH RECENT") == b"* SEARCH 1 2 3"
    assert search(b"SEARCH NEW") == b"* SEARCH 3"
    assert search(b"SEARCH OLD") == b"* SEARCH"
    assert search(b"SEARCH NOT (OR FROM alice 2:3)") == b"* SEARCH"
    assert search(b"SEARCH NOT (FROM alice OR 2 3)") == b"* SEARCH 1 2 3"
    assert search(b"SEARCH OR FROM carol SUBJECT invoice") == b"* SEARCH 1 3"
    assert search(b"SEARCH 2:*") == b"* SEARCH 2 3"
    assert search(b"UID SEARCH UID 2,3 DELETED") == b"* SEARCH"
    assert search(b"UID SEARCH ALL") == b"* SEARCH 1 2 3"
    assert session.command(b"q SEARCH CHARSET ISO-2022-JP ALL") == [
        b"q NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset ISO-2022-JP"]


def test_connection_lost_while_a_command_waits(session: Session) -> None:
    session.login()
    append(session, 2)
    session.command(b"s SELECT INBOX")
    selected = session.protocol.selected
    assert selected is not None
    view = selected.view
    session.disk.hold = True
    session.send(b"a FETCH 1:* BODY.PEEK[]")
    session.protocol.connectionLost(None)
    assert session.protocol.selected is selected  # not closed under the running call
    assert selected.view is view
    session.disk.hold = False
    session.disk.release()
    assert session.protocol.selected is None


def test_failed_select_leaves_no_mailbox_selected(session: Session) -> None:
    session.login()
    session.command(b"a SELECT INBOX")
    # RFC 7162 3.2.11: the previous mailbox is closed, whether or not the new opens.
    assert session.command(b"b SELECT Nowhere") == [
        b"* OK [CLOSED] Previous mailbox closed",
        b"b NO [NONEXISTENT] Mailbox does not exist"]
    assert session.command(b"c FETCH 1 FLAGS") == [b"c BAD FETCH needs a selected mailbox"]


def test_envelope_and_bodystructure_cached_across_sessions(tmp_path: Path) -> None:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, 1)
    a.command(b"s SELECT INBOX")
    first = a.command(b"f FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    b.command(b"s SELECT INBOX")
    assert b.protocol.selected is not None
    view = b.protocol.selected.view
    reads: list[int] = []
    original = view.read
    view.read = lambda uid: reads.append(uid) or original(uid)  # type: ignore[method-assign]
    second = b.command(b"f FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    assert second[0] == first[0].replace(b" \\Recent", b"")
    assert reads == []  # the second session did not open the message
    assert second[0].startswith(b'* 1 FETCH (ENVELOPE (NIL "0" ((NIL NIL "a" "example.org"))')
    assert b' BODYSTRUCTURE ("text" "plain"' in second[0]


def test_server_shutdown_says_bye(session: Session) -> None:
    session.login()
    session.factory.shut_down()
    assert session.lines() == [b"* BYE Server shutting down"]
    assert session.transport.disconnecting


def test_login_with_literals_and_pipelined_after(session: Session) -> None:
    session.take()
    assert session.command(b"a LOGIN {17}") == [b"+ Ready for literal data"]
    session.send(b"alice@example.org {6+}\r\n" + PASSWORD.encode() + b"\r\nb NOOP")
    lines = session.lines()
    assert lines[0].startswith(b"a OK [CAPABILITY IMAP4rev1") and lines[1] == \
        b"b OK Noop completed"


def test_many_small_literals_are_bounded(session: Session) -> None:
    session.login()
    chunk = b"x" * 30000
    session.send(b"a SEARCH TEXT {30000+}\r\n" + chunk + b" TEXT {30000+}\r\n" + chunk
                 + b" TEXT {30000+}", crlf=True)
    assert session.lines() == [b"a BAD [TOOBIG] Literal too large", b"* BYE Literal too large"]
    assert session.transport.disconnecting


def test_append_limit(session: Session) -> None:
    session.login()
    limit = session.config.limits.message_size
    assert session.command(b"a APPEND INBOX {%d}" % (limit + 1)) == [
        b"a NO [TOOBIG] Message too large"]
    assert session.command(b"b APPEND INBOX {0}") == [b"+ Ready for literal data"]
    assert session.command(b"") == [b"b NO Empty messages cannot be stored"]
    assert b"APPENDLIMIT=%d" % limit in session.command(b"c CAPABILITY")[0]


def test_keyword_letters_run_out(session: Session) -> None:
    """A Maildir++ folder has 26 keyword letters: then no \\* in PERMANENTFLAGS, and a
    new keyword is refused with NO [LIMIT] (RFC 5530)."""
    session.login()
    append(session, 1)
    session.command(b"s SELECT INBOX")
    keywords = b" ".join(b"$k%d" % i for i in range(26))
    stored = session.command(b"a STORE 1 +FLAGS.SILENT (" + keywords + b")")
    assert stored[-1] == b"a OK Store completed"
    # the new keywords are announced at once (RFC 3501 7.2.6), and \* is gone
    assert stored[0].startswith(b"* FLAGS (") and b"$k25" in stored[0]
    assert b"$k25" in stored[1] and b"\\*" not in stored[1]
    selected = session.command(b"s SELECT INBOX")
    permanent = [line for line in selected if b"PERMANENTFLAGS" in line][0]
    assert b"$k25" in permanent and b"\\*" not in permanent
    assert session.command(b"b STORE 1 +FLAGS ($extra)") == [
        b"b NO [LIMIT] Too many keywords in this mailbox (26 at most)"]


def test_uidvalidity_change_ends_the_session(tmp_path: Path) -> None:
    """RFC 3501 2.3.1.1: once the UID list is lost the folder gets a new UIDVALIDITY and
    the UIDs the client holds mean nothing; like Dovecot we say BYE at the next sync."""
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, 2)
    a.command(b"s SELECT INBOX")
    assert b.command(b"s SELECT INBOX")[-1] == b"s OK [READ-WRITE] Select completed"
    b.command(b"i IDLE")
    (uidlist,) = tmp_path.rglob("mailserver-uidlist")
    uidlist.unlink()
    assert a.command(b"n NOOP") == [
        b"* BYE UIDVALIDITY changed, mailbox must be selected again"]
    assert a.transport.disconnecting
    b.protocol.folder_changed()  # what the store's watch calls during IDLE
    assert b.lines() == [b"* BYE UIDVALIDITY changed, mailbox must be selected again"]
    assert b.transport.disconnecting
    c = Session(tmp_path)
    c.login()
    selected = c.command(b"s SELECT INBOX")
    assert b"* 2 EXISTS" in selected and selected[-1].startswith(b"s OK")


def test_big_append_literal_is_stored_from_its_own_buffer(session: Session) -> None:
    """A literal over server.BIG_LITERAL is collected apart (one copy in memory); the
    file has LF ends and S=/W= sizes, and FETCH gives back the exact CRLF octets."""
    session.login()
    body = b"".join(b"line %05d of a big message\r\n" % i for i in range(3000))
    message = b"Subject: big\r\nX-Bare-CR: a\rb\r\n\r\n" + body
    assert len(message) > 64 * 1024
    session.send(b'a APPEND INBOX (\\Flagged) {%d}' % len(message))
    assert session.lines() == [b"+ Ready for literal data"]
    for i in range(0, len(message), 5000):  # as TCP would deliver it
        session.send(message[i:i + 5000], crlf=False)
    session.send(b"")
    assert session.lines()[-1].startswith(b"a OK [APPENDUID ")
    (stored,) = session.config.mail_dir.rglob("new/*")
    lf = message.replace(b"\r\n", b"\n")
    assert stored.read_bytes() == lf
    assert f",S={len(lf)},W={len(message)}:2,F" in stored.name
    session.command(b"s SELECT INBOX")
    fetched = session.command(b"f FETCH 1 BODY.PEEK[]")
    assert fetched[0] == b"* 1 FETCH (BODY[] {%d}" % len(message)
    assert b"\r\n".join(fetched[1:-2]) + b"\r\n" == message


def test_big_literal_that_is_not_the_message_is_refused(session: Session) -> None:
    session.login()
    name = b"n" * 70000
    session.send(b"a APPEND {%d+}\r\n" % len(name) + name + b" {3+}\r\nabc")
    assert session.lines() == [b"a BAD [TOOBIG] Literal too large"]
    assert session.command(b"b NOOP") == [b"b OK Noop completed"]
    assert not list(session.config.mail_dir.rglob("new/*"))


def test_header_search_through_the_field_cache_agrees(session: Session) -> None:
    """SEARCH HEADER/SUBJECT/FROM match on the field's lines kept in the item cache:
    the answers stay the same on repeat, after a FETCH of those fields, and for
    folded lines, encoded words and field names that are no plain token."""
    session.login()
    messages = [
        b"From: Ann <ann@example.org>\r\nSubject: Invoice\r\n 2024\r\n\r\nx\r\n",
        b"From: bob@example.net\r\nSubject: =?utf-8?q?Rechnung_f=C3=BCr_Invoice?=\r\n"
        b"X-Odd: invoice\r\n\r\ny\r\n",
        b"From: carol@example.com\r\nSubject: lunch\r\nX-Note: Invoice 2024\r\n\r\nz\r\n",
    ]
    for data in messages:
        session.send(b"ap APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert session.lines()[-1].startswith(b"ap OK")
    session.command(b"s SELECT INBOX")
    queries = {
        b'SEARCH SUBJECT "invoice"': b"* SEARCH 1 2",
        b'SEARCH SUBJECT "invoice 2024"': b"* SEARCH 1",
        b'SEARCH SUBJECT "f\xc3\xbcr"': b"* SEARCH 2",
        b'SEARCH HEADER X-Odd ""': b"* SEARCH 2",
        b'SEARCH HEADER "X Note" "2024"': b"* SEARCH",
        b'SEARCH HEADER x-note "2024"': b"* SEARCH 3",
        b'SEARCH FROM "ann@example.org"': b"* SEARCH 1",
        b'SEARCH OR FROM bob SUBJECT lunch': b"* SEARCH 2 3",
    }
    for _ in range(2):
        for query, expected in queries.items():
            assert session.command(b"q " + query) == [expected, b"q OK Search completed"]
        session.command(b"f FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]")


def test_folder_is_watched_only_while_idling(session: Session) -> None:
    """Outside IDLE every command syncs, so the store's watch (inotify) is held only
    during IDLE: a STORE on 10,000 messages must not queue 20,000 events for itself."""
    from mailserver.store import notify

    session.login()
    append(session, 1)
    session.command(b"s SELECT INBOX")
    assert notify.default_notifier().watched_folders == 0
    assert session.command(b"i IDLE") == [b"+ idling"]
    assert notify.default_notifier().watched_folders == 1
    assert session.command(b"DONE") == [b"i OK Idle completed"]
    assert notify.default_notifier().watched_folders == 0
    assert session.command(b"j IDLE") == [b"+ idling"]
    session.disconnect()
    assert notify.default_notifier().watched_folders == 0
