"""The real server driven by real clients (imaplib, IMAPClient): what a user sees."""

from __future__ import annotations

import imaplib
import itertools
import re
import time
from collections.abc import Callable

import pytest
from imap_helpers import PASSWORD, connect, deliver, no_verify
from imapclient import IMAPClient
from server_harness import RunningServer

from mailserver.logs import logger

log = logger(__name__)
_numbers = itertools.count(1)


@pytest.fixture
def fresh(imap_server: RunningServer) -> str:
    """A new user with an empty Maildir, so tests on one server do not see each other."""
    address = f"user{next(_numbers)}@example.org"
    imap_server.add_user(address, PASSWORD)
    return address


def ok(result: tuple[str, list]) -> list:
    status, data = result
    assert status == "OK", data
    return data


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def maildir_files(server: RunningServer, user: str, folder: str = "") -> list:
    root = server.maildir(user, folder)
    return sorted(p for sub in ("new", "cur") for p in (root / sub).iterdir())


# -- sessions, TLS, capabilities -----------------------------------------------------------

def test_greeting_capabilities_and_starttls(imap_server: RunningServer) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_server.ports["imap"], timeout=60)
    before = set(client.capabilities)
    assert {"IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "LITERAL+",
            "NAMESPACE", "SPECIAL-USE", "CHILDREN", "UNSELECT", "ENABLE", "ID",
            "SASL-IR"} <= before
    client.starttls(ssl_context=no_verify())
    after = set(client.capabilities)
    assert "STARTTLS" not in after and "AUTH=PLAIN" in after
    ok(client.login("alice@example.org", PASSWORD))
    status, data = client.capability()
    assert "AUTH=PLAIN" not in data[0].decode() and "APPENDLIMIT=" in data[0].decode()
    client.logout()


def test_imaps_login_and_authenticate_plain(imap_server: RunningServer) -> None:
    client = imaplib.IMAP4_SSL("127.0.0.1", imap_server.ports["imaps"],
                               ssl_context=no_verify(), timeout=60)
    assert "STARTTLS" not in client.capabilities
    ok(client.authenticate("PLAIN", lambda _: b"\0alice@example.org\0" + PASSWORD.encode()))
    assert client.state == "AUTH"
    client.logout()


def test_wrong_password_is_authenticationfailed(imap_server: RunningServer) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_server.ports["imap"], timeout=60)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login("alice@example.org", "wrong")
    ok(client.login("alice@example.org", PASSWORD))
    client.logout()


# -- reading mail --------------------------------------------------------------------------

def test_fetch_bodies_equal_the_maildir_bytes(imap_server: RunningServer, fresh: str) -> None:
    for n in range(3):
        deliver(imap_server, fresh, subject=f"m{n}", body=f"Body {n}\nline two\n")
    client = connect(imap_server, fresh)
    data = ok(client.select("INBOX"))
    assert data == [b"3"]
    assert client.untagged_responses.get("RECENT") == [b"3"]
    typ, fetched = client.fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])")
    bodies = [part[1] for part in fetched if isinstance(part, tuple)]
    on_disk = [crlf(m) for m in imap_server.messages(fresh)]
    assert bodies == on_disk
    sizes = [int(re.search(rb"RFC822.SIZE (\d+)", part[0]).group(1))  # type: ignore
             for part in fetched if isinstance(part, tuple)]
    assert sizes == [len(m) for m in on_disk]
    # PEEK left \Seen alone
    typ, flags = client.fetch("1:*", "FLAGS")
    assert all(b"\\Seen" not in f for f in flags)
    client.logout()


def test_fetch_sets_seen_and_store_persists_in_file_names(imap_server: RunningServer,
                                                          fresh: str) -> None:
    deliver(imap_server, fresh, subject="seen")
    deliver(imap_server, fresh, subject="flagged")
    client = connect(imap_server, fresh)
    ok(client.select("INBOX"))
    typ, fetched = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
    assert fetched[0][1] == b"Subject: seen\r\n\r\n"
    assert b"FLAGS (\\Seen" in fetched[0][0] or b"FLAGS (\\Seen" in fetched[1]
    typ, stored = client.store("2", "+FLAGS", "(\\Flagged $Work)")
    assert b"\\Flagged" in stored[0] and b"$Work" in stored[0]
    client.logout()
    again = connect(imap_server, fresh)
    ok(again.select("INBOX"))
    assert again.untagged_responses.get("RECENT") == [b"0"]
    typ, flags = again.fetch("1:2", "(FLAGS)")
    assert b"\\Seen" in flags[0] and b"\\Flagged" not in flags[0]
    assert b"\\Flagged" in flags[1] and b"$Work" in flags[1]
    names = [p.name for p in maildir_files(imap_server, fresh)]
    assert any(name.endswith(":2,S") for name in names), names
    assert any(re.search(r":2,[a-z]*F", name) for name in names), names
    again.logout()


