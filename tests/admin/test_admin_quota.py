"""`mailserver doctor` on the quota count, and `user quota` on a Dovecot user line."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_admin_dovecot_import import add_bob, config_path, run

from mailserver.store import quota

__all__ = ["config_path"]  # the fixture, imported


def test_doctor_notes_a_count_that_is_off(tmp_path: Path, config_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    root = tmp_path / "data" / "mail" / "example.org" / "bob"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "new" / "1700000001.M1P1.a,S=2,W=3").write_bytes(b"a\n")
    code, out, _ = run(config_path, capsys, monkeypatch, "doctor", "--user", "bob@example.org")
    assert code == 0 and "quota" not in out  # no count yet: nothing to compare
    quota.change(root, 3, 1)  # made by a scan, which sees the file: right
    code, out, _ = run(config_path, capsys, monkeypatch, "doctor", "--user", "bob@example.org")
    assert "quota" not in out
    (root / "cur" / "1700000002.M1P1.b,S=4,W=6:2,S").write_bytes(b"b\nc\n")  # behind its back
    code, out, _ = run(config_path, capsys, monkeypatch, "doctor", "--user", "bob@example.org")
    assert code == 0
    assert (f"note: {root}: quota count says 1 messages, 3 octets; the files are 2, 9: "
            f"remove {root}/mailserver-quota to count again") in out.splitlines()


def test_user_quota_keeps_a_dovecot_line(tmp_path: Path, config_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "data" / "users"
    users.parent.mkdir(parents=True, exist_ok=True)
    line = ("bob@example.org:{PLAIN}pw:1000:1000:Bob:/home/bob::"
            "userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G")
    users.write_text("# from Dovecot\n" + line + "\n")
    users.chmod(0o600)
    code, out, err = run(config_path, capsys, monkeypatch, "user", "quota", "bob@example.org")
    assert (code, err) == (0, "")
    assert out.endswith("  storage:              0b of 1G\n  messages stored:      0 of no limit\n")
    code, out, err = run(config_path, capsys, monkeypatch, "user", "quota", "bob@example.org",
                         "--storage", "512M", "--messages", "20000")
    assert (code, err) == (0, "")
    assert users.read_text() == (
        "# from Dovecot\nbob@example.org:{PLAIN}pw:1000:1000:Bob:/home/bob::"
        "userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=512M "
        "userdb_quota_rule2=*:messages=20000\n")
    code, _, err = run(config_path, capsys, monkeypatch, "user", "quota", "nobody@example.org",
                       "--messages", "5")
    assert (code, err) == (1, "user quota: nobody@example.org: no such user\n")
