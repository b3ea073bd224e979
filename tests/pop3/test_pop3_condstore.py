"""QRESYNC (RFC 7162) against the real server while two IMAP sessions and a POP3
session change one folder: the client's resynchronisation sees exactly those changes.

POP3 does not go through the IMAP side's folder state (it reads the Maildir itself),
so its RETR (\\Seen) and DELE reach the modseqs only because the folder state notices
renamed and removed files; this is the test that they do.
"""

from __future__ import annotations

import imaplib
import poplib
import re
from collections.abc import Iterator

import pytest
from pop3_helpers import PASSWORD, client_tls, message, put_message, start_pop3_server
from server_harness import RunningServer

ALICE = "alice@example.org"


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def both(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """With `processes = 2` the sessions land in either process (the kernel spreads the
    accepts), so the modseqs are also recorded by two processes' folder states."""
    server = start_pop3_server(
        tmp_path_factory.mktemp("pop3condstore"),
        listen={"smtp": "tcp:0:interface=127.0.0.1", "pop3s": "tcp:0:interface=127.0.0.1",
                "imaps": "tcp:0:interface=127.0.0.1"},
        processes=request.param)
    yield server
    server.stop()


def imap_login(server: RunningServer) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    imap.login(ALICE, PASSWORD)
    return imap


def _raw(imap: imaplib.IMAP4_SSL, command: str) -> list[bytes]:
    """Send one command, return every line up to the tagged one (imaplib drops the
    untagged responses it does not know, VANISHED among them)."""
    tag = imap._new_tag()  # type: ignore[attr-defined]
    imap.send(tag + b" " + command.encode() + b"\r\n")
    lines = []
    while True:
        line = imap.readline().rstrip(b"\r\n")
        lines.append(line)
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), lines
            return lines


def _subject_uids(imap: imaplib.IMAP4_SSL) -> dict[str, int]:
    lines = _raw(imap, "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    uids: dict[str, int] = {}
    uid = 0
    for line in lines:
        found = re.search(rb"UID (\d+)", line)
        if found:
            uid = int(found.group(1))
        subject = re.match(rb"Subject: (.*)", line)
        if subject:
            uids[subject.group(1).decode()] = uid
    return uids


def test_qresync_sees_exactly_what_two_imap_sessions_and_pop3_changed(
        both: RunningServer) -> None:
    maildir = both.maildir(ALICE)
    for i in range(10):
        put_message(maildir, message(i))
    client = imap_login(both)
    _raw(client, "ENABLE QRESYNC")
    lines = _raw(client, "SELECT INBOX")
    text = b"\n".join(lines)
    validity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))  # type: ignore[union-attr]
    known = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))  # type: ignore[union-attr]
    by_subject = _subject_uids(client)
    subject_of = {uid: s for s, uid in by_subject.items()}
    client.logout()  # the phone goes offline

    a, b = imap_login(both), imap_login(both)
    a.select("INBOX")
    b.select("INBOX")
    a.uid("STORE", "1,2", "+FLAGS", "(\\Flagged)")
    b.uid("STORE", "3", "+FLAGS", "(\\Answered)")
    b.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    b.expunge()
    a.uid("STORE", "2", "-FLAGS", "(\\Flagged)")  # back as it was: no net change...
    a.uid("STORE", "2", "+FLAGS", "(\\Draft)")    # ...but this one is
    pop = poplib.POP3_SSL("127.0.0.1", both.ports["pop3s"], context=client_tls())
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    # POP3 numbers the nine that are left; find two by their subjects.
    numbers = {}
    for n in range(1, 10):
        header = b"\n".join(pop.top(n, 0)[1])
        numbers[re.search(rb"Subject: (.*)", header).group(1).decode()] = n  # type: ignore[union-attr]
    retr_uid, dele_uid = 6, 7
    pop.retr(numbers[subject_of[retr_uid]])
    pop.dele(numbers[subject_of[dele_uid]])
    pop.quit()
    a.append("INBOX", "", None, b"Subject: late\r\n\r\nlate\r\n")
    a.logout()
    b.logout()

    client = imap_login(both)
    _raw(client, "ENABLE QRESYNC")
    lines = _raw(client, f"SELECT INBOX (QRESYNC ({validity} {known} 1:10))")
    vanished = [line for line in lines if line.startswith(b"* VANISHED")]
    assert vanished == [b"* VANISHED (EARLIER) 4,7"]
    fetched = {int(re.search(rb"UID (\d+)", line).group(1)):  # type: ignore[union-attr]
               re.search(rb"FLAGS \(([^)]*)\)", line).group(1)  # type: ignore[union-attr]
               for line in lines if b" FETCH " in line}
    assert fetched == {1: b"\\Flagged", 2: b"\\Draft", 3: b"\\Answered", 6: b"\\Seen"}
    assert b"* 9 EXISTS" in lines
    new_highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"\n".join(lines)).group(1))  # type: ignore[union-attr]
    # Without known-uids the arrival (UID 11) is a change too; from the new
    # HIGHESTMODSEQ on, nothing.
    lines = _raw(client, f"SELECT INBOX (QRESYNC ({validity} {known}))")
    assert sorted(int(re.search(rb"UID (\d+)", line).group(1))  # type: ignore[union-attr]
                  for line in lines if b" FETCH " in line) == [1, 2, 3, 6, 11]
    lines = _raw(client, f"SELECT INBOX (QRESYNC ({validity} {new_highest}))")
    assert not [line for line in lines if b"VANISHED" in line or b" FETCH " in line]
    client.logout()
