"""store/quota.py: the usage count, kept by many processes at once, rebuilt by a scan
only when missing; and auth/quota_rules.py: the users file's Dovecot quota rules."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from mailserver.auth.quota_rules import (
    QuotaRuleError,
    format_size,
    limits_of,
    parse_size,
    with_limits,
)
from mailserver.interfaces import QuotaLimits, QuotaUsage
from mailserver.store import quota


def maildir(root: Path, *folders: str) -> Path:
    for folder in ("", *folders):
        for sub in ("new", "cur", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    return root


def _add_many(root: str, n: int) -> None:
    for _ in range(n):
        quota.change(Path(root), 100, 1)


def test_changes_from_four_processes_are_all_counted(tmp_path: Path) -> None:
    root = maildir(tmp_path / "alice")
    quota.change(root, 0, 1)  # no count yet: the scan makes it (an empty Maildir)
    assert quota.peek(root) == QuotaUsage(0, 0)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_add_many, args=(str(root), 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert quota.peek(root) == QuotaUsage(800 * 100, 800)
    assert (root / "mailserver-quota").read_bytes().startswith(
        b"00000000000000080000 00000000000000000800 ")


def test_scan_counts_every_folder_by_the_names_sizes(tmp_path: Path) -> None:
    root = maildir(tmp_path / "bob", ".Sent", ".Archive.2024")
    (root / "new" / "1.M1P1.host,S=10,W=12").write_bytes(b"a\nb\n012345")
    (root / ".Sent" / "cur" / "2.M2P2.host,S=5,W=6:2,S").write_bytes(b"abcd\n")
    # A foreign file without sizes in its name: read, LFs counted as CRLF.
    (root / ".Archive.2024" / "cur" / "3.foreign:2,").write_bytes(b"x\ny\r\nz")
    (root / "tmp" / "4.M4P4.host").write_bytes(b"in flight")  # not a message yet
    assert quota.scan(root) == QuotaUsage(12 + 6 + 7, 3)
    assert quota.usage(root) == QuotaUsage(25, 3)
    assert quota.peek(root) == QuotaUsage(25, 3)
    # Kept from now on, not scanned: a file added behind the store's back is not seen.
    (root / "new" / "5.M5P5.host,S=1,W=1").write_bytes(b"z")
    assert quota.usage(root) == QuotaUsage(25, 3)
    quota.forget(root)
    assert quota.usage(root) == QuotaUsage(26, 4)


def test_a_count_that_cannot_be_written_is_dropped(tmp_path: Path, monkeypatch:
                                                   pytest.MonkeyPatch) -> None:
    root = maildir(tmp_path / "carol")
    quota.change(root, 5, 1)

    def refuse(*args: object) -> None:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(quota, "_write", refuse)
    quota.change(root, 5, 1)  # does not raise: the operation it follows is done
    assert quota.peek(root) is None  # counted again at the next use


def test_a_line_caught_half_written_is_no_count(tmp_path: Path) -> None:
    root = maildir(tmp_path / "dora")
    quota.change(root, 0, 1)
    quota.change(root, 123456, 7)
    good = (root / "mailserver-quota").read_bytes()
    assert quota.peek(root) == QuotaUsage(123456, 7)
    torn = good.replace(b"123456", b"999999")  # new digits, the old checksum
    (root / "mailserver-quota").write_bytes(torn)
    assert quota.peek(root) is None
    assert quota.usage(root) == QuotaUsage(0, 0)  # counted again: the files say so
    (root / "mailserver-quota").write_bytes(b"12 3\n")  # not ours
    assert quota.peek(root) is None


def test_over_and_full_at_the_limit() -> None:
    limits = QuotaLimits(storage=1000, messages=3)
    assert quota.over(QuotaUsage(600, 1), limits, 400) is None  # exactly full: fits
    assert quota.over(QuotaUsage(600, 1), limits, 401) == "STORAGE"
    assert quota.over(QuotaUsage(10, 3), limits, 1) == "MESSAGE"
    assert not quota.full(QuotaUsage(999, 2), limits)
    assert quota.full(QuotaUsage(1000, 0), limits)
    assert quota.full(QuotaUsage(0, 3), limits)
    assert quota.over(QuotaUsage(10**12, 10**9), QuotaLimits(), 10**9) is None


def test_sizes_in_dovecot_units() -> None:
    assert parse_size("1G") == 1024**3
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("10k") == parse_size("10K") == parse_size("10") == 10240
    assert parse_size("7b") == 7
    for bad in ("", "-1", "1.5G", "10 G", "1P", "9" * 20):
        with pytest.raises(QuotaRuleError):
            parse_size(bad)
    assert [format_size(n) for n in (0, 1000, 2048, 3 * 1024**3, 1024**4)] == [
        "0b", "1000b", "2k", "3G", "1T"]


def test_rules_read_from_the_extra_fields() -> None:
    def extra(fields: str) -> tuple[str, ...]:
        return tuple(f"1000:1000::/home/a::{fields}".split(":"))

    assert limits_of(()) == QuotaLimits()
    assert limits_of(extra("userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=50")
                     ) == QuotaLimits(1024**3, 50)
    assert limits_of(extra("quota_rule=*:storage=100")) == QuotaLimits(100 * 1024, None)
    assert limits_of(extra("userdb_quota_rule=*:bytes=5000")) == QuotaLimits(5000, None)
    # Dovecot's own: per folder, relative, and 0 (no limit) are not limits here.
    assert limits_of(extra("quota_rule=Trash:storage=+100M quota_rule2=*:storage=10%")
                     ) == QuotaLimits()
    assert limits_of(extra("quota_rule=*:storage=0 quota_rule2=*:messages=x")) == QuotaLimits()
    assert limits_of(extra("userdb_mail=maildir:~/Mail")) == QuotaLimits()


def test_rules_written_keep_the_other_fields() -> None:
    fields = tuple("1000:1000:Alice:/home/a:/bin/sh:userdb_mail=maildir:~/M".split(":"))
    new = with_limits(fields, 2 * 1024**3, 100)
    assert ":".join(new) == ("1000:1000:Alice:/home/a:/bin/sh:userdb_mail=maildir:~/M "
                             "userdb_quota_rule=*:storage=2G userdb_quota_rule2=*:messages=100")
    assert limits_of(new) == QuotaLimits(2 * 1024**3, 100)
    # None keeps a limit, 0 removes it.
    assert limits_of(with_limits(new, None, 0)) == QuotaLimits(2 * 1024**3, None)
    assert ":".join(with_limits(new, 0, 0)) == (
        "1000:1000:Alice:/home/a:/bin/sh:userdb_mail=maildir:~/M")
    assert with_limits((), None, None) == ()
    assert ":".join(with_limits((), 1024, None)) == ":::::userdb_quota_rule=*:storage=1k"
    assert with_limits(with_limits((), 1024, None), 0, None) == ()


def test_delivery_counts_in_the_maildir_root_also_for_junk(tmp_path: Path) -> None:
    """The disk side of a delivery (the inbox's and DMARC quarantine's into .Junk): the
    count is the user's, in the Maildir root; a message that would pass the limit is
    refused with 552 5.2.2 before any copy is placed."""
    from mailserver.errors import ReplyError
    from mailserver.interfaces import MailboxId
    from mailserver.senderauth.junk import _JunkFile
    from mailserver.store.delivery import _MessageFile

    alice = MailboxId("example.org", "alice")
    root = tmp_path / "example.org" / "alice"
    for kind in (_MessageFile, _JunkFile):
        file = kind(tmp_path, (alice,), "host")
        file.limits = [QuotaLimits(storage=20)]
        file.stage([b"12345\n"], 6, 7)
    assert quota.peek(root) == QuotaUsage(14, 2)
    assert not (root / ".Junk" / "mailserver-quota").exists()
    file = _JunkFile(tmp_path, (alice,), "host")
    file.limits = [QuotaLimits(storage=20)]
    with pytest.raises(ReplyError) as caught:
        file.stage([b"1234567\n"], 8, 9)
    assert str(caught.value).startswith("552 5.2.2 Error: mailbox full")
    file.rollback()
    assert len(list((root / ".Junk" / "new").iterdir())) == 1  # the first only
    assert quota.peek(root) == QuotaUsage(14, 2)
    # A commit taken back (the client never heard the 250) is taken off the count.
    file = _MessageFile(tmp_path, (alice,), "host")
    file.stage([b"1\n"], 2, 3)
    assert quota.peek(root) == QuotaUsage(17, 3)
    file.rollback()
    assert quota.peek(root) == QuotaUsage(14, 2)


def test_a_rule_that_cannot_be_read_is_a_users_file_problem(tmp_path: Path) -> None:
    from mailserver.auth.userfile import parse_users

    table = parse_users("a@example.org:{PLAIN}x::::::userdb_quota_rule=*:storage=lots\n"
                        "b@example.org:{PLAIN}x::::::quota_rule2=*:messages=-5\n"
                        "c@example.org:{PLAIN}x::::::quota_rule=*:storage=2G\n",
                        tmp_path / "users")
    assert sorted(table.users) == ["a@example.org", "b@example.org", "c@example.org"]
    assert [str(p) for p in table.problems] == [
        f"{tmp_path}/users:1: a@example.org: userdb_quota_rule: not a size: 'lots' (a number "
        "with b, k, M, G or T); no limit applies",
        f"{tmp_path}/users:2: b@example.org: quota_rule2: not a count: '-5'; no limit applies"]
