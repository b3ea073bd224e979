"""The maildrop's file work: snapshot, wire form, TOP, Seen, expunge, the [IN-USE] lock."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pop3_helpers import put_message

from mailserver.interfaces import MaildropInUse
from mailserver.pop3 import maildrop
from mailserver.store import maildrop as store_maildrop
from mailserver.store.maildroplock import MaildropLock


@pytest.mark.parametrize("stored, wire", [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b".starts\n.\n..x\nmid.dle\n", b"..starts\r\n..\r\n...x\r\nmid.dle\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"crlf\r\nfile\r\n", b"crlf\r\nfile\r\n.\r\n"),  # a foreign file with CRLF
    (b"", b".\r\n"),
])
def test_to_wire(stored: bytes, wire: bytes) -> None:
    assert maildrop.to_wire(stored) == wire


def reference_wire(stored: bytes) -> bytes:
    """RFC 1939 3 read literally, one line at a time: CRLF after every line, a dot
    before every line that begins with one, then the terminating ".CRLF"."""
    lines = stored.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


def test_to_wire_equals_the_line_by_line_definition() -> None:
    """The whole-buffer split/replace passes against the RFC's per-line rule, on 3,000
    random messages over the octets that matter (dots, LF, CR at every position)."""
    rng = random.Random(1939)
    for _ in range(3000):
        stored = bytes(rng.choice(b"a..\n\r") for _ in range(rng.randint(0, 40)))
        assert maildrop.to_wire(stored) == reference_wire(stored), stored


def test_read_replies_are_whole_retr_replies(tmp_path: Path) -> None:
    stored = [b"Subject: a\n\n.dot\nend\n", b".first\n\n..x\n", b"no newline"]
    paths = [put_message(tmp_path, s) for s in stored]
    # A foreign file whose name claims fewer octets than it has is still read whole.
    liar = tmp_path / "new" / "1.M1P1Q1R1.host,S=3,W=4"
    liar.write_bytes(b"x" * 100_000 + b"\n")
    paths.append(liar)
    stored.append(b"x" * 100_000 + b"\n")
    drop = store_maildrop.open_maildir(tmp_path)
    messages = drop.messages
    assert [m.name for m in messages] == [p.name for p in paths][-1:] + \
        [p.name for p in paths][:-1]  # the foreign name sorts first (its time is 1)
    by_name = dict(zip([p.name for p in paths], stored, strict=True))
    replies = maildrop.read_replies(drop, range(1, len(messages) + 1))
    for message, reply in zip(messages, replies, strict=True):
        assert reply == (f"+OK {message.size} octets\r\n".encode()
                         + maildrop.to_wire(by_name[message.name]))
    paths[0].unlink()  # expunged by another session meanwhile
    assert maildrop.read_replies(drop, range(1, len(messages) + 1))[1] is None
    drop.close()


def test_a_name_claiming_a_huge_size_allocates_nothing_of_that_size(tmp_path: Path) -> None:
    put_message(tmp_path, b"small\n", name="2.M1P1Q1R1.host,S=6,W=999999999999")
    drop = store_maildrop.open_maildir(tmp_path)
    assert maildrop.read_replies(drop, [1]) == [
        b"+OK 999999999999 octets\r\nsmall\r\n.\r\n"]
    drop.close()


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
    messages = store_maildrop.snapshot(tmp_path)
    assert [m.name for m in messages] == [first.name, second.name, foreign.name]
    assert [m.size for m in messages] == [5, 7, 6]
    assert messages[0].uidl == first.name.split(",")[0]
    assert messages[2].uidl == "9999999999.foreign"


def test_uidl_fits_rfc1939() -> None:
    assert store_maildrop.uidl_for("1.M2P3Q4.host") == "1.M2P3Q4.host"
    long = store_maildrop.uidl_for("1.M2P3Q4." + "h" * 80)
    assert len(long) <= 70 and long == store_maildrop.uidl_for("1.M2P3Q4." + "h" * 80)
    assert store_maildrop.uidl_for("1.M2 host") != "1.M2 host"  # space is outside 0x21-0x7E


def test_seen_and_expunge_follow_renames(tmp_path: Path) -> None:
    a = put_message(tmp_path, b"a\n")
    b = put_message(tmp_path, b"b\n", subdir="cur", flags="FR")
    drop = store_maildrop.open_maildir(tmp_path)
    a.rename(tmp_path / "cur" / (a.name + ":2,T"))  # another session flagged it
    drop.mark_seen([1, 2])
    assert sorted(p.name for p in (tmp_path / "cur").iterdir()) == sorted(
        [a.name + ":2,ST", b.name.replace(":2,FR", ":2,FRS")])
    assert drop.expunge([1, 2]) == 0
    assert drop.expunge([1, 2]) == 0  # already gone: fine
    drop.close()
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
            "from mailserver.store.maildroplock import MaildropLock\n"
            "from mailserver.interfaces import MaildropInUse\n"
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
    drop = store_maildrop.open_maildir(tmp_path)
    messages = drop.messages
    for p in paths:  # an IMAP session flags them all (new/ -> cur/, :2,F)
        p.rename(tmp_path / "cur" / (p.name + ":2,F"))
    numbers = range(1, 21)
    assert [(r or b"").split(b"\r\n", 1)[1] for r in maildrop.read_replies(drop, numbers)] \
        == [f"m{i}\r\n.\r\n".encode() for i in range(20)]
    assert {m.subdir for m in messages} == {"cur"}
    (tmp_path / "cur" / (paths[0].name + ":2,F")).unlink()  # expunged by IMAP
    assert maildrop.read_replies(drop, [1]) == [None]
    assert drop.expunge(numbers) == 0
    drop.close()
    assert list((tmp_path / "cur").iterdir()) == []
