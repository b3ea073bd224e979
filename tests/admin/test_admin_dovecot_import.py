"""`mailserver import dovecot` and `mailserver doctor`: a copy of Dovecot's Maildirs
that keeps every UID, flag, keyword and subscription; resumable after a SIGKILL,
idempotent, never changing Dovecot's tree; and the check that finds what is wrong."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailserver.admin.cli import main
from mailserver.store.registry import drop_idle_states
from mailserver.store.userstore import UserStore

BIN = Path(sys.executable).parent
V = 1796625284
CONFIG = """\
hostname = "mail.example.org"
data_dir = "data"

[domains]
local = ["example.org"]
"""


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailserver.toml"
    path.write_text(CONFIG)
    monkeypatch.delenv("MAILSERVER_CONFIG", raising=False)
    return path


def run(config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = "") -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["--config", str(config_path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def dovecot_tree(top: Path, count: int = 3) -> Path:
    """A Maildir as Dovecot leaves it: INBOX with UIDs 1..count*2 step 2, a folder
    with keywords, Dovecot's index files, a V2 subscriptions file."""
    root = top / "example.org" / "bob"
    for folder in (root, root / ".Work.Sub"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"3 V{V} N{count * 2 + 1} Gabc\n"]
    for i in range(count):
        base = f"17000000{i:02d}.M{i}P1.vm"
        data = f"Subject: m{i}\n\nbody {i}\n".encode()
        (root / "cur" / f"{base},S={len(data)},W={len(data) + 3}:2,S{'a' if i else ''}"
         ).write_bytes(data)
        lines.append(f"{i * 2 + 1} :{base},S={len(data)},W={len(data) + 3}\n")
    (root / "dovecot-uidlist").write_text("".join(lines))
    (root / "dovecot-keywords").write_text("0 $Label1\n")
    (root / "dovecot.index.log").write_bytes(b"\x00binary")
    sub = root / ".Work.Sub"
    (sub / "maildirfolder").touch()
    (sub / "cur" / "1700000100.M1P1.vm,S=9,W=10:2,Fb").write_bytes(b"X: y\n\nz\n\n")
    (sub / "dovecot-uidlist").write_text(f"3 V{V + 1} N8\n7 :1700000100.M1P1.vm\n")
    (sub / "dovecot-keywords").write_text("0 Junk\n1 ProjectX\n")
    (root / "subscriptions").write_text("V\t2\n\nWork\tSub\nINBOX\n")
    return root


def snapshot_of(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*"))
            if p.is_file()}


def view(data: Path, folder: str) -> tuple[int, int, dict[int, frozenset[str]]]:
    drop_idle_states()
    v = UserStore(data / "mail" / "example.org" / "bob").select(folder, read_only=True)
    try:
        return v.uid_validity, v.uid_next, {m.uid: m.flags for m in v.messages}
    finally:
        v.close()


