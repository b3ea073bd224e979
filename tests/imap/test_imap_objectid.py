"""OBJECTID (RFC 8474): MAILBOXID kept across RENAME and new after DELETE + CREATE,
EMAILID the same after COPY and MOVE (a digest of the stored message), THREADID NIL."""

from __future__ import annotations

import imaplib
import re
from pathlib import Path

import pytest
from imap_helpers import PASSWORD, RunningServer
from session_harness import Session

from mailserver.store import mailboxid

ID = re.compile(rb"\((F[0-9a-f]{24})\)")


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def maildir(session: Session) -> Path:
    return session.config.mail_dir / "example.org" / "alice"


def append(session: Session, box: bytes, message: bytes) -> None:
    session.send(b"a APPEND %s {%d+}\r\n" % (box, len(message)) + message)
    assert session.lines()[-1].startswith(b"a OK [APPENDUID ")


def mailbox_id(session: Session, name: bytes) -> bytes:
    line = session.command(b"s STATUS %s (MAILBOXID)" % name)[0]
    match = ID.search(line)
    assert match is not None and line.startswith(b"* STATUS " + name + b" (MAILBOXID ("), line
    return match.group(1)


def email_ids(session: Session) -> list[bytes]:
    lines = session.command(b"f FETCH 1:* (EMAILID)")
    assert lines[-1] == b"f OK Fetch completed"
    return [re.search(rb"EMAILID \((M[0-9a-f]{24})\)", line).group(1)  # type: ignore[union-attr]
            for line in lines[:-1]]


def test_mailboxid_across_create_rename_delete(session: Session) -> None:
    assert b"OBJECTID" in session.command(b"c CAPABILITY")[0].split()
    reply = session.command(b"c CREATE Work.Old")
    assert len(reply) == 1 and reply[0].endswith(b"] Create completed")
    created = ID.search(reply[0])
    assert created is not None and reply[0].startswith(b"c OK [MAILBOXID (F")
    work = mailbox_id(session, b"Work")  # the parent made on the way has its own
    assert mailbox_id(session, b"Work.Old") == created.group(1) != work
    assert (maildir(session) / ".Work.Old" / "mailserver-mailboxid").read_bytes() == (
        created.group(1) + b"\n")
    # RENAME keeps the id, of the folder and of its children (RFC 8474 4.1).
    assert session.command(b"r RENAME Work Job") == [b"r OK Rename completed"]
    assert mailbox_id(session, b"Job") == work
    assert mailbox_id(session, b"Job.Old") == created.group(1)
    # SELECT and EXAMINE say it (4.2).
    assert b"* OK [MAILBOXID (%s)] Ok" % work in session.command(b"x EXAMINE Job")
    session.command(b"u UNSELECT")
    # DELETE, then CREATE under the same name: another mailbox, another id.
    assert session.command(b"d DELETE Job.Old") == [b"d OK Delete completed"]
    again = ID.search(session.command(b"c CREATE Job.Old")[0])
    assert again is not None and again.group(1) != created.group(1)


def test_inbox_keeps_its_id_when_renamed(session: Session, tmp_path: Path) -> None:
    append(session, b"INBOX", b"Subject: a\r\n\r\nx\r\n")
    inbox = mailbox_id(session, b"INBOX")
    other = Session(tmp_path, session.config)  # another session: the same id
    other.login()
    assert mailbox_id(other, b"INBOX") == inbox
    # RFC 3501 6.3.5: RENAME INBOX moves its messages to a new folder; INBOX stays.
    assert session.command(b"r RENAME INBOX Archive") == [b"r OK Rename completed"]
    assert mailbox_id(session, b"INBOX") == inbox
    assert mailbox_id(session, b"Archive") != inbox
    lines = session.command(b'l LIST "" Archive RETURN (STATUS (MAILBOXID MESSAGES))')
    assert lines[1].startswith(b"* STATUS Archive (MAILBOXID (F") and lines[1].endswith(
        b") MESSAGES 1)")


def test_emailid_survives_copy_and_move(session: Session) -> None:
    append(session, b"INBOX", b"Subject: one\r\n\r\nfirst\r\n")
    append(session, b"INBOX", b"Subject: two\r\n\r\nsecond\r\n")
    session.command(b"c CREATE Box")
    session.command(b"s SELECT INBOX")
    one, two = email_ids(session)
    assert one != two
    assert session.command(b"t FETCH 1 (THREADID)") == [
        b"* 1 FETCH (THREADID NIL)", b"t OK Fetch completed"]
    assert session.command(b"c COPY 1 Box")[-1].startswith(b"c OK [COPYUID ")
    assert session.command(b"m MOVE 2 Box")[-1] == b"m OK Move completed"
    session.command(b"s SELECT Box")
    assert email_ids(session) == [one, two]
    # SEARCH EMAILID (RFC 8474 6) finds it in its new folder; THREADID matches nothing.
    assert session.command(b"s UID SEARCH EMAILID %s" % two) == [
        b"* SEARCH 2", b"s OK Search completed"]
    assert session.command(b"s SEARCH OR EMAILID %s THREADID T1" % one) == [
        b"* SEARCH 1", b"s OK Search completed"]
    assert session.command(b"s SEARCH EMAILID M000000000000000000000000") == [
        b"* SEARCH", b"s OK Search completed"]


