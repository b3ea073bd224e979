"""The users and aliases files: parsing, line problems, edits, reload, atomic rewrite."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from mailserver.auth import textfile
from mailserver.auth.aliases import (
    AliasesFile,
    add_alias,
    parse_aliases,
    parse_key,
    parse_target,
    remove_alias,
)
from mailserver.auth.textfile import LineProblem, WatchedFile, rewrite
from mailserver.auth.userfile import (
    EditRefused,
    UsersFile,
    add_user,
    parse_users,
    remove_user,
    set_password,
)

P = Path("/etc/mailserver/users")

# As written by Dovecot's tooling: uid, gid, gecos, home, shell and extra fields.
DOVECOT_USERS = """\
# users taken over from Dovecot
alice@example.org:{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G

Bob@Example.ORG:{PLAIN}bobpw:1001:1001:Bob B:/home/bob:/bin/false
carol@example.net:{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuu5Ck2kbWxg2cu1wRUL9aEKNS1RMSvg7K
"""


def test_dovecot_users_file_with_extra_fields() -> None:
    table = parse_users(DOVECOT_USERS, P)
    assert table.problems == ()
    assert sorted(table.users) == ["alice@example.org", "bob@example.org", "carol@example.net"]
    alice = table.users["alice@example.org"]
    assert alice.password.startswith("{SHA512-CRYPT}$6$saltstring$")
    assert alice.extra == ("1000", "1000", "", "/home/alice", "", "userdb_quota_rule=*",
                           "storage=1G")
    assert alice.line == 2
    assert table.users["bob@example.org"].password == "{PLAIN}bobpw"
    assert table.users["carol@example.net"].extra == ()


def test_crlf_lines_and_bare_two_field_lines() -> None:
    table = parse_users("a@example.org:{PLAIN}x\r\nb@example.org:{PLAIN}y\r\n", P)
    assert table.users["a@example.org"].password == "{PLAIN}x"
    assert table.users["b@example.org"].password == "{PLAIN}y"


def test_malformed_user_lines_are_reported_with_file_and_line() -> None:
    text = ("ok@example.org:{PLAIN}x\n"
            "no colon here\n"
            "bare:{PLAIN}x\n"
            ":{PLAIN}x\n"
            "ok@example.org:{PLAIN}again\n"
            "weird@example.org:{FOO}bar\n"
            "  # indented comment\n"
            "sp ace@example.org:{PLAIN}x\n")
    table = parse_users(text, P)
    problems = [str(p) for p in table.problems]
    assert problems == [
        "/etc/mailserver/users:2: expected user@domain:{SCHEME}hash",
        "/etc/mailserver/users:3: user name without @domain: 'bare'",
        "/etc/mailserver/users:4: empty user name",
        "/etc/mailserver/users:5: duplicate user ok@example.org (first on line 1); ignored",
        "/etc/mailserver/users:6: weird@example.org: unknown password scheme {FOO}; "
        "cannot log in",
        "/etc/mailserver/users:8: white space in user name 'sp ace@example.org'",
    ]
    # The first duplicate wins; a user with an unknown scheme still exists (gets mail).
    assert table.users["ok@example.org"].password == "{PLAIN}x"
    assert "weird@example.org" in table.users


def test_user_edits_keep_comments_and_extra_fields() -> None:
    text = set_password(DOVECOT_USERS, "ALICE@example.org", "{ARGON2ID}new")
    lines = text.splitlines()
    assert lines[0] == "# users taken over from Dovecot"
    assert lines[1] == ("alice@example.org:{ARGON2ID}new:1000:1000::/home/alice::"
                        "userdb_quota_rule=*:storage=1G")
    assert lines[2:] == DOVECOT_USERS.splitlines()[2:]

    removed = remove_user(text, "bob@example.org")
    assert "Bob@" not in removed and removed.count("\n") == text.count("\n") - 1
    with pytest.raises(EditRefused, match="no such user"):
        remove_user(removed, "bob@example.org")
    with pytest.raises(EditRefused, match="no such user"):
        set_password(removed, "nobody@example.org", "{PLAIN}x")

    added = add_user("x@example.org:{PLAIN}x", "New@Example.org", "{PLAIN}n")  # no final \n
    assert added == "x@example.org:{PLAIN}x\nnew@example.org:{PLAIN}n\n"
    with pytest.raises(EditRefused, match="new@example.org exists"):
        add_user(added, "NEW@example.org", "{PLAIN}n")


def test_unparsable_lines_survive_edits() -> None:
    text = "garbage line\nalice@example.org:{PLAIN}a\n"
    assert remove_user(text, "alice@example.org") == "garbage line\n"


ALIASES = """\
# aliases
info@Example.org:   alice@example.org, Bob@Remote.Example
sales@example.org: alice ,  carol@example.net,
@example.org: postmaster@example.org
team@example.org: alice@example.org,
    carol@example.net
  # a comment between does not end the entry

    dave@example.org
"""


def test_aliases_parse() -> None:
    table = parse_aliases(ALIASES, Path("aliases"))
    assert table.problems == ()
    assert table.aliases["info@example.org"].targets == ("alice@example.org",
                                                         "Bob@remote.example")
    assert table.aliases["sales@example.org"].targets == ("alice@example.org",
                                                          "carol@example.net")
    catch_all = table.aliases["@example.org"]
    assert catch_all.is_catch_all and catch_all.targets == ("postmaster@example.org",)
    team = table.aliases["team@example.org"]
    assert team.targets == ("alice@example.org", "carol@example.net", "dave@example.org")
    assert team.line == 5


def test_alias_problems_with_file_and_line() -> None:
    text = ("no colon\n"
            "a@example.org:\n"
            "b@example.org: |/usr/bin/procmail, alice@example.org\n"
            "  orphan@example.org\n"
            "c@example.org: x@example.org\n"
            "c@example.org: y@example.org\n"
            "bare: x@example.org\n"
            "d@example.org: /var/mail/file\n")
    # The orphan continuation belongs to b's entry (indented lines continue the entry).
    table = parse_aliases(text, Path("/etc/aliases"))
    assert [str(p) for p in table.problems] == [
        "/etc/aliases:1: expected address: target[, target...]",
        "/etc/aliases:2: a@example.org: no targets",
        "/etc/aliases:3: b@example.org: unsupported target '|/usr/bin/procmail' "
        "(only addresses)",
        "/etc/aliases:6: duplicate alias c@example.org (first on line 5); ignored",
        "/etc/aliases:7: expected address@domain or @domain, got 'bare'",
        "/etc/aliases:8: d@example.org: unsupported target '/var/mail/file' (only addresses)",
        "/etc/aliases:8: d@example.org: no targets",
    ]
    assert table.aliases["b@example.org"].targets == ("alice@example.org",
                                                      "orphan@example.org")
    assert table.aliases["c@example.org"].targets == ("x@example.org",)


def test_orphan_continuation_line() -> None:
    table = parse_aliases("  x@example.org\n", Path("a"))
    assert [str(p) for p in table.problems] == [
        "a:1: continuation line without an alias above it"]


def test_alias_edits() -> None:
    text = add_alias(ALIASES, "new@example.org", ["a@example.org", "b@example.net"])
    assert text.endswith("new@example.org: a@example.org, b@example.net\n")
    with pytest.raises(EditRefused, match="info@example.org exists"):
        add_alias(text, "INFO@example.org", ["x@example.org"])
    removed = remove_alias(text, "team@example.org")
    assert "team@" not in removed and "carol@example.net\n" not in removed.split("team")[0][-20:]
    assert "dave@example.org" not in removed  # continuation lines go with their entry
    assert "# a comment between" in removed  # comments stay
    assert parse_aliases(removed, Path("a")).problems == ()
    with pytest.raises(EditRefused, match="no such alias"):
        remove_alias(removed, "team@example.org")


def test_parse_key_and_target() -> None:
    assert parse_key(" Info@Example.ORG. ") == "info@example.org"
    assert parse_key("@Example.org") == "@example.org"
    for bad in ("", "a b@example.org", "plain", "x@", "@", "a,b@example.org"):
        with pytest.raises(ValueError):
            parse_key(bad)
    assert parse_target("Bob@Example.NET", "example.org") == "Bob@example.net"
    assert parse_target("bob", "example.org") == "bob@example.org"
    with pytest.raises(ValueError):
        parse_target(":include:/etc/list", "example.org")


def test_watched_file_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "f"
    reads: list[str] = []

    def parse(text: str) -> str:
        reads.append(text)
        return text

    watched = WatchedFile(path, parse)
    assert watched.get() == ""  # missing file: empty
    path.write_text("one")
    assert watched.get() == "one"
    assert watched.get() == "one"
    assert len(reads) == 2  # unchanged file: not read again
    # Same size, same mtime, new inode (an atomic rename): still noticed.
    st = path.stat()
    other = tmp_path / "g"
    other.write_text("two")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert watched.get() == "two"
    path.unlink()
    assert watched.get() == ""


def test_watched_file_keeps_last_value_when_unreadable(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_text("one")
    watched = WatchedFile(path, lambda t: t)
    assert watched.get() == "one"
    path.write_text("two!")

    def denied(p: Path) -> str:
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(textfile, "read_text", denied)
    assert watched.get() == "one"  # a transient mistake does not make every user vanish
    monkeypatch.undo()
    assert watched.get() == "two!"


def test_rewrite_is_atomic_and_sets_modes(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "sub" / "users")
    users.add("alice@example.org", "{PLAIN}a")
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    assert users.get("ALICE@example.org") is not None
    aliases = AliasesFile(tmp_path / "aliases")
    aliases.add("a@example.org", ["b@example.org"])
    assert stat.S_IMODE(aliases.path.stat().st_mode) == 0o644
    aliases.path.chmod(0o640)
    aliases.add("c@example.org", ["b@example.org"])
    assert stat.S_IMODE(aliases.path.stat().st_mode) == 0o640  # kept

    def refuse(text: str) -> str:
        raise EditRefused("no")

    before = users.path.read_text()
    with pytest.raises(EditRefused):
        rewrite(users.path, refuse)
    assert users.path.read_text() == before
    leftovers = [p.name for p in users.path.parent.iterdir()]
    assert sorted(leftovers) == ["users", "users.lock"]


def _add_aliases(path: str, worker: int) -> None:
    aliases = AliasesFile(Path(path))
    for i in range(5):
        aliases.add(f"w{worker}-{i}@example.org", ["alice@example.org"])


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_aliases, args=(str(path), w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    table = parse_aliases(path.read_text(), path)
    assert table.problems == ()
    assert len(table.aliases) == 30


def test_line_problem_format() -> None:
    assert str(LineProblem(Path("/x/users"), 7, "bad")) == "/x/users:7: bad"


def test_unreadable_file_without_a_good_reading_says_why(tmp_path: Path) -> None:
    """A file that exists but cannot be read (a directory in its place stands in for a
    permission error, which root would not get) reads as empty AND says why, so the
    directory can answer "try later" instead of "no such user"; once readable, it is
    read and the problem is gone."""
    path = tmp_path / "users"
    path.mkdir()
    watched = WatchedFile(path, lambda text: text)
    assert watched.get() == ""
    assert watched.read_error is not None
    assert watched.read_error.startswith(f"cannot read {path}: ")
    path.rmdir()
    path.write_text("alice@example.org:{PLAIN}pw\n")
    assert watched.get() == "alice@example.org:{PLAIN}pw\n"
    assert watched.read_error is None


def test_unreadable_file_after_a_good_reading_keeps_it_without_a_problem(
        tmp_path: Path) -> None:
    """After one good reading, the last good value stands in: users stay known."""
    path = tmp_path / "users"
    path.write_text("alice@example.org:{PLAIN}pw\n")
    watched = WatchedFile(path, lambda text: text)
    assert watched.get() == "alice@example.org:{PLAIN}pw\n"
    path.unlink()
    path.mkdir()
    assert watched.get() == "alice@example.org:{PLAIN}pw\n"
    assert watched.read_error is None