def add_bob(config_path: Path, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(config_path, capsys, monkeypatch, "user", "add", "--weak-ok", "bob@example.org",
                       stdin="pw-secret-1\n")
    assert (code, err) == (0, "")


def test_import_keeps_uids_flags_keywords_subscriptions(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = dovecot_tree(tmp_path / "vmail")
    before = snapshot_of(tmp_path / "vmail")
    add_bob(config_path, capsys, monkeypatch)
    code, out, err = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                         str(source), "--user", "bob@example.org")
    assert code == 0, err
    assert out.splitlines()[-1] == (
        "import dovecot: 1 users, 2 folders, 4 messages (69 bytes: 4 hard-linked, 0 "
        "copied), 0 already there, 0 warnings")
    assert "4/4 messages" in err  # the final progress line
    data = tmp_path / "data"
    assert view(data, "INBOX") == (V, 7, {
        1: frozenset({"\\Seen"}), 3: frozenset({"\\Seen", "$Label1"}),
        5: frozenset({"\\Seen", "$Label1"})})
    assert view(data, "Work.Sub") == (V + 1, 8, {7: frozenset({"\\Flagged", "ProjectX"})})
    subs = UserStore(data / "mail" / "example.org" / "bob").subscriptions()
    assert subs[-2:] == ["Work.Sub", "INBOX"] and subs.count("INBOX") == 1
    assert snapshot_of(tmp_path / "vmail") == before  # Dovecot's tree as it was
    assert not (data / "mail" / "example.org" / "bob" / "dovecot.index.log").exists()

    # Idempotent: a second run brings nothing and changes no UID.
    code, out, _ = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                       str(source), "--user", "bob@example.org")
    assert code == 0
    assert "0 messages (0 bytes: 0 hard-linked, 0 copied), 4 already there" in out
    assert view(data, "INBOX")[:2] == (V, 7)

    # Dovecot took more mail since: a run again keeps its UID too.
    (source / "cur" / "1700000200.M1P1.vm,S=5,W=6:2,").write_bytes(b"a\n\nb\n")
    with open(source / "dovecot-uidlist", "a") as f:
        f.write("9 :1700000200.M1P1.vm,S=5,W=6\n")
    run(config_path, capsys, monkeypatch, "import", "dovecot", "--from", str(source),
        "--user", "bob@example.org")
    assert view(data, "INBOX")[2][9] == frozenset()
    code, out, _ = run(config_path, capsys, monkeypatch, "doctor")
    assert (code, out.splitlines()[-1]) == (
        0, "doctor: 1 Maildirs, 6 folders, 5 messages: 0 errors, 0 notes")


def test_dry_run_changes_nothing(tmp_path: Path, config_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = dovecot_tree(tmp_path / "vmail")
    add_bob(config_path, capsys, monkeypatch)
    dest = tmp_path / "data" / "mail" / "example.org" / "bob"
    before = snapshot_of(dest)
    code, out, _ = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                       str(tmp_path / "vmail"), "--all", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        f"would import bob@example.org INBOX: 3 messages (60 bytes), 0 there already; "
        f"UIDVALIDITY {V}, next UID 7",
        f"would import bob@example.org Work.Sub: 1 messages (9 bytes), 0 there already; "
        f"UIDVALIDITY {V + 1}, next UID 8",
        "import dovecot --dry-run: 2 folders, 4 messages, 69 bytes would be imported; "
        "nothing was changed"]
    assert snapshot_of(dest) == before
    assert source.exists()


def test_refusals(tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    source = dovecot_tree(tmp_path / "vmail")
    assert run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
               str(source), "--user", "bob@example.org")[1:] == (
        "", "import dovecot: bob@example.org: no such user "
            "(mailserver user add bob@example.org)\n")
    assert run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
               str(tmp_path / "nowhere"), "--all")[2] == \
        f"import dovecot: {tmp_path / 'nowhere'}: no such directory\n"
    os.symlink(source, tmp_path / "link")
    assert run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
               str(tmp_path / "link"), "--all")[2] == \
        f"import dovecot: cannot use {tmp_path / 'link'}: is a symbolic link " \
        "(refusing to follow it)\n"
    # Both: a usage error (exit 2); neither: --all (CONTRACT.md's `--from PATH` alone).
    assert main(["--config", str(config_path), "import", "dovecot", "--from", "x",
                 "--all", "--user", "bob@example.org"]) == 2
    assert run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
               str(tmp_path / "vmail"))[2] == \
        f"import dovecot: {tmp_path / 'vmail'}: no DOMAIN/LOCALPART Maildir of a known " \
        "user below it\n"


def test_hostile_uidlist_warned_and_no_uid_reused(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = dovecot_tree(tmp_path / "vmail")
    base0, base1 = "1700000000.M0P1.vm", "1700000001.M1P1.vm"
    (source / "dovecot-uidlist").write_text(
        f"3 V{V} N2\n1 :{base0}\n1 :{base1}\n9 :1600000000.M1P1.gone\nrubbish\n")
    add_bob(config_path, capsys, monkeypatch)
    code, _, err = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                       str(source), "--user", "bob@example.org")
    assert code == 0
    assert "warning: bob@example.org INBOX: line 3: UID 1 listed again" in err
    assert "warning: bob@example.org INBOX: line 5: not a UID: 'rubbish'" in err
    assert "UID 9 is not below the next UID N2: new UIDs start at 10" in err
    _, uid_next, flags = view(tmp_path / "data", "INBOX")
    assert sorted(flags) == [1, 10, 11] and uid_next == 12  # 9 (gone) never reused