def test_append_with_flags_and_date(imap_server: RunningServer, fresh: str) -> None:
    client = connect(imap_server, fresh)
    message = b"From: a@example.org\r\nSubject: appended\r\n\r\nHi\r\n"
    typ, data = client.append("Drafts", "(\\Draft \\Seen)", '"07-Feb-1994 21:52:25 -0800"',
                              message)
    assert typ == "OK"
    match = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert match is not None
    ok(client.select("Drafts"))
    typ, fetched = client.uid("FETCH", match.group(2).decode(),
                              "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    head = fetched[0][0]
    assert b'INTERNALDATE " 8-Feb-1994 05:52:25 +0000"' in head
    assert b"\\Draft" in head and b"\\Seen" in head
    assert fetched[0][1] == message
    [path] = maildir_files(imap_server, fresh, "Drafts")
    assert path.name.endswith(":2,DS") and path.read_bytes() == message.replace(b"\r\n", b"\n")
    # TRYCREATE for a folder that does not exist
    typ, data = client.append("Nowhere", "", None, message)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    client.logout()


def test_copy_and_move_report_copyuid(imap_server: RunningServer, fresh: str) -> None:
    for n in range(4):
        deliver(imap_server, fresh, subject=f"c{n}")
    client = connect(imap_server, fresh)
    ok(client.select("INBOX"))
    ok(client.store("1", "+FLAGS", "(\\Flagged)"))
    typ, data = client.copy("1:2", "Trash")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1:2 1:2\]", data[0]), data
    typ, data = client.uid("MOVE", "3:4", "Junk")
    assert typ == "OK", data
    assert client.untagged_responses.get("EXPUNGE") == [b"3", b"3"]
    ok_lines = client.untagged_responses.get("OK", [])
    assert any(re.search(rb"\[COPYUID \d+ 3:4 1:2\]", line) for line in ok_lines), ok_lines
    ok(client.select("Trash"))
    typ, flags = client.fetch("1:2", "(FLAGS)")
    assert b"\\Flagged" in flags[0] and b"\\Flagged" not in flags[1]
    assert len(maildir_files(imap_server, fresh, "Junk")) == 2
    assert len(maildir_files(imap_server, fresh)) == 2
    client.logout()


def test_expunge_numbering_seen_by_a_second_session(imap_server: RunningServer,
                                                    fresh: str) -> None:
    for n in range(5):
        deliver(imap_server, fresh, subject=f"e{n}")
    a, b = connect(imap_server, fresh), connect(imap_server, fresh)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    ok(a.store("2,4", "+FLAGS.SILENT", "(\\Deleted)"))
    typ, data = a.expunge()
    assert data == [b"2", b"3"]  # 4 became 3 once 2 was gone
    typ, data = b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"2", b"3"]
    typ, subjects = b.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    got = [part[1].strip() for part in subjects if isinstance(part, tuple)]
    assert got == [b"Subject: e0", b"Subject: e2", b"Subject: e4"]
    a.logout()
    b.logout()


