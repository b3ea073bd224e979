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
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from server_harness import RunningServer, admin, make_server

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


def pop3_uidls(host: str, port: int, user: str, password: str,
               attempts: int = 1) -> list[str]:
    for attempt in range(attempts):
        p = poplib.POP3(host, port)
        p.user(user)
        try:
            p.pass_(password)
        except poplib.error_proto:
            # Dovecot 2.3 answered one login in ~20 runs "-ERR [SYS/TEMP] Internal error"
            # right after the IMAP session that filled the tree; a second login works.
            p.close()
            if attempt + 1 == attempts:
                raise
            time.sleep(0.5)
            continue
        lines = p.uidl()[1]
        p.quit()
        return sorted(line.decode().split()[1] for line in lines)
    raise AssertionError("unreachable")


def fill_with_dovecot(host: str, port: int) -> None:
    """Folders, flags, keywords, subscriptions and UID gaps, all made by Dovecot."""
    m = imaplib.IMAP4(host, port)
    m.login(USER, PASSWORD)
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
            typ, data = m.append(folder, flags[i % len(flags)], None, body)
            assert typ == "OK", (folder, i, data)
    for folder, gone in (("INBOX", "2,5:7"), ("Work", "1,12"), ("Archive", "3")):
        m.select(folder)
        m.uid("STORE", gone, "+FLAGS.SILENT", r"(\Deleted)")
        assert m.expunge()[0] == "OK"
    m.select("Work.Sub")
    m.store("4", "+FLAGS", r"(ProjectX)")  # a keyword set after the APPEND
    m.logout()


def mbsync(tmp_path: Path, port: int) -> list[str]:
    """Pull every folder into tmp_path/local with mbsync (state files kept there);
    the local file names afterwards. A changed UIDVALIDITY is an mbsync error."""
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""IMAPAccount test
Host 127.0.0.1
Port {port}
User {USER}
Pass "{PASSWORD}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
""")
    result = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(str(p.relative_to(local)) for p in local.rglob("*")
                  if p.is_file() and p.parent.name in ("cur", "new"))


def fetchmail(tmp_path: Path, port: int) -> int:
    """fetchmail --keep --uidl (its UID list kept in tmp_path/home); how many messages
    it downloaded this time."""
    home, out = tmp_path / "home", tmp_path / "fetched"
    home.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    had = len(os.listdir(out))
    rc = home / ".fetchmailrc"
    # One poll name for both servers: fetchmail keys its UIDL list by it.
    rc.write_text(f'poll mailhost via 127.0.0.1 protocol pop3 port {port} auth password\n'
                  f'  user "{USER}" password "{PASSWORD}" is root here\n'
                  f'  sslproto ""\n'
                  f'  mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n')
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    done = subprocess.run(["fetchmail", "--nodetach", "--invisible", "--nosyslog", "-f",
                           str(rc), "--pidfile", str(home / "pid"), "--keep", "--uidl"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: no mail
    return len(os.listdir(out)) - had


def test_our_server_serves_a_dovecot_maildir_in_place(tmp_path: Path) -> None:
    from dovecot_instance import DovecotInstance

    listen = {"smtp": "tcp:0:interface=127.0.0.1", "imap": "tcp:0:interface=127.0.0.1",
              "pop3": "tcp:0:interface=127.0.0.1"}
    settings: dict[str, Any] = {"listen": listen,
                                "auth": {"allow_plaintext_without_tls": True},
                                "pop3": {"uidl_format": "%08Xu%08Xv"}}
    server = make_server(tmp_path / "ours", start=False, **settings)
    server.add_user(USER, PASSWORD)
    mail_root = server.data_dir / "mail" / "example.org"  # Dovecot's %n = our local part
    # Dovecot's passwd-file lookup uses %n: "bob@example.org" logs in as bob there too.
    with DovecotInstance(tmp_path / "dovecot", mail_root, {"bob": PASSWORD}) as dc:
        fill_with_dovecot(dc.host, dc.ports["imap"])
        before = imap_state(dc.host, dc.ports["imap"], USER, PASSWORD)
        uidls_before = pop3_uidls(dc.host, dc.ports["pop3"], USER, PASSWORD, attempts=3)
        synced = mbsync(tmp_path, dc.ports["imap"])
        assert fetchmail(tmp_path, dc.ports["pop3"]) == 8
    uidlists = {p: p.read_bytes() for p in mail_root.rglob("dovecot-uidlist")}
    assert before["INBOX"][0]["UIDNEXT"] == 13 and len(before["INBOX"][1]) == 8
    assert any("ProjectX" in flags for flags, _ in before["Work.Sub"][1].values())
    assert len(synced) == sum(len(before[f][1]) for f in FOLDERS)
    shutil.copytree(mail_root, tmp_path / "vmail" / "example.org", symlinks=True)

    running = server.start()
    try:
        after = imap_state("127.0.0.1", running.ports["imap"], USER, PASSWORD)
        assert after == before
        assert pop3_uidls("127.0.0.1", running.ports["pop3"], USER, PASSWORD) \
            == uidls_before
        # Zero re-download: mbsync finds nothing to pull (same local files, and no
        # UIDVALIDITY error), fetchmail nothing new.
        assert mbsync(tmp_path, running.ports["imap"]) == synced
        assert fetchmail(tmp_path, running.ports["pop3"]) == 0
        # Dovecot's files are as it left them (rolling back stays possible).
        assert {p: p.read_bytes() for p in mail_root.rglob("dovecot-uidlist")} == uidlists
        _deliver_and_check(running, before)
        assert fetchmail(tmp_path, running.ports["pop3"]) == 1
    finally:
        running.stop()

    # The same through `mailserver import dovecot` into another server's data_dir.
    imported = make_server(tmp_path / "imported", start=False, **settings)
    imported.add_user(USER, PASSWORD)
    result = admin(imported.config_path, "import", "dovecot", "--from",
                   str(tmp_path / "vmail"), "--all")
    assert "0 warnings" in result.stdout, result.stdout + result.stderr
    running = imported.start()
    try:
        assert imap_state("127.0.0.1", running.ports["imap"], USER, PASSWORD) == before
        assert pop3_uidls("127.0.0.1", running.ports["pop3"], USER, PASSWORD) \
            == uidls_before
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