def test_sigkill_mid_import_then_again_nothing_lost_or_doubled(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    count = 6000
    source = dovecot_tree(tmp_path / "vmail", count=count)
    add_bob(config_path, capsys, monkeypatch)
    dest = tmp_path / "data" / "mail" / "example.org" / "bob"
    command = [str(BIN / "mailserver"), "--config", str(config_path), "import", "dovecot",
               "--from", str(source), "--user", "bob@example.org"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(dest / "cur")) < 50:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    brought = len(os.listdir(dest / "cur"))
    assert 0 < brought < count, "the kill came before or after the copy: no test"
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{brought} already there" in result.stdout
    validity, uid_next, flags = view(tmp_path / "data", "INBOX")
    assert (validity, uid_next) == (V, count * 2 + 1)
    assert sorted(flags) == list(range(1, count * 2, 2))  # each once, Dovecot's UID
    assert len(os.listdir(dest / "cur")) == count
    assert [n for n in os.listdir(dest / "tmp") if ".import." in n] == []


def test_doctor_reports_duplicates_orphans_unlisted(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    root = tmp_path / "data" / "mail" / "example.org" / "bob"
    (root / "cur" / "1700000001.M1P1.a:2,S").write_bytes(b"a\n")
    (root / "new" / "1700000001.M1P1.a").write_bytes(b"a\n")  # the same message twice
    (root / "cur" / "1700000002.M1P1.b:2,").write_bytes(b"b\n")
    (root / "cur" / "1700000003.M1P1.c:2,").write_bytes(b"c\n")
    (root / "mailserver-uidlist").write_text(
        "mailserver-uidlist 1 V5 N9\n1 1700000001.M1P1.a\n2 1700000002.M1P1.b\n"
        "2 1700000009.M1P1.x\n4 1600000000.M1P1.gone\n")
    code, out, _ = run(config_path, capsys, monkeypatch, "doctor", "--user",
                       "bob@example.org")
    assert code == 1
    assert out.splitlines() == [
        f"error: {root}: 1 messages present more than once, e.g. 1700000001.M1P1.a",
        f"error: {root}: 1 UIDs given to more than one name, e.g. UID 2",
        f"note: {root}: 1 unlisted files (numbered at the next open)",
        f"note: {root}: 2 orphan records (files gone; their UIDs are not reused)",
        "doctor: 1 Maildirs, 5 folders, 3 messages: 2 errors, 2 notes"]


def test_as_root_files_are_copied_to_the_servers_user_not_linked(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard link would share Dovecot's inode: giving it to the server's user would
    take it from Dovecot. Files of another owner are copied and given data_dir's."""
    assert os.geteuid() == 0, "make test runs as root"
    nobody = 65534
    source = dovecot_tree(tmp_path / "vmail")
    (tmp_path / "data").mkdir()
    os.chown(tmp_path / "data", nobody, nobody)
    add_bob(config_path, capsys, monkeypatch)
    code, out, _ = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                       str(source), "--user", "bob@example.org")
    assert code == 0
    assert "4 messages (69 bytes: 0 hard-linked, 4 copied)" in out
    dest = tmp_path / "data" / "mail" / "example.org" / "bob"
    strangers = [str(p) for p in dest.rglob("*") if os.lstat(p).st_uid != nobody]
    assert strangers == []
    assert all(os.lstat(p).st_uid == 0 for p in source.rglob("*"))
    assert view(tmp_path / "data", "INBOX")[:2] == (V, 7)


def test_layout_fs_folders_are_imported_as_maildirplus(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot's `maildir:~/Maildir:LAYOUT=fs`: "Work/Sub/" directories with their own
    cur/ and dovecot-uidlist become our "Work.Sub" with the same UIDs; a level named
    with a "." is skipped with a note (Maildir++ separates levels with it), and an fs
    folder whose Maildir++ twin exists gives way to it."""
    root = dovecot_tree(tmp_path / "vmail")
    (root / ".Work.Sub").rename(root / "stash")
    fs_sub = root / "Work" / "Sub"
    fs_sub.parent.mkdir()
    (root / "stash").rename(fs_sub)  # the same folder, in LAYOUT=fs form
    deep = root / "Lists" / "python" / "dev"
    for sub in ("cur", "new", "tmp"):
        (deep / sub).mkdir(parents=True)
        (root / "v1.2" / sub).mkdir(parents=True)
        (root / "Trash" / sub).mkdir(parents=True)
        (root / ".Trash" / sub).mkdir(parents=True)
    (deep / "cur" / "1700000300.M1P1.vm,S=5,W=6:2,").write_bytes(b"a\n\nb\n")
    (deep / "dovecot-uidlist").write_text(f"3 V{V + 5} N43\n42 :1700000300.M1P1.vm\n")
    (root / "v1.2" / "cur" / "1700000400.M1P1.vm:2,").write_bytes(b"a\n\nb\n")
    (root / "Trash" / "cur" / "1700000500.M1P1.vm:2,").write_bytes(b"a\n\nb\n")
    add_bob(config_path, capsys, monkeypatch)
    code, out, err = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                         str(root), "--user", "bob@example.org")
    assert code == 0, err
    data = tmp_path / "data"
    assert view(data, "Work.Sub") == (V + 1, 8, {7: frozenset({"\\Flagged", "ProjectX"})})
    assert view(data, "Lists.python.dev") == (V + 5, 43, {42: frozenset()})
    assert view(data, "Trash")[2] == {}  # the Maildir++ .Trash, empty, was imported
    assert f"{root / 'v1.2'}: a folder name with '.' cannot be one level here" in err
    assert f"{root / 'Trash'}: .Trash exists in Maildir++ form too" in err
    assert "1 users, 4 folders, 5 messages" in out  # INBOX, Trash, Work.Sub, Lists.python.dev
    dest = data / "mail" / "example.org" / "bob"
    assert not (dest / ".v1.2").exists() and not (dest / ".v1").exists()


def test_a_folder_renamed_while_importing(
        tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot (or a user) renames .Work.Sub while its files are being brought: the
    run ends without error, what vanished is skipped, and a run again brings the
    renamed folder with its UIDs: nothing lost, nothing doubled."""
    import mailserver.admin.dovecot_import as importer

    source = dovecot_tree(tmp_path / "vmail")
    add_bob(config_path, capsys, monkeypatch)
    real = importer._bring
    renamed: list[Path] = []

    def bring_and_rename(src: Path, dst: Path, owner: object, folder: Path) -> bool:
        if ".Work.Sub" in str(src) and not renamed:
            (source / ".Work.Sub").rename(source / ".Work.Renamed")
            renamed.append(src)
        return real(src, dst, owner, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "_bring", bring_and_rename)
    code, out, err = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                         str(source), "--user", "bob@example.org")
    assert code == 0, err
    assert renamed, "the rename never happened: no test"
    assert "3 messages" in out  # the INBOX's three; the renamed folder's file vanished
    monkeypatch.setattr(importer, "_bring", real)
    code, out, err = run(config_path, capsys, monkeypatch, "import", "dovecot", "--from",
                         str(source), "--user", "bob@example.org")
    assert code == 0, err
    assert "1 messages" in out and "3 already there" in out
    data = tmp_path / "data"
    assert view(data, "Work.Renamed") == (V + 1, 8, {7: frozenset({"\\Flagged",
                                                                   "ProjectX"})})
    assert view(data, "INBOX")[:2] == (V, 7)