def test_emailid_is_kept_not_recomputed(session: Session,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Computed once per message (the index and the item cache keep it, like ENVELOPE):
    later FETCHes and SEARCHes do not read the file again."""
    append(session, b"INBOX", b"Subject: one\r\n\r\nfirst\r\n")
    session.command(b"s SELECT INBOX")
    (first,) = email_ids(session)
    view = session.protocol.selection().view

    def unreadable(uid: int) -> bytes:
        raise AssertionError("message read again")

    monkeypatch.setattr(view, "read", unreadable)
    assert email_ids(session) == [first]
    assert session.command(b"s SEARCH EMAILID %s" % first) == [
        b"* SEARCH 1", b"s OK Search completed"]


def test_search_objectid_hostile_forms(session: Session) -> None:
    append(session, b"INBOX", b"Subject: one\r\n\r\nfirst\r\n")
    session.command(b"s SELECT INBOX")
    assert session.command(b"s SEARCH EMAILID bad!id") == [b"s BAD invalid EMAILID object id"]
    assert session.command(b"s SEARCH THREADID a.b") == [b"s BAD invalid THREADID object id"]
    assert session.command(b"s SEARCH EMAILID " + b"M" * 256) == [
        b"s BAD invalid EMAILID object id"]
    assert session.command(b"s SEARCH EMAILID " + b"M" * 255) == [
        b"* SEARCH", b"s OK Search completed"]
    assert session.command(b"s SEARCH EMAILID")[0].startswith(b"s BAD ")
    assert session.command(b'f FETCH 1 (EMAILID THREADID MAILBOXID)')[0].startswith(b"f BAD ")
    assert session.command(b"s STATUS INBOX (EMAILID)")[0].startswith(b"s BAD ")


def test_mailboxid_file_damaged_or_raced(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / mailboxid.FILE).write_text("not an id!\n")
    made = mailboxid.mailbox_id(folder)  # damaged: replaced by a valid one
    assert re.fullmatch(r"F[0-9a-f]{24}", made)
    assert mailboxid.mailbox_id(folder) == made
    # Another process links its id first: ours is dropped, theirs is answered.
    raced = tmp_path / "g"
    raced.mkdir()
    link = mailboxid.os.link

    def first_elsewhere(src: str, dst: str) -> None:
        Path(dst).write_text("Ftheirs\n")
        link(src, dst)

    monkeypatch.setattr(mailboxid.os, "link", first_elsewhere)
    assert mailboxid.mailbox_id(raced) == "Ftheirs"
    assert sorted(p.name for p in raced.iterdir()) == [mailboxid.FILE]  # no tmp left


def test_imaplib_over_the_real_server(imap_server: RunningServer) -> None:
    """What a client sees over TCP: the capability, the ids through MOVE and RENAME."""
    address = "objectid@example.org"
    imap_server.add_user(address, PASSWORD)
    client = imaplib.IMAP4("127.0.0.1", imap_server.ports["imap"], timeout=60)
    try:
        assert "OBJECTID" in client.capabilities
        assert client.login(address, PASSWORD)[0] == "OK"
        typ, data = client.create("Keep")
        assert typ == "OK" and data[0].startswith(b"[MAILBOXID (F"), data
        assert client.append("INBOX", None, None, b"Subject: x\r\n\r\nbody\r\n")[0] == "OK"
        client.select("INBOX")
        typ, data = client.fetch("1", "(EMAILID)")
        emailid = re.fullmatch(rb"1 \(EMAILID \((M[0-9a-f]{24})\)\)", data[0])  # type: ignore[arg-type]
        assert typ == "OK" and emailid is not None, data
        assert client._simple_command("MOVE", "1", "Keep")[0] == "OK"
        client.unselect()
        before = client.status("Keep", "(MAILBOXID)")[1][0]
        assert client.rename("Keep", "Kept")[0] == "OK"
        assert client.status("Kept", "(MAILBOXID)")[1][0] == before.replace(b"Keep", b"Kept")
        client.select("Kept")
        assert any(line.startswith(b"[MAILBOXID (F") for line in client.untagged_responses["OK"])
        assert client.fetch("1", "(EMAILID)")[1][0] == b"1 (EMAILID (%s))" % emailid.group(1)
    finally:
        client.logout()
