"""The maildrop's file work: snapshot, wire form, TOP, Seen, expunge, the [IN-USE] lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pop3_helpers import put_message

from mailserver.pop3 import maildrop
from mailserver.pop3.lock import MaildropInUse, MaildropLock


@pytest.mark.parametrize("stored, wire", [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b".starts\n.\n..x\nmid.dle\n", b"..starts\r\n..\r\n...x\r\nmid.dle\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"crlf\r\nfile\r\n", b"crlf\r\nfile\r\n.\r\n"),  # a foreign file with CRLF
    (b"", b".\r\n"),
])
def test_to_wire(stored: bytes, wire: bytes) -> None:
    assert maildrop.to_wire(stored) == wire


@pytest.mark.parametrize("lines, part", [
    (0, b"H: 1\nH: 2\n\n"),
    (1, b"H: 1\nH: 2\n\nb1\n"),
    (2, b"H: 1\nH: 2\n\nb1\nb2\n"),
    (9, b"H: 1\nH: 2\n\nb1\nb2\nb3\n"),
])
def test_top_part(lines: int, part: bytes) -> None:
    assert maildrop.top_part(b"H: 1\nH: 2\n\nb1\nb2\nb3\n", lines) == part


def test_top_part_without_body_or_header() -> None:
    assert maildrop.top_part(b"H: 1\nH: 2\n", 3) == b"H: 1\nH: 2\n"
    assert maildrop.top_part(b"\nbody\nmore\n", 1) == b"\nbody\n"


def test_snapshot_order_sizes_and_uidl(tmp_path: Path) -> None:
    first = put_message(tmp_path, b"one\n")
    second = put_message(tmp_path, b"two\n\n", subdir="cur", flags="S")
    foreign = tmp_path / "new" / "9999999999.foreign"  # no W=: measured
    foreign.write_bytes(b"x\ny\r\n")
    (tmp_path / "new" / ".hidden").write_bytes(b"not a message")
    messages = maildrop.snapshot(tmp_path)
    assert [m.name for m in messages] == [first.name, second.name, foreign.name]
    assert [m.size for m in messages] == [5, 7, 6]
    assert messages[0].uidl == first.name.split(",")[0]
    assert messages[2].uidl == "9999999999.foreign"


def test_uidl_fits_rfc1939() -> None:
    assert maildrop.uidl_for("1.M2P3Q4.host") == "1.M2P3Q4.host"
    long = maildrop.uidl_for("1.M2P3Q4." + "h" * 80)
    assert len(long) <= 70 and long == maildrop.uidl_for("1.M2P3Q4." + "h" * 80)
    assert maildrop.uidl_for("1.M2 host") != "1.M2 host"  # space is outside 0x21-0x7E


def test_seen_and_expunge_follow_renames(tmp_path: Path) -> None:
    a = put_message(tmp_path, b"a\n")
    b = put_message(tmp_path, b"b\n", subdir="cur", flags="FR")
    messages = maildrop.snapshot(tmp_path)
    a.rename(tmp_path / "cur" / (a.name + ":2,T"))  # another session flagged it
    maildrop.mark_seen(tmp_path, messages)
    assert sorted(p.name for p in (tmp_path / "cur").iterdir()) == sorted(
        [a.name + ":2,ST", b.name.replace(":2,FR", ":2,FRS")])
    assert maildrop.expunge(tmp_path, messages) == 0
    assert maildrop.expunge(tmp_path, messages) == 0  # already gone: fine
    assert list((tmp_path / "cur").iterdir()) == []


def test_lock_excludes_a_second_holder_in_this_process(tmp_path: Path) -> None:
    lock = MaildropLock.acquire(tmp_path)
    with pytest.raises(MaildropInUse):
        MaildropLock.acquire(tmp_path)
    lock.release()
    lock.release()  # idempotent
    MaildropLock.acquire(tmp_path).release()


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; "
            "from mailserver.pop3.lock import MaildropLock, MaildropInUse\n"
            "try:\n    MaildropLock.acquire(Path(sys.argv[1]))\nexcept MaildropInUse:\n"
            "    sys.exit(3)\n")
    lock = MaildropLock.acquire(tmp_path)
    held = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert held.returncode == 3
    lock.release()
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert free.returncode == 0
    assert oct(os.stat(tmp_path / "pop3.lock").st_mode & 0o777) == "0o600"


def test_batch_jobs_find_every_renamed_message(tmp_path: Path) -> None:
    paths = [put_message(tmp_path, f"m{i}\n".encode()) for i in range(20)]
    messages = maildrop.snapshot(tmp_path)
    for p in paths:  # an IMAP session flags them all (new/ -> cur/, :2,F)
        p.rename(tmp_path / "cur" / (p.name + ":2,F"))
    assert maildrop.read_wire(tmp_path, messages) == [
        f"m{i}\r\n.\r\n".encode() for i in range(20)]
    assert {m.subdir for m in messages} == {"cur"}
    (tmp_path / "cur" / (paths[0].name + ":2,F")).unlink()  # expunged by IMAP
    assert maildrop.read_wire(tmp_path, messages[:1]) == [None]
    assert maildrop.expunge(tmp_path, messages) == 0
    assert list((tmp_path / "cur").iterdir()) == []