def test_delivery_appears_at_noop_and_during_idle(imap_server: RunningServer,
                                                  fresh: str) -> None:
    plain = connect(imap_server, fresh)
    ok(plain.select("INBOX"))
    deliver(imap_server, fresh, subject="noop")
    plain.noop()
    assert plain.untagged_responses.get("EXISTS", [])[-1:] == [b"1"]
    plain.logout()

    with IMAPClient("127.0.0.1", port=imap_server.ports["imap"], ssl=False,
                    timeout=60) as client:
        client.login(fresh, PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        started = time.monotonic()
        deliver(imap_server, fresh, subject="idle")
        responses = client.idle_check(timeout=30)
        latency = time.monotonic() - started
        client.idle_done()
        assert (2, b"EXISTS") in responses
        log.info("IDLE latency {ms:.0f} ms", ms=latency * 1000)
        print(f"IDLE push latency (delivery incl. SMTP): {latency * 1000:.0f} ms")


def test_search(imap_server: RunningServer, fresh: str) -> None:
    deliver(imap_server, fresh, subject="Quarterly report", body="numbers inside\n")
    deliver(imap_server, fresh, subject="lunch", body="pizza?\n",
            extra="X-Priority: 1\r\n")
    client = connect(imap_server, fresh)
    ok(client.select("INBOX"))
    assert ok(client.search(None, "SUBJECT", "quarterly")) == [b"1"]
    assert ok(client.search(None, "BODY", "pizza")) == [b"2"]
    assert ok(client.search(None, "HEADER", "X-Priority", "1")) == [b"2"]
    assert ok(client.search(None, "OR", "TEXT", "numbers", "TEXT", "pizza")) == [b"1 2"]
    assert ok(client.search(None, "NOT", "FROM", "bob")) == [b""]
    assert ok(client.uid("SEARCH", "UID", "2:*")) == [b"2"]
    assert ok(client.search("UTF-8", "SUBJECT", "lunch")) == [b"2"]
    typ, data = client.search("KOI8-R", "ALL")
    assert typ == "NO" and b"[BADCHARSET" in data[0]
    ok(client.store("1", "+FLAGS", "\\Seen"))
    assert ok(client.search(None, "UNSEEN")) == [b"2"]
    assert ok(client.search(None, "SINCE", "1-Jan-2000", "LARGER", "10")) == [b"1 2"]
    client.logout()


# -- folders ---------------------------------------------------------------------------------

def test_folder_hierarchy(imap_server: RunningServer, fresh: str) -> None:
    client = connect(imap_server, fresh)
    ok(client.create("Work.Projects.Alpha"))
    ok(client.create("Work.Notes"))
    typ, listed = client.list('""', "Work*")
    text = b"\n".join(listed)
    assert b'(\\HasChildren) "." Work' in text
    assert b'(\\HasNoChildren) "." Work.Projects.Alpha' in text
    typ, listed = client.list('""', "%")
    names = [line.rsplit(b" ", 1)[1] for line in listed]
    assert b"INBOX" in names and b"Work" in names and b"Work.Notes" not in names
    typ, listed = client.list('""', '""')
    assert listed == [b'(\\Noselect) "." ""']
    typ, specials = client.list('""', "*")
    assert any(b"\\Sent" in line and line.endswith(b"Sent") for line in specials)
    ok(client.subscribe("Work.Notes"))
    typ, lsub = client.lsub('""', "Work.*")
    assert any(line.endswith(b"Work.Notes") for line in lsub)
    typ, data = client.status("Work.Notes", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
    assert re.match(rb"Work.Notes \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0 RECENT 0\)",
                    data[0]), data
    ok(client.rename("Work", "Archive"))
    typ, listed = client.list('""', "*")
    text = b"\n".join(listed)
    assert b"Archive.Projects.Alpha" in text and b" Work" not in text
    typ, data = client.create("INBOX")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = client.create("Archive.Notes")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = client.delete("INBOX")
    assert typ == "NO"
    typ, data = client.select("Nope")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    ok(client.delete("Archive.Projects.Alpha"))
    client.logout()


def test_namespace_id_enable_unselect(imap_server: RunningServer,
                                      login: Callable[..., imaplib.IMAP4]) -> None:
    client = login()
    assert ok(client.namespace()) == [b'(("" ".")) NIL NIL']
    typ, data = client.xatom("ID", '("name" "pytest")')
    assert typ == "OK"
    assert client.untagged_responses.get("ID", [b""])[0].startswith(b'("name" "mailserver"')
    ok(client.select("INBOX", readonly=True))
    assert client.unselect()[0] == "OK"
    assert client.enable("CONDSTORE")[0] == "OK"


def test_imapclient_parses_everything(imap_server: RunningServer, fresh: str) -> None:
    """IMAPClient parses every response strictly: ENVELOPE, BODYSTRUCTURE, literals."""
    multipart = (
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n"
        "Cc: \"Dan, Jr.\" <dan@example.org>\r\n",
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
        "--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n")
    deliver(imap_server, fresh, subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=", body=multipart[1],
            extra=multipart[0])
    with IMAPClient("127.0.0.1", port=imap_server.ports["imaps"], ssl=True,
                    ssl_context=no_verify(), timeout=60) as client:
        client.login(fresh, PASSWORD)
        folders = {name for _flags, _delim, name in client.list_folders()}
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk"} <= folders
        assert client.find_special_folder(b"\\Sent") == "Sent"
        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 1 and info[b"UIDNEXT"] == 2
        data = client.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "INTERNALDATE", "FLAGS",
                                  "RFC822.SIZE", "BODY.PEEK[1]", "BODY.PEEK[2.MIME]"])[1]
        envelope = data[b"ENVELOPE"]
        assert envelope.subject == b"=?utf-8?q?Gr=C3=BC=C3=9Fe?="
        assert envelope.from_[0].mailbox == b"bob" and envelope.cc[0].name == b"Dan, Jr."
        structure = data[b"BODYSTRUCTURE"]
        assert structure.is_multipart
        assert structure[0][0][:2] == (b"text", b"plain")
        assert structure[0][1][:2] == (b"application", b"pdf")
        assert data[b"BODY[1]"] == b"Hello"
        assert data[b"BODY[2.MIME]"].startswith(b"Content-Type: application/pdf")
        assert client.search(["SUBJECT", "grüße"], charset="UTF-8") == [1]
        status = client.folder_status("Trash", [b"MESSAGES", b"UIDNEXT"])
        assert status == {b"MESSAGES": 0, b"UIDNEXT": 1}
        client.add_flags([1], [b"$Later"])
        assert b"$Later" in client.get_flags([1])[1]
        client.move([1], "Trash")
        assert client.folder_status("Trash", [b"MESSAGES"])[b"MESSAGES"] == 1
        assert client.namespace().personal == (("", "."),)
