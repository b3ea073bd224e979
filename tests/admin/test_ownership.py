"""The admin tool run as root beside a server running as its own user (the systemd unit's
User=mailserver): what it creates belongs to data_dir's owner, it refuses to run as a
third user, and it never follows a symbolic link under data_dir.

The tests run as root (as `make test` does); uid 65534 (nobody) stands for the server's
user, and 65533 for an unrelated login.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailserver.admin.cli import main

SERVICE = 65534  # nobody: the server's user in these tests
STRANGER = 65533
BIN = Path(sys.executable).parent
SOURCE = Path(__file__).resolve().parents[2]


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory every uid may traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="mailserver-owner-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MAILSERVER_CONFIG", raising=False)
    data = root / "data"
    data.mkdir(mode=0o700)
    os.chown(data, SERVICE, SERVICE)
    path = root / "mailserver.toml"
    path.write_text(f'data_dir = "{data}"\n[domains]\nlocal = ["example.org"]\n')
    path.chmod(0o644)
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: str, stdin: str = "") -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_user(uid: int, config: Path, *args: str,
            stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real admin command as `uid` (setpriv, from util-linux: on every Debian)."""
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         str(BIN / "mailserver"), "--config", str(config), *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env, cwd="/")


def owners(top: Path) -> dict[str, tuple[int, int]]:
    """(uid, gid) of `top` and everything under it, by path relative to top's parent."""
    found = {}
    for path in [top, *top.rglob("*")]:
        st = os.lstat(path)
        found[str(path.relative_to(top.parent))] = (st.st_uid, st.st_gid)
    return found


def test_root_user_add_gives_everything_to_the_data_dir_owner(
        config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = config.parent / "data"
    code, out, err = run(config, capsys, monkeypatch, "user", "add", "--weak-ok", "alice@example.org",
                         stdin="pw\n")
    assert (code, err) == (0, "")
    assert run(config, capsys, monkeypatch, "alias", "add", "postmaster@example.org",
               "alice@example.org")[0] == 0
    found = owners(data)
    assert "data/users" in found and "data/users.lock" in found
    assert "data/aliases" in found and "data/aliases.lock" in found
    assert "data/mail/example.org/alice/.Sent/maildirfolder" in found
    assert "data/mail/example.org/alice/subscriptions" in found
    assert {path for path, owner in found.items() if owner != (SERVICE, SERVICE)} == set()
    assert stat.S_IMODE((data / "users").stat().st_mode) == 0o600
    # What the server's user can do with it: read the users file, write into new/.
    reader = subprocess.run(["setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}",
                             "--clear-groups", "cat", str(data / "users")],
                            capture_output=True, text=True, timeout=10)
    assert reader.stdout.startswith("alice@example.org:{ARGON2ID}")


def test_root_keeps_the_owner_and_group_access_of_an_existing_users_file(
        config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Dovecot's advice for a passwd-file: root:dovecot 0640. A rewrite must not take
    # the group's read access away (the file mode is otherwise forced to 0600).
    users = config.parent / "data" / "users"
    users.write_text("")
    os.chown(users, 0, SERVICE)
    users.chmod(0o640)
    assert run(config, capsys, monkeypatch, "user", "add", "--weak-ok", "bob@example.org",
               stdin="pw\n")[0] == 0
    st = users.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, SERVICE, 0o640)
    users.chmod(0o644)  # world-readable hashes: a rewrite closes that
    assert run(config, capsys, monkeypatch, "user", "del", "bob@example.org")[0] == 0
    assert stat.S_IMODE(users.stat().st_mode) == 0o640


def test_another_user_is_refused_and_told_whom_to_run_as(config: Path) -> None:
    data = config.parent / "data"
    data.chmod(0o777)  # writable for the stranger: only the owner check stops it
    result = as_user(STRANGER, config, "user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    assert result.returncode == 1
    assert result.stderr == (f"user add: {data} belongs to nobody: run this as nobody "
                             "(sudo -u nobody mailserver ...) or as root\n")
    assert os.listdir(data) == []
    alias = as_user(STRANGER, config, "alias", "add", "postmaster@example.org", "a@example.org")
    assert (alias.returncode, alias.stderr) == (
        1, f"alias add: {data} belongs to nobody: run this as nobody "
           "(sudo -u nobody mailserver ...) or as root\n")
    # Reading is fine, and the owner itself may change things.
    assert as_user(STRANGER, config, "user", "list").returncode == 0
    own = as_user(SERVICE, config, "user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    assert own.returncode == 0, own.stderr
    assert (data / "users").stat().st_uid == SERVICE


# -- symbolic links ----------------------------------------------------------------------


@pytest.fixture
def outside(root: Path) -> Path:
    """Where a planted link points: must stay untouched."""
    path = root / "outside"
    path.mkdir()
    return path


def test_a_symlinked_maildir_is_refused(config: Path, outside: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = config.parent / "data"
    (data / "mail" / "example.org").mkdir(parents=True)
    (data / "mail" / "example.org" / "alice").symlink_to(outside)
    code, out, err = run(config, capsys, monkeypatch, "user", "add", "--weak-ok", "alice@example.org",
                         stdin="pw\n")
    assert (code, out) == (1, "")
    assert err == (f"user add: cannot use {data}/mail/example.org/alice: is a symbolic "
                   "link (refusing to follow it)\n")
    assert list(outside.iterdir()) == []
    assert not (data / "users").exists()


@pytest.mark.parametrize("link", ["mail", "mail/example.org"])
def test_a_symlinked_directory_above_the_maildir_is_refused(
        config: Path, outside: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, link: str) -> None:
    data = config.parent / "data"
    (data / link).parent.mkdir(parents=True, exist_ok=True)
    (data / link).symlink_to(outside)
    code, _, err = run(config, capsys, monkeypatch, "user", "add", "--weak-ok", "alice@example.org",
                       stdin="pw\n")
    assert code == 1
    assert err == (f"user add: cannot use {data / link}: is a symbolic link (refusing to "
                   "follow it)\n")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["aliases.lock", "users.lock", "aliases", "users"])
def test_a_symlinked_lock_or_table_file_is_refused(
        config: Path, outside: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    data = config.parent / "data"
    target = outside / "created-by-root"
    (data / name).symlink_to(target)
    command = (["alias", "add", "postmaster@example.org", "alice@example.org"]
               if name.startswith("aliases") else ["user", "add", "--weak-ok", "alice@example.org"])
    code, _, err = run(config, capsys, monkeypatch, *command, stdin="pw\n")
    assert code == 1
    assert err == (f"{command[0]} add: cannot use {data / name}: is a symbolic link "
                   "(refusing to follow it)\n")
    assert not target.exists()
    assert (data / name).is_symlink()


def test_a_symlinked_flush_trigger_is_refused(config: Path, outside: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = config.parent / "data"
    (data / "queue").mkdir()
    victim = outside / "precious"
    victim.write_text("keep me\n")
    (data / "queue" / "flush").symlink_to(victim)
    code, _, err = run(config, capsys, monkeypatch, "queue", "flush")
    assert code == 1
    assert err == (f"queue flush: cannot use {data}/queue/flush: is a symbolic link "
                   "(refusing to follow it)\n")
    assert victim.read_text() == "keep me\n"
