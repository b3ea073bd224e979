"""A real Dovecot 2.3 (Debian's, bench/dovecot_instance.py) files mail; then our server
serves the same Maildir tree in place: every IMAP and POP3 client sees what it saw.

Dovecot receives IMAP APPENDs into several folders, with flags and keywords, and
expunges some (UIDs with gaps); its POP3 UIDLs use its default `%08Xu%08Xv`. Then
our server starts on the same tree with `pop3.uidl_format = "%08Xu%08Xv"`: the same
UIDVALIDITY, UIDs, flags, keywords, subscriptions and UIDLs over imaplib/poplib, and
new mail we deliver continues Dovecot's UID sequence.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import sys
from pathlib import Path
from typing import Any

import pytest
from server_harness import RunningServer, make_server

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "bench"))

USER, PASSWORD = "bob@example.org", "secret-pw"
FOLDERS = ("INBOX", "Work", "Work.Sub", "Archive")

pytestmark = pytest.mark.timeout(240)


def imap_state(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    """What an IMAP client keeps per folder: UIDVALIDITY, UIDNEXT, UID -> flags (the
    session-only \\Recent left out), the subscriptions, PERMANENTFLAGS keywords."""
    m = imaplib.IMAP4(host, port)
    m.login(user, password)
    state: dict[str, Any] = {}
    for folder in FOLDERS:
        typ, data = m.status(folder, "(UIDVALIDITY UIDNEXT MESSAGES)")
        assert typ == "OK", data
        text = data[0].decode()
        status = {k: int(v) for k, v in re.findall(r"(UIDVALIDITY|UIDNEXT|MESSAGES) (\d+)",
                                                   text)}
        m.select(folder, readonly=True)
        messages = {}
        if status["MESSAGES"]:
            typ, data = m.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
                                              "(SUBJECT)])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta = item[0].decode()
                uid = int(re.search(r"UID (\d+)", meta).group(1))  # type: ignore[union-attr]
                flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1)  # type: ignore[union-attr]
                messages[uid] = (sorted(f for f in flags.split() if f != "\\Recent"),
                                 item[1].strip().decode())
        m.close()
        state[folder] = (status, messages)
    typ, data = m.lsub('""', "*")
    state["LSUB"] = sorted(line.decode().rsplit(" ", 1)[1].strip('"') for line in data)
    m.logout()
    return state


def pop3_uidls(host: str, port: int, user: str, password: str) -> list[str]:
    p = poplib.POP3(host, port)
    p.user(user)
    p.pass_(password)
    lines = p.uidl()[1]
    p.quit()
    return sorted(line.decode().split()[1] for line in lines)


def fill_with_dovecot(host: str, port: int) -> None:
    """Folders, flags, keywords, subscriptions and UID gaps, all made by Dovecot."""
    m = imaplib.IMAP4(host, port)
    m.login("bob", "pw")
    for folder in FOLDERS[1:]:
        assert m.create(folder)[0] == "OK"
    m.subscribe("Work")
    m.subscribe("Work.Sub")
    m.subscribe("INBOX")
    flags = [None, r"(\Seen)", r"(\Seen \Flagged $Label1)", r"(\Answered Junk)",
             r"(\Draft)", r"($Label1 NonJunk \Seen)"]
    for i in range(12):
        for folder in FOLDERS:
            body = (f"From: a@example.com\r\nSubject: {folder} {i}\r\n\r\n"
                    f"body {i}\r\n").encode()
            assert m.append(folder, flags[i % len(flags)], None, body)[0] == "OK"
    for folder, gone in (("INBOX", "2,5:7"), ("Work", "1,12"), ("Archive", "3")):
        m.select(folder)
        m.uid("STORE", gone, "+FLAGS.SILENT", r"(\Deleted)")
        assert m.expunge()[0] == "OK"
    m.select("Work.Sub")
    m.store("4", "+FLAGS", r"(ProjectX)")  # a keyword set after the APPEND
    m.logout()


def test_our_server_serves_a_dovecot_maildir_in_place(tmp_path: Path) -> None:
    from dovecot_instance import DovecotInstance

    server = make_server(tmp_path / "ours", start=False,
                         listen={"smtp": "tcp:0:interface=127.0.0.1",
                                 "imap": "tcp:0:interface=127.0.0.1",
                                 "pop3": "tcp:0:interface=127.0.0.1"},
                         auth={"allow_plaintext_without_tls": True},
                         pop3={"uidl_format": "%08Xu%08Xv"})
    server.add_user(USER, PASSWORD)
    mail_root = server.data_dir / "mail" / "example.org"  # Dovecot's %n = our local part
    with DovecotInstance(tmp_path / "dovecot", mail_root, {"bob": "pw"}) as dc:
        fill_with_dovecot(dc.host, dc.ports["imap"])
        before = imap_state(dc.host, dc.ports["imap"], "bob", "pw")
        uidls_before = pop3_uidls(dc.host, dc.ports["pop3"], "bob", "pw")
    uidlists = {p: p.read_bytes() for p in mail_root.rglob("dovecot-uidlist")}
    assert before["INBOX"][0]["UIDNEXT"] == 13 and len(before["INBOX"][1]) == 8
    assert any("ProjectX" in flags for flags, _ in before["Work.Sub"][1].values())

    running = server.start()
    try:
        after = imap_state("127.0.0.1", running.ports["imap"], USER, PASSWORD)
        assert after == before
        assert pop3_uidls("127.0.0.1", running.ports["pop3"], USER, PASSWORD) \
            == uidls_before
        # Dovecot's files are as it left them (rolling back stays possible).
        assert {p: p.read_bytes() for p in mail_root.rglob("dovecot-uidlist")} == uidlists
        _deliver_and_check(running, before)
    finally:
        running.stop()


def _deliver_and_check(running: RunningServer, before: dict[str, Any]) -> None:
    """New mail continues Dovecot's UID sequence under the same UIDVALIDITY."""
    with smtplib.SMTP("127.0.0.1", running.ports["smtp"]) as s:
        s.sendmail("a@example.com", [USER], b"Subject: after the move\r\n\r\nhi\r\n")
    after = imap_state("127.0.0.1", running.ports["imap"], USER, PASSWORD)
    status, messages = after["INBOX"]
    expected_uid = before["INBOX"][0]["UIDNEXT"]
    assert status["UIDVALIDITY"] == before["INBOX"][0]["UIDVALIDITY"]
    assert messages[expected_uid] == ([], "Subject: after the move")
    assert status["UIDNEXT"] == expected_uid + 1
    uidl = f"{expected_uid:08x}{status['UIDVALIDITY']:08x}"
    assert uidl in pop3_uidls("127.0.0.1", running.ports["pop3"], USER, PASSWORD)
    assert os.path.exists(running.maildir(USER) / "mailserver-uidlist")
