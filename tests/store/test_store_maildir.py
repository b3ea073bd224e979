"""Maildir layout, path safety, unique names and their parser (store/maildir.py)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from mailserver.interfaces import MailboxId
from mailserver.store.maildir import (
    DEFAULT_FOLDERS,
    create_maildir,
    crlf_size,
    encode_host,
    ensure_maildir,
    folder_path,
    mailbox_path,
    parse_name,
    unique_name,
    with_flags,
)

ALICE = MailboxId("example.org", "alice")

NAME_RE = re.compile(
    r"^(?P<secs>\d+)\.M(?P<usecs>\d{1,6})P(?P<pid>\d+)Q(?P<q>\d+)R(?P<r>[0-9a-f]{16})"
    r"\.(?P<host>[^/:,]+),S=(?P<s>\d+),W=(?P<w>\d+)$"
)


# ----------------------------------------------------------------------------- paths


def test_mailbox_path_is_domain_then_localpart(tmp_path: Path) -> None:
    assert mailbox_path(tmp_path, ALICE) == tmp_path / "example.org" / "alice"


@pytest.mark.parametrize("domain,localpart", [
    ("..", "alice"), ("example.org", ".."), ("example.org", "."), ("", "alice"),
    ("example.org", ""), ("example.org", "a/b"), ("../etc", "x"), ("example.org", ".Sent"),
    ("example.org", "al\0ice"), (".hidden", "alice"), ("a/../..", "b"),
])
def test_mailbox_path_refuses_traversal(tmp_path: Path, domain: str, localpart: str) -> None:
    with pytest.raises(ValueError):
        mailbox_path(tmp_path, MailboxId(domain, localpart))
    with pytest.raises(ValueError):
        create_maildir(tmp_path, MailboxId(domain, localpart))
    assert list(tmp_path.iterdir()) == []


def test_folder_path() -> None:
    root = Path("/m/example.org/alice")
    assert folder_path(root, "INBOX") == root
    assert folder_path(root, "Sent") == root / ".Sent"
    assert folder_path(root, "Archive.2024") == root / ".Archive.2024"
    for bad in ("", "..", "a..b", "a/b", ".x"):
        with pytest.raises(ValueError):
            folder_path(root, bad)


# ----------------------------------------------------------------------------- creation


def test_create_maildir_layout(tmp_path: Path) -> None:
    root = create_maildir(tmp_path, ALICE)
    assert root == tmp_path / "example.org" / "alice"
    for sub in ("cur", "new", "tmp"):
        assert (root / sub).is_dir()
        assert stat.S_IMODE((root / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.parent.stat().st_mode) == 0o700
    for folder in DEFAULT_FOLDERS:
        fdir = root / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            assert (fdir / sub).is_dir()
        assert (fdir / "maildirfolder").is_file()
        assert stat.S_IMODE(fdir.stat().st_mode) == 0o700
    assert (root / "subscriptions").read_text() == "Sent\nDrafts\nTrash\nJunk\n"
    # nothing left behind by the no-clobber write of subscriptions
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["cur", "new", "tmp", "subscriptions", *(f".{f}" for f in DEFAULT_FOLDERS)])


def test_create_maildir_is_idempotent_and_keeps_user_edits(tmp_path: Path) -> None:
    root = create_maildir(tmp_path, ALICE)
    (root / "subscriptions").write_text("Sent\nLists\n")
    (root / "new" / "msg").write_bytes(b"x")
    assert create_maildir(tmp_path, ALICE) == root
    assert ensure_maildir(tmp_path, ALICE) == root
    assert (root / "subscriptions").read_text() == "Sent\nLists\n"
    assert (root / "new" / "msg").read_bytes() == b"x"


def test_ensure_maildir_completes_a_half_made_maildir(tmp_path: Path) -> None:
    root = mailbox_path(tmp_path, ALICE)
    (root / "cur").mkdir(parents=True)  # a process died before new/ was made
    ensure_maildir(tmp_path, ALICE)
    assert (root / "new").is_dir() and (root / ".Trash" / "maildirfolder").is_file()


def test_create_maildir_races_between_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        try:
            create_maildir(tmp_path, ALICE)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    workers = [threading.Thread(target=make) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    root = mailbox_path(tmp_path, ALICE)
    assert (root / "subscriptions").read_text() == "Sent\nDrafts\nTrash\nJunk\n"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_create_maildir_makes_missing_data_dir(tmp_path: Path) -> None:
    mail_dir = tmp_path / "var" / "mail"
    root = ensure_maildir(mail_dir, ALICE)
    assert (root / "new").is_dir()


def test_create_maildir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "example.org").write_text("not a directory")
    with pytest.raises(OSError):
        create_maildir(tmp_path, ALICE)


# ----------------------------------------------------------------------------- names


def test_unique_name_format() -> None:
    name = unique_name(1234, 1270, host="mx1.example.org")
    m = NAME_RE.match(name)
    assert m, name
    assert m["pid"] == str(os.getpid())
    assert m["host"] == "mx1.example.org"
    assert (m["s"], m["w"]) == ("1234", "1270")
    assert 0 <= int(m["usecs"]) < 1_000_000


def test_unique_name_without_sizes_and_host_encoding() -> None:
    assert encode_host("a/b:c") == "a\\057b\\072c"
    name = unique_name(host="odd/host:name")
    assert "/" not in name and ":" not in name and "," not in name
    assert name.endswith(".odd\\057host\\072name")


def _names(count: int) -> list[str]:
    return [unique_name(10, 11, host="h") for _ in range(count)]


def _names_to(queue: multiprocessing.queues.Queue[list[str]], count: int) -> None:
    queue.put(_names(count))


def test_unique_names_are_unique_across_processes() -> None:
    # spawn, not fork: forking a process that has run threads (the disk pool in other
    # tests) can deadlock the child on a lock some thread held at the time.
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.queues.Queue[list[str]] = ctx.Queue()
    workers = [ctx.Process(target=_names_to, args=(queue, 2500)) for _ in range(4)]
    for w in workers:
        w.start()
    names = [n for _ in workers for n in queue.get(timeout=60)]
    for w in workers:
        w.join(timeout=60)
    assert len(names) == 10_000
    assert len(set(names)) == 10_000
    assert len({NAME_RE.match(n)["pid"] for n in names}) == 4  # type: ignore[index]


def test_unique_names_are_unique_across_threads() -> None:
    results: list[list[str]] = []
    workers = [threading.Thread(target=lambda: results.append(_names(2500))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    names = [n for batch in results for n in batch]
    assert len(set(names)) == 10_000
    counters = [int(NAME_RE.match(n)["q"]) for n in names]  # type: ignore[index]
    assert len(set(counters)) == 10_000


def test_crlf_size() -> None:
    assert crlf_size(b"") == 0
    assert crlf_size(b"a\nb\n") == 6
    assert crlf_size(b"no newline") == 10


def test_parse_name() -> None:
    parsed = parse_name("1700000000.M1P2Q3R0011223344556677.host,S=120,W=124:2,SF")
    assert parsed.base == "1700000000.M1P2Q3R0011223344556677.host"
    assert (parsed.size, parsed.crlf_size) == (120, 124)
    assert parsed.flags == "FS" and parsed.has_info
    bare = parse_name("1700000000.M1P2.host")
    assert (bare.size, bare.crlf_size, bare.flags, bare.has_info) == (None, None, "", False)
    # Dovecot may add fields of its own; unknown info forms carry no flags.
    other = parse_name("123.M1P2.host,S=5,X=9,W=7:1,experimental")
    assert (other.size, other.crlf_size, other.flags) == (5, 7, "")


def test_parse_round_trip_and_flags() -> None:
    data = b"Subject: hi\n\nbody\n"
    name = unique_name(len(data), crlf_size(data), host="h:1")
    parsed = parse_name(name)
    assert (parsed.size, parsed.crlf_size) == (len(data), len(data) + 3)
    flagged = with_flags(name, "SRS")
    assert flagged == name + ":2,RS"
    assert with_flags(flagged, "") == name + ":2,"
    assert parse_name(flagged).base == parsed.base
