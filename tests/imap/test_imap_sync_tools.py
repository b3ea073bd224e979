"""Real sync and fetch tools against the real server: mbsync (isync) both ways over a
multi-folder account, and curl's imap:// and imaps:// URLs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_helpers import PASSWORD, connect, deliver
from server_harness import RunningServer

# isync (mbsync) and curl are installed by `make test` (make tools): missing is a failure.

USER = "carol@example.net"


def mbsyncrc(server: RunningServer, local: Path, service: str = "imap") -> Path:
    tls = ("SSLType None" if service == "imap"
           else "SSLType IMAPS\nCertificateFile " + str(server.data_dir / "tls" / "cert.pem"))
    text = f"""IMAPAccount test
Host 127.0.0.1
Port {server.ports[service]}
User {USER}
Pass "{PASSWORD}"
{tls}

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
Create Both
Expunge Both
SyncState *
"""
    path = local.parent / f"mbsyncrc-{service}"
    path.write_text(text)
    return path


def mbsync(config: Path) -> str:
    result = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def local_messages(folder: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") if (folder / sub).is_dir()
                  for p in (folder / sub).iterdir())


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mbsync")
    (root / "mail").mkdir()
    yield root / "mail"


def test_mbsync_both_ways(imap_server: RunningServer, local: Path) -> None:
    deliver(imap_server, USER, subject="first")
    deliver(imap_server, USER, subject="second")
    client = connect(imap_server, USER)
    client.create("Projects.Alpha")
    client.append("Projects.Alpha", "(\\Seen)", None,
                  b"From: x@example.org\r\nSubject: alpha\r\n\r\nalpha body\r\n")
    client.logout()
    config = mbsyncrc(imap_server, local)

    # 1. initial sync pulls every folder
    mbsync(config)
    assert len(local_messages(local / "INBOX")) == 2
    alpha = local_messages(local / "Projects" / "Alpha")
    assert len(alpha) == 1 and alpha[0].name.endswith(",S")
    assert (local / "Sent").is_dir() and (local / "Trash").is_dir()

    # 2. local changes push to the server: a new message, a flag, a deletion, a folder
    inbox = local_messages(local / "INBOX")
    (local / "INBOX" / "cur" / "1700000000.local1.host:2,").write_bytes(
        b"From: me@example.org\nSubject: written locally\n\nlocal\n")
    inbox[0].rename(str(inbox[0]).split(":2,")[0] + ":2,F")
    inbox[1].unlink()
    (local / "Notes" / "cur").mkdir(parents=True)
    (local / "Notes" / "new").mkdir()
    (local / "Notes" / "tmp").mkdir()
    (local / "Notes" / "cur" / "1700000001.local2.host:2,S").write_bytes(
        b"Subject: note\n\nremember\n")
    mbsync(config)
    client = connect(imap_server, USER)
    client.select("INBOX")
    typ, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    pairs = [(part[0], part[1].strip()) for part in data if isinstance(part, tuple)]
    subjects = sorted(subject for _, subject in pairs)
    assert subjects == [b"Subject: first", b"Subject: written locally"]
    assert any(b"\\Flagged" in head and subject == b"Subject: first"
               for head, subject in pairs)
    assert client.select("Notes")[1] == [b"1"]

    # 3. server-side changes pull again
    client.select("INBOX")
    client.store("1:*", "+FLAGS", "(\\Seen)")
    client.logout()
    deliver(imap_server, USER, subject="third")
    mbsync(config)
    names = [p.name for p in local_messages(local / "INBOX")]
    assert len(names) == 3
    assert sum(1 for n in names if "S" in n.rsplit(",", 1)[-1]) == 2
    disk = [p.name for p in imap_server.visible_files(USER)]
    assert len(disk) == 3

    # 4. nothing left to do: a second run changes nothing
    mbsync(config)
    assert len(local_messages(local / "INBOX")) == 3


def test_mbsync_over_imaps(imap_server: RunningServer, tmp_path: Path) -> None:
    cert = imap_server.data_dir / "tls" / "cert.pem"
    assert cert.exists(), f"the server made no self-signed certificate at {cert}"
    (tmp_path / "mail").mkdir()
    config = mbsyncrc(imap_server, tmp_path / "mail", "imaps")
    mbsync(config)
    assert local_messages(tmp_path / "mail" / "INBOX")


def test_curl_fetches_by_uid(imap_server: RunningServer) -> None:
    deliver(imap_server, "bob@example.org", subject="curl me", body="curl body\n")
    for scheme, service in (("imap", "imap"), ("imaps", "imaps")):
        url = f"{scheme}://127.0.0.1:{imap_server.ports[service]}/INBOX;UID=1"
        result = subprocess.run(["curl", "-sS", "-k", url, "-u", f"bob@example.org:{PASSWORD}"],
                                capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout == imap_server.messages("bob@example.org")[0].replace(
            b"\n", b"\r\n")
    listing = subprocess.run(
        ["curl", "-sS", f"imap://127.0.0.1:{imap_server.ports['imap']}/",
         "-u", f"bob@example.org:{PASSWORD}"], capture_output=True, timeout=30)
    assert b'"." INBOX' in listing.stdout and b"\\Sent" in listing.stdout
