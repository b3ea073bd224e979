"""The `mailserver` admin command: every command's success and refusal, exit codes, and
a few runs as a real subprocess."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from mailserver.admin.cli import main
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.schemes import verify_password
from mailserver.config import load_config
from mailserver.interfaces import MailboxId

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"

CONFIG = """\
hostname = "mail.example.org"
data_dir = "data"

[domains]
local = ["example.org", "example.net"]

[listen]
smtp = "tcp:2525:interface=127.0.0.1"
imap = "tcp:2143:interface=127.0.0.1"
"""


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailserver.toml"
    path.write_text(CONFIG)
    monkeypatch.delenv("MAILSERVER_CONFIG", raising=False)
    return path


@pytest.fixture
def data(config_path: Path) -> Path:
    return config_path.parent / "data"


class Run:
    """main([...]) in-process with a given stdin; captures the exit code and output."""

    def __init__(self, config_path: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.config_path = config_path
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["--config", str(self.config_path), *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(config_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(config_path, capsys, monkeypatch)


@pytest.fixture
def log_text() -> Iterator[list[str]]:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + repr(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield lines
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))


def users_file(data: Path) -> str:
    return (data / "users").read_text()


# -- user add ------------------------------------------------------------------------------

def test_user_add(run: Run, data: Path, log_text: list[str]) -> None:
    code, out, err = run("user", "add", "--weak-ok", "Alice@Example.org", stdin=PASSWORD + "\n")
    assert (code, err) == (0, "")
    maildir = data / "mail" / "example.org" / "alice"
    assert out == f"user add: alice@example.org added (Maildir {maildir})\n"
    line = users_file(data)
    assert line.startswith("alice@example.org:{ARGON2ID}$argon2id$")
    assert verify_password(PASSWORD, line.strip().split(":", 1)[1])
    assert stat.S_IMODE((data / "users").stat().st_mode) == 0o600
    for sub in ("cur", "new", "tmp", ".Sent/new", ".Drafts/cur", ".Trash/tmp", ".Junk/new"):
        assert (maildir / sub).is_dir(), sub
    assert not any(PASSWORD in text for text in log_text)


def test_user_add_reads_only_the_first_line_and_keeps_spaces(run: Run, data: Path) -> None:
    code, _, _ = run("user", "add", "--weak-ok", "bob@example.net", stdin=" pass word \r\nsecond\n")
    assert code == 0
    stored = users_file(data).strip().split(":", 1)[1]
    assert verify_password(" pass word ", stored)


def test_user_add_refusals(run: Run, data: Path) -> None:
    assert run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")[0] == 0
    cases = [
        (("alice@EXAMPLE.org",), "pw\n", "user add: alice@example.org exists\n"),
        (("alice@example.com",), "pw\n",
         "user add: example.com is not a local domain (domains.local)\n"),
        (("bob@example.org",), "", "user add: no password on standard input "
                                   "(expected one line)\n"),
        (("bob@example.org",), "\n", "user add: empty password\n"),
        (("bob",), "pw\n", "user add: not an address: 'bob'\n"),
    ]
    for args, stdin, message in cases:
        code, out, err = run("user", "add", "--weak-ok", *args, stdin=stdin)
        assert (code, out, err) == (1, "", message), args
    assert users_file(data).count("\n") == 1
    assert not (data / "mail" / "example.org" / "bob").exists()


@pytest.mark.parametrize("address", ["../x@example.org", ".hidden@example.org",
                                     "a/b@example.org", "../../../tmp/evil@example.org",
                                     "a..b@example.org"])
def test_user_add_refuses_path_traversal(run: Run, data: Path, address: str) -> None:
    code, out, err = run("user", "add", "--weak-ok", address, stdin="pw\n")
    assert code == 1 and out == ""
    assert err.startswith(f"user add: {address}: ")
    assert not (data / "users").exists()
    made = sorted(str(p.relative_to(data)) for p in data.rglob("*")) if data.exists() else []
    assert made == []


def test_user_add_prompts_twice_on_a_terminal(run: Run, data: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["tty pw", "tty pw", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    assert main(["--config", str(run.config_path), "user", "add", "--weak-ok", "a@example.org"]) == 0
    assert len(prompts) == 2
    assert verify_password("tty pw", users_file(data).strip().split(":", 1)[1])
    monkeypatch.setattr(sys, "stdin", Tty())
    assert main(["--config", str(run.config_path), "user", "add", "--weak-ok", "b@example.org"]) == 1
    assert "b@example.org" not in users_file(data)


def test_user_add_notes_an_alias_of_the_same_name(run: Run) -> None:
    run("alias", "add", "alice@example.org", "bob@example.org")
    code, out, _ = run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    assert code == 0 and "note: the alias alice@example.org takes precedence" in out


# -- user del / passwd / list ---------------------------------------------------------------

def test_user_del(run: Run, data: Path) -> None:
    run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    run("user", "add", "--weak-ok", "bob@example.org", stdin="pw\n")
    run("alias", "add", "info@example.org", "alice, bob")
    code, out, err = run("user", "del", "ALICE@example.org")
    maildir = data / "mail" / "example.org" / "alice"
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"user del: alice@example.org removed; its Maildir {maildir} is left on disk "
        "(delete it yourself when no longer needed)",
        "note: aliases still pointing at alice@example.org: info@example.org",
    ]
    assert maildir.is_dir()
    assert users_file(data).startswith("bob@example.org:")
    assert run("user", "del", "alice@example.org") == (
        1, "", "user del: alice@example.org: no such user\n")


def test_user_passwd(run: Run, data: Path) -> None:
    (data).mkdir()
    (data / "users").write_text("# kept\nalice@example.org:{PLAIN}old:1000:1000::/home/a\n")
    code, out, err = run("user", "passwd", "--weak-ok", "alice@example.org", stdin="new pw\n")
    assert (code, out, err) == (0, "user passwd: password of alice@example.org changed\n", "")
    lines = users_file(data).splitlines()
    assert lines[0] == "# kept"
    name, stored, *extra = lines[1].split(":")
    assert verify_password("new pw", stored) and not verify_password("old", stored)
    assert extra == ["1000", "1000", "", "/home/a"]
    assert run("user", "passwd", "--weak-ok", "nobody@example.org", stdin="x\n") == (
        1, "", "user passwd: nobody@example.org: no such user\n")
    assert run("user", "passwd", "--weak-ok", "alice@example.org", stdin="") [0] == 1


def test_over_long_password_is_not_set(run: Run, data: Path) -> None:
    """The checker refuses passwords over 1024 octets unhashed, so no login could use
    one: the admin tool refuses to set it. 1024 octets (512 two-octet characters) is fine."""
    data.mkdir()
    (data / "users").write_text("alice@example.org:{PLAIN}old\n")
    for args in (("add", "bob@example.org"), ("passwd", "alice@example.org")):
        for password in ("p" * 1025, "\u00e9" * 513):
            assert run("user", *args, stdin=password + "\n") == (
                1, "", f"user {args[0]}: password longer than 1024 octets\n")
    assert users_file(data) == "alice@example.org:{PLAIN}old\n"
    assert not (data / "mail" / "example.org" / "bob").exists()
    assert run("user", "passwd", "--weak-ok", "alice@example.org", stdin="\u00e9" * 512 + "\n")[0] == 0
    stored = users_file(data).splitlines()[0].split(":")[1]
    assert verify_password("\u00e9" * 512, stored)


def test_user_list(run: Run, data: Path) -> None:
    assert run("user", "list") == (0, "", "")
    data.mkdir()
    (data / "users").write_text("zed@example.org:{PLAIN}z\nbroken\nalice@example.net:{PLAIN}a\n")
    code, out, err = run("user", "list")
    assert code == 0
    assert out == "alice@example.net\nzed@example.org\n"
    assert err == f"warning: {data / 'users'}:2: expected user@domain:{{SCHEME}}hash\n"


# -- aliases ----------------------------------------------------------------------------------

def test_alias_add_list_del(run: Run, data: Path) -> None:
    run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    code, out, err = run("alias", "add", "Info@Example.org", "alice,Bob@Remote.Example")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "alias add: info@example.org -> alice@example.org, Bob@remote.example",
        "note: forwarding to Bob@remote.example keeps the original sender (no SRS): "
        "receivers that check SPF may refuse those copies",
    ]
    code, out, _ = run("alias", "add", "@example.net", "alice@example.org", "ghost@example.org")
    assert code == 0
    assert "note: ghost@example.org is not a user (yet)" in out
    assert run("alias", "list") == (0, "@example.net: alice@example.org, ghost@example.org\n"
                                       "info@example.org: alice@example.org, "
                                       "Bob@remote.example\n", "")
    assert run("alias", "del", "info@EXAMPLE.org") == (0, "alias del: info@example.org "
                                                          "removed\n", "")
    assert run("alias", "del", "info@example.org") == (
        1, "", "alias del: info@example.org: no such alias\n")
    assert (data / "aliases").read_text() == "@example.net: alice@example.org, ghost@example.org\n"


def test_alias_add_refusals(run: Run) -> None:
    run("alias", "add", "info@example.org", "a@example.org")
    cases = [
        (("info@example.org", "b@example.org"),
         "alias add: info@example.org exists (-> a@example.org); delete it first to change "
         "it\n"),
        (("x@example.com", "a@example.org"),
         "alias add: example.com is not a local domain (domains.local)\n"),
        (("x@example.org", "|/bin/sh"), "alias add: unsupported target '|/bin/sh' "
                                        "(only addresses)\n"),
        (("x@example.org", "../evil@example.org"),
         "alias add: target ../evil@example.org: local part starts with '.'\n"),
        (("x@example.org", ","), "alias add: no targets\n"),
        (("nodomain", "a@example.org"),
         "alias add: expected address@domain or @domain, got 'nodomain'\n"),
    ]
    for args, message in cases:
        assert run("alias", "add", *args) == (1, "", message), args


# -- check-config, config errors, usage, queue ----------------------------------------------

def test_check_config_ok(run: Run, config_path: Path, data: Path) -> None:
    run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    run("alias", "add", "info@example.org", "alice")
    code, out, err = run("check-config")
    assert code == 0
    assert err.splitlines() == [
        f"warning: postmaster@{domain} reaches nobody (RFC 5321 4.5.1 requires it): "
        f"mailserver alias add postmaster@{domain} you@{domain}"
        for domain in ("example.org", "example.net")
    ]
    run("alias", "add", "postmaster@example.org", "alice")
    run("alias", "add", "@example.net", "alice@example.org")
    code, out, err = run("check-config")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"config:   {config_path}",
        "hostname: mail.example.org",
        f"data_dir: {data}",
        # processes = 0 (the default): one per CPU, shown when that is more than one.
        *[f"processes: {n} (limits count per process)"
          for n in [load_config(config_path).process_count] if n > 1],
        "domains:  example.org, example.net",
        "services:",
        "  smtp         tcp:2525:interface=127.0.0.1",
        "  imap         tcp:2143:interface=127.0.0.1",
        f"tls:      self-signed, made on first start under {data / 'tls'}",
        f"users:    1 in {data / 'users'}",
        f"aliases:  3 in {data / 'aliases'}",
        "check-config: ok",
    ]


def test_check_config_reports_every_error(run: Run, config_path: Path, data: Path) -> None:
    config_path.write_text(CONFIG + '\n[limits]\nmessage_size = "big"\nbogus = 1\n')
    code, out, err = run("check-config")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f'{config_path}: limits.bogus: unknown key',
        f'{config_path}: limits.message_size: expected an integer, got "big"',
        "check-config: 2 errors",
    ]


def test_check_config_reports_file_lines(run: Run, data: Path) -> None:
    data.mkdir()
    (data / "users").write_text("alice@example.org:{PLAIN}a\nbroken\n.x@example.org:{PLAIN}x\n"
                                "bob@example.org:{MD5}abc\n")
    (data / "aliases").write_text("info@example.org: alice\nnonsense\n"
                                  "list@example.org: ghost\n")
    code, out, err = run("check-config")
    assert code == 1 and out == ""
    users, aliases = data / "users", data / "aliases"
    assert err.splitlines() == [
        f"{users}:2: expected user@domain:{{SCHEME}}hash",
        f"{users}:3: .x@example.org: local part starts with '.'; ignored",
        f"{users}:4: bob@example.org: unknown password scheme {{MD5}}; cannot log in",
        f"{aliases}:2: expected address: target[, target...]",
        "check-config: 4 errors",
    ]
    (data / "users").write_text("alice@example.org:{PLAIN}a\n")
    (data / "aliases").write_text("list@example.org: ghost\npostmaster@example.org: alice\n"
                                  "postmaster@example.net: alice@example.org\n")
    code, out, err = run("check-config")
    assert code == 0 and out.endswith("check-config: ok\n")
    assert err == (f"warning: {aliases}:1: list@example.org: target ghost@example.org is "
                   "neither a user nor an alias; mail for it is dropped\n")


def test_missing_config_file(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for args in (("user", "list"), ("check-config",)):
        code = main(["--config", str(missing), *args])
        out, err = run.capsys.readouterr()
        assert code == 1 and out == ""
        assert err.splitlines()[0] == f"{missing}: no such config file"


def test_config_from_environment(run: Run, config_path: Path, data: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSERVER_CONFIG", str(config_path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["user", "add", "--weak-ok", "env@example.org"]) == 0
    assert "env@example.org" in users_file(data)


@pytest.mark.parametrize("args", [
    [], ["user"], ["user", "add"], ["bogus"], ["alias", "add", "x@example.org"],
    ["queue", "show"], ["user", "add", "a@example.org", "extra"],
])
def test_usage_errors_exit_2(run: Run, args: list[str]) -> None:
    assert main(args) == 2
    assert "usage:" in run.capsys.readouterr().err


def test_help_exits_0(run: Run) -> None:
    assert main(["--help"]) == 0
    assert "user" in run.capsys.readouterr().out


def test_unwritable_users_file_is_one_line(run: Run, data: Path) -> None:
    data.mkdir()
    (data / "users").mkdir()  # a directory where the file should be
    code, out, err = run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    assert code == 1 and out == ""
    assert err.startswith("user add: ") and err.count("\n") == 1
    assert "Traceback" not in err


# -- the running server sees changes ----------------------------------------------------------

def test_a_running_directory_sees_admin_changes(run: Run, config_path: Path) -> None:
    directory = RecipientDirectory(load_config(config_path))
    assert directory.resolve("alice@example.org").is_empty
    run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")
    assert directory.resolve("alice+x@example.org").mailboxes == (
        MailboxId("example.org", "alice"),)
    run("alias", "add", "info@example.org", "alice")
    assert directory.resolve("info@example.org").mailboxes == (
        MailboxId("example.org", "alice"),)
    run("user", "del", "alice@example.org")
    assert directory.resolve("info@example.org").is_empty


# -- as a real process ------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MAILSERVER_CONFIG", None)
    return env


def test_console_script(config_path: Path, data: Path) -> None:
    cmd = [str(BIN / "mailserver"), "--config", str(config_path)]
    done = subprocess.run([*cmd, "user", "add", "--weak-ok", "carol@example.net"], input="s3cret\n",
                          capture_output=True, text=True, timeout=60, env=_env())
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("user add: carol@example.net added")
    again = subprocess.run([*cmd, "user", "add", "--weak-ok", "carol@example.net"], input="s3cret\n",
                           capture_output=True, text=True, timeout=60, env=_env())
    assert (again.returncode, again.stderr) == (1, "user add: carol@example.net exists\n")
    usage = subprocess.run([*cmd, "frobnicate"], capture_output=True, text=True, timeout=60,
                           env=_env())
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_python_dash_m(config_path: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "mailserver.admin.cli", "--config", str(config_path)]
    done = subprocess.run([*cmd, "check-config"], capture_output=True, text=True,
                          timeout=60, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("check-config: ok\n")
    config_path.write_text("hostname = [")
    bad = subprocess.run([*cmd, "user", "list"], capture_output=True, text=True, timeout=60,
                         env=_env(), cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"{config_path}: not valid TOML")
    assert "Traceback" not in bad.stderr


def test_concurrent_admin_processes(config_path: Path, data: Path) -> None:
    cmd = [str(BIN / "mailserver"), "--config", str(config_path), "alias", "add"]
    procs = [subprocess.Popen([*cmd, f"a{i}@example.org", "x@example.org"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
             for i in range(6)]
    for p in procs:
        assert p.wait(60) == 0
    lines = (data / "aliases").read_text().splitlines()
    assert sorted(lines) == sorted(f"a{i}@example.org: x@example.org" for i in range(6))


def test_check_config_shows_processes(run: Run, config_path: Path) -> None:
    config_path.write_text(config_path.read_text().replace(
        "[domains]", "processes = 3\n\n[domains]", 1))
    code, out, _ = run("check-config")
    assert code == 0
    assert "processes: 3 (limits count per process)" in out.splitlines()
