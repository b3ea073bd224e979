"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: rev1 behaviour until `ENABLE IMAP4rev2`, then
rev2's differences (Appendix E): no \\Recent/RECENT, no OK [UNSEEN], an untagged LIST in
SELECT, SEARCH answered with ESEARCH, STATUS without RECENT and with DELETED, UTF-8
mailbox names, HASCHILDREN; LSUB still answered. Python's imaplib speaks rev1 only, so
rev2 is driven with raw commands here (and imaplib checks that rev1 is unchanged)."""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest
from imap_helpers import PASSWORD, RunningServer
from session_harness import Session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def drop(session: Session, n: int, flags: str = "") -> None:
    """n messages delivered into new/ (as the LDA does): \\Recent for the first SELECT."""
    new = session.config.mail_dir / "example.org" / "alice" / "new"
    new.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"17000000{i:02d}.M{i}P1.test{':2,' + flags if flags else ''}"
        (new / name).write_bytes(b"Subject: m%d\n\nbody %d\n" % (i, i))


def rev2(session: Session) -> None:
    assert session.command(b"e ENABLE IMAP4rev2") == [
        b"* ENABLED IMAP4rev2", b"e OK Enable completed"]


def test_both_revisions_advertised_and_enable_answers(session: Session) -> None:
    caps = session.command(b"c CAPABILITY")[0].split()
    assert caps[:4] == [b"*", b"CAPABILITY", b"IMAP4rev1", b"IMAP4rev2"]
    assert session.command(b"e enable imap4REV2") == [  # RFC 5161: case-insensitive
        b"* ENABLED IMAP4rev2", b"e OK Enable completed"]
    # Twice: nothing newly enabled, so nothing listed (RFC 5161 3.2).
    assert session.command(b"e ENABLE IMAP4rev2") == [b"* ENABLED", b"e OK Enable completed"]
    # rev2 implies UTF-8 names (RFC 9051 5.1): UTF8=ACCEPT is already on.
    assert session.command(b"e ENABLE UTF8=ACCEPT") == [b"* ENABLED", b"e OK Enable completed"]


def test_enable_before_login_is_bad(tmp_path: Path) -> None:
    s = Session(tmp_path)
    s.take()
    assert s.command(b"e ENABLE IMAP4rev2") == [
        b"e BAD ENABLE needs authentication first"]


def test_enable_with_others_lists_each(session: Session) -> None:
    assert session.command(b"e ENABLE UTF8=ACCEPT IMAP4rev2 X-NONE") == [
        b"* ENABLED UTF8=ACCEPT IMAP4rev2", b"e OK Enable completed"]


def test_rev1_session_unchanged(session: Session) -> None:
    drop(session, 2)
    lines = session.command(b"s SELECT INBOX")
    assert b"* 2 RECENT" in lines and b"* OK [UNSEEN 1] First unseen" in lines
    assert not any(line.startswith(b"* LIST") for line in lines)
    assert session.command(b"f FETCH 1 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Recent))", b"f OK Fetch completed"]
    assert session.command(b"s SEARCH ALL") == [b"* SEARCH 1 2", b"s OK Search completed"]
    assert session.command(b"s STATUS INBOX (RECENT DELETED)") == [
        b"* STATUS INBOX (RECENT 2 DELETED 0)", b"s OK Status completed"]


def test_select_examine_lines_in_rev2(session: Session) -> None:
    drop(session, 3)
    rev2(session)
    lines = session.command(b"s SELECT INBOX")
    validity = [line for line in lines if line.startswith(b"* OK [UIDVALIDITY ")]
    mailbox_id = [line for line in lines if line.startswith(b"* OK [MAILBOXID (")]
    assert len(validity) == len(mailbox_id) == 1
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted",
        b"* 3 EXISTS",
        *validity,
        b"* OK [UIDNEXT 4] Predicted next UID",
        *mailbox_id,  # RFC 8474 4.2
        b'* LIST (\\HasNoChildren) "." INBOX',  # RFC 9051 6.3.2: REQUIRED
        b"s OK [READ-WRITE] Select completed"]
    examined = session.command(b"x EXAMINE Sent")
    assert examined[-3].startswith(b"* OK [MAILBOXID (")
    assert examined[-4:-3] + examined[-2:] == [
        b"* OK [UIDNEXT 1] Predicted next UID",
        b'* LIST (\\HasNoChildren \\Sent) "." Sent',
        b"x OK [READ-ONLY] Examine completed"]


def test_no_recent_in_fetch_store_and_updates(session: Session, tmp_path: Path) -> None:
    drop(session, 2)
    rev2(session)
    session.command(b"s SELECT INBOX")
    assert session.command(b"f FETCH 1:* (FLAGS)") == [
        b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS ())", b"f OK Fetch completed"]
    assert session.command(b"st STORE 1 +FLAGS (\\Seen)") == [
        b"* 1 FETCH (FLAGS (\\Seen))", b"st OK Store completed"]
    # The messages are still \Recent for this session: a rev1 view would show it.
    assert session.protocol.selection().view.messages[1].recent
    # Another session adds a message: EXISTS without RECENT (RFC 9051 7.4.1).
    other = Session(tmp_path, session.config)
    other.login()
    message = b"Subject: third\r\n\r\nx\r\n"
    other.send(b"a APPEND INBOX {%d+}\r\n" % len(message) + message)
    assert other.lines()[-1].startswith(b"a OK [APPENDUID ")
    assert session.command(b"n NOOP") == [b"* 3 EXISTS", b"n OK Noop completed"]
    # \Recent is still kept (RFC 3501's one-session rule): the rev2 session claimed the
    # newcomer at its NOOP, so a rev1 session selecting now has none; the rev1 session's
    # own next arrival is its \Recent.
    assert b"* 0 RECENT" in other.command(b"s SELECT INBOX")
    other.send(b"a APPEND INBOX {%d+}\r\n" % len(message) + message)
    assert other.lines()[:2] == [b"* 4 EXISTS", b"* 1 RECENT"]


def test_condstore_answers_without_recent(session: Session) -> None:
    drop(session, 1)
    assert session.command(b"e ENABLE QRESYNC IMAP4rev2")[0] == (
        b"* ENABLED QRESYNC IMAP4rev2")
    session.command(b"s SELECT INBOX")
    lines = session.command(b"st STORE 1 +FLAGS (\\Flagged)")
    assert lines[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (")
    assert b"\\Recent" not in b"".join(lines)


def test_qresync_select_in_rev2(session: Session) -> None:
    """QRESYNC's FETCH lines in SELECT carry no \\Recent either (RFC 7162 3.2.5.1)."""
    drop(session, 2)
    assert session.command(b"e ENABLE IMAP4rev2 QRESYNC")[0] == (
        b"* ENABLED QRESYNC IMAP4rev2")
    lines = session.command(b"s SELECT INBOX")
    validity = next(line for line in lines if line.startswith(b"* OK [UIDVALIDITY "))
    uv = int(validity.split()[3].rstrip(b"]"))
    session.command(b"st STORE 2 +FLAGS.SILENT (\\Flagged)")
    session.command(b"u UNSELECT")
    lines = session.command(b"s SELECT INBOX (QRESYNC (%d 1))" % uv)
    fetches = [line for line in lines if b" FETCH " in line]
    assert len(fetches) == 2 and all(b"\\Recent" not in line for line in fetches), lines
    assert fetches[1].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (")
    assert not any(b"RECENT" in line or b"UNSEEN" in line for line in lines)


def test_search_answered_with_esearch(session: Session) -> None:
    drop(session, 3)
    rev2(session)
    session.command(b"s SELECT INBOX")
    assert session.command(b"a SEARCH ALL") == [
        b'* ESEARCH (TAG "a") ALL 1:3', b"a OK Search completed"]
    assert session.command(b"b UID SEARCH 2:3") == [
        b'* ESEARCH (TAG "b") UID ALL 2:3', b"b OK Search completed"]
    # Nothing found: the ESEARCH line without ALL (RFC 9051 6.4.4.4 / 7.3.4).
    assert session.command(b"c SEARCH SUBJECT nowhere") == [
        b'* ESEARCH (TAG "c")', b"c OK Search completed"]
    assert session.command(b"d UID SEARCH DELETED") == [
        b'* ESEARCH (TAG "d") UID', b"d OK Search completed"]
    # RETURN options are kept as the client gave them; SAVE alone answers nothing.
    assert session.command(b"e SEARCH RETURN (MIN COUNT) ALL") == [
        b'* ESEARCH (TAG "e") MIN 1 COUNT 3', b"e OK Search completed"]
    assert session.command(b"f SEARCH RETURN (SAVE) 2:3") == [b"f OK Search completed"]
    assert session.command(b"g SEARCH $") == [
        b'* ESEARCH (TAG "g") ALL 2:3', b"g OK Search completed"]
    # Refusals are as before.
    assert session.command(b"j SEARCH CHARSET KOI8-R ALL") == [
        b"j NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset KOI8-R"]
    assert session.command(b"k SEARCH RETURN (BOGUS) ALL")[0].startswith(b"k BAD ")
    # SORT and THREAD are extensions of their own: unchanged.
    assert session.command(b"i SORT (SUBJECT) UTF-8 ALL") == [
        b"* SORT 1 2 3", b"i OK Sort completed"]


def test_search_with_modseq_in_rev2(session: Session) -> None:
    drop(session, 2)
    assert session.command(b"e ENABLE CONDSTORE IMAP4rev2")[0] == (
        b"* ENABLED CONDSTORE IMAP4rev2")
    session.command(b"s SELECT INBOX")
    session.command(b"st STORE 2 +FLAGS.SILENT (\\Flagged)")
    line = session.command(b"a SEARCH MODSEQ 1")[0]
    assert line.startswith(b'* ESEARCH (TAG "a") ALL 1:2 MODSEQ '), line


def test_status_in_rev2(session: Session) -> None:
    drop(session, 3, "T")  # T: \Deleted
    rev2(session)
    assert session.command(b"s STATUS INBOX (MESSAGES DELETED UNSEEN)") == [
        b"* STATUS INBOX (MESSAGES 3 DELETED 3 UNSEEN 3)", b"s OK Status completed"]
    assert session.command(b"s STATUS INBOX (MESSAGES RECENT)") == [
        b"s BAD [CLIENTBUG] STATUS RECENT does not exist in IMAP4rev2 (RFC 9051 6.3.11)"]
    assert session.command(b'l LIST "" INBOX RETURN (STATUS (RECENT))') == [
        b"l BAD [CLIENTBUG] STATUS RECENT does not exist in IMAP4rev2 (RFC 9051 6.3.11)"]
    assert session.command(b'l LIST "" INBOX RETURN (STATUS (DELETED))') == [
        b'* LIST (\\HasNoChildren) "." INBOX', b"* STATUS INBOX (DELETED 3)",
        b"l OK List completed"]
    session.command(b"s SELECT INBOX")
    session.command(b"st STORE 1 -FLAGS.SILENT (\\Deleted)")
    assert session.command(b"s STATUS INBOX (DELETED)") == [
        b"* STATUS INBOX (DELETED 2)", b"s OK Status completed"]


def test_enable_while_selected_is_not_taken(session: Session) -> None:
    drop(session, 1)
    session.command(b"s SELECT INBOX")
    # RFC 5161 3.1: ENABLE belongs before SELECT; not listed = not enabled.
    assert session.command(b"e ENABLE IMAP4rev2") == [b"* ENABLED", b"e OK Enable completed"]
    assert session.command(b"a SEARCH ALL") == [b"* SEARCH 1", b"a OK Search completed"]
    assert session.command(b"f FETCH 1 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Recent))", b"f OK Fetch completed"]
    assert session.command(b"u UNSELECT") == [b"u OK Unselect completed"]
    rev2(session)  # with nothing selected it may be enabled (RFC 5161 does not forbid)
    lines = session.command(b"s SELECT INBOX")
    assert not any(b"RECENT" in line for line in lines)
    assert session.command(b"a SEARCH ALL") == [
        b'* ESEARCH (TAG "a") ALL 1', b"a OK Search completed"]


def test_utf8_names_in_rev2(session: Session) -> None:
    # Before: modified UTF-7 only (RFC 3501 5.1.3).
    assert session.command('c CREATE "Café"'.encode()) == [
        b"c NO [CANNOT] mailbox names must be modified UTF-7 (RFC 3501 5.1.3)"]
    rev2(session)
    assert session.command('c CREATE "Café"'.encode())[-1].startswith(b"c OK [MAILBOXID (")
    maildir = session.config.mail_dir / "example.org" / "alice"
    assert (maildir / ".Caf&AOk-" / "cur").is_dir()
    assert session.command(b'l LIST "" Caf*') == [
        '* LIST (\\HasNoChildren) "." "Café"'.encode(), b"l OK List completed"]
    assert session.command('s SELECT "Café"'.encode())[-2:] == [
        '* LIST (\\HasNoChildren) "." "Café"'.encode(), b"s OK [READ-WRITE] Select completed"]
    assert session.command('s STATUS "Café" (MESSAGES)'.encode()) == [
        '* STATUS "Café" (MESSAGES 0)'.encode(), b"s OK Status completed"]


def test_lsub_still_answered_and_list_subscribed(session: Session) -> None:
    rev2(session)
    assert session.command(b"c CREATE Work")[-1].startswith(b"c OK [MAILBOXID (")
    assert session.command(b"u SUBSCRIBE Work") == [b"u OK Subscribe completed"]
    assert session.command(b"u SUBSCRIBE Gone") == [b"u OK Subscribe completed"]
    # LSUB (rev1; RFC 9051 leaves it out of the grammar, servers may keep it).
    assert session.command(b'l LSUB "" W*') == [
        b'* LSUB (\\HasNoChildren) "." Work', b"l OK Lsub completed"]
    assert session.command(b'l LSUB "" Gone') == [
        b'* LSUB (\\Noselect \\HasNoChildren) "." Gone', b"l OK Lsub completed"]
    # What rev2 clients use instead (RFC 9051 6.3.9; LIST-EXTENDED's \NonExistent).
    assert session.command(b'l LIST (SUBSCRIBED) "" (Work Gone)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." Work',
        b'* LIST (\\NonExistent \\Subscribed) "." Gone', b"l OK List completed"]
    assert session.command(b'l LIST "" W* RETURN (SUBSCRIBED)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." Work', b"l OK List completed"]


def test_delete_of_a_noselect_parent(session: Session, tmp_path: Path) -> None:
    session.command(b"c CREATE a.b")  # makes "a" too
    assert session.command(b"d DELETE a") == [b"d OK Delete completed"]  # a.b stays
    other = Session(tmp_path, session.config)
    other.login()
    # rev1: CANNOT as before (RFC 3501 has no HASCHILDREN).
    assert other.command(b"d DELETE a") == [
        b"d NO [CANNOT] Mailbox has inferior names and is \\Noselect"]
    rev2(session)
    assert session.command(b"d DELETE a") == [
        b"d NO [HASCHILDREN] Mailbox has inferior names and is \\Noselect"]
    # Other refusals keep their codes.
    assert session.command(b"d DELETE nowhere") == [
        b"d NO [NONEXISTENT] Mailbox does not exist"]
    assert session.command(b"d DELETE INBOX") == [b"d NO [CANNOT] INBOX cannot be deleted"]
    assert session.command(b"d DELETE a.b") == [b"d OK Delete completed"]


def test_imaplib_rev1_unchanged_and_rev2_by_raw_enable(imap_server: RunningServer) -> None:
    """Python's imaplib (rev1) sees IMAP4rev2 offered and goes on in rev1; once it
    ENABLEs rev2 its search() finds no SEARCH response (the ESEARCH is there instead)."""
    address = "rev2user@example.org"
    imap_server.add_user(address, PASSWORD)
    client = imaplib.IMAP4("127.0.0.1", imap_server.ports["imap"], timeout=60)
    try:
        assert {"IMAP4REV1", "IMAP4REV2"} <= set(client.capabilities)
        assert client.login(address, PASSWORD)[0] == "OK"
        for n in range(2):
            assert client.append("INBOX", None, None, b"Subject: %d\r\n\r\nx\r\n" % n)[0] == "OK"
        assert client.status("INBOX", "(MESSAGES RECENT DELETED)") == (
            "OK", [b"INBOX (MESSAGES 2 RECENT 2 DELETED 0)"])
        assert client.select("INBOX") == ("OK", [b"2"])
        assert client.search(None, "ALL") == ("OK", [b"1 2"])
        assert client.unselect()[0] == "OK"
        typ, _ = client.enable("IMAP4rev2")
        assert typ == "OK" and client.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"]
        assert client.select("INBOX") == ("OK", [b"2"])
        assert client.untagged_responses.get("LIST") == [b'(\\HasNoChildren) "." INBOX']
        assert "RECENT" not in client.untagged_responses
        typ, data = client.search(None, "ALL")
        assert typ == "OK" and data == [None]
        (esearch,) = client.untagged_responses.pop("ESEARCH")
        assert esearch.endswith(b") ALL 1:2") and esearch.startswith(b'(TAG "')
        with pytest.raises(imaplib.IMAP4.error, match="STATUS RECENT does not exist"):
            client.status("INBOX", "(RECENT)")
    finally:
        client.logout()


def test_select_when_the_folder_listing_fails(session: Session,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SELECT's LIST needs the folder listing: a store refusal lists the name without
    attributes; any other failure fails the SELECT and leaves nothing selected (the
    view is closed, not leaked)."""
    from mailserver.interfaces import StoreError

    rev2(session)
    store = session.protocol.authenticated().store

    def refused() -> list:
        raise StoreError("UNAVAILABLE", "busy")

    monkeypatch.setattr(store, "folders", refused)
    assert session.command(b"s SELECT INBOX")[-2:] == [
        b'* LIST () "." INBOX', b"s OK [READ-WRITE] Select completed"]

    def broken() -> list:
        raise OSError("disk gone")

    monkeypatch.setattr(store, "folders", broken)
    views = []
    select = store.select

    def recorded(*args: object) -> object:
        views.append(select(*args))
        return views[-1]

    monkeypatch.setattr(store, "select", recorded)
    lines = session.command(b"s SELECT INBOX")
    assert views and views[0]._closed
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert lines[-1] == b"s NO [SERVERBUG] Internal error"
    assert session.protocol.selected is None
    assert session.command(b"f FETCH 1 FLAGS") == [b"f BAD FETCH needs a selected mailbox"]
