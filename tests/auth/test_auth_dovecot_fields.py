"""A users file taken over from Dovecot: its `nologin`/`deny` fields keep those users
out (by any protocol, answered like a wrong password), and check-config names every
field we do not honour (home, mail location, allow_nets...) once per line."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin

from mailserver.admin.cli import main
from mailserver.auth.checker import PasswordChecker
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.dovecot_fields import ignored_fields, login_denied
from mailserver.config import config_from_dict
from tests.fakes import FakeReactor

LINES = (
    "open@example.org:{PLAIN}pw::::::\n"
    "shut@example.org:{PLAIN}pw::::::nologin reason=moved\n"
    "banned@example.org:{PLAIN}pw::::::deny=yes\n"
    "fine@example.org:{PLAIN}pw::::::deny=no userdb_quota_rule=*:storage=1G\n"
    "moved@example.org:{PLAIN}pw:5000:5000::/home/moved::userdb_mail=maildir:~/Mail "
    "allow_nets=10.0.0.0/8\n"
)


@pytest.mark.parametrize(("extra", "denied"), [
    (("", "", "", "", "", "nologin"), True), (("", "", "", "", "", "deny=yes"), True),
    (("", "", "", "", "", "DENY=Y"), True), (("", "", "", "", "", "deny=no"), False),
    (("", "", "", "", "", "passdb_nologin=y"), True), ((), False),
])
def test_login_denied(extra: tuple[str, ...], denied: bool) -> None:
    assert login_denied(extra) is denied


def test_ignored_fields() -> None:
    extra = ("5000", "5000", "", "/home/moved", "",
             "userdb_mail=maildir:~/Mail allow_nets=10.0.0.0/8 userdb_quota_rule=*:storage=1G")
    assert ignored_fields(extra) == ["home /home/moved", "userdb_mail", "allow_nets"]


def checker(tmp_path: Path) -> tuple[PasswordChecker, FakeReactor]:
    config = config_from_dict({"hostname": "mail.example.org", "data_dir": str(tmp_path),
                               "domains": {"local": ["example.org"]}})
    config.users_file.write_text(LINES)
    reactor = FakeReactor()
    return PasswordChecker(RecipientDirectory(config), reactor=reactor,
                           failure_delay=0.75), reactor


@pytest.mark.parametrize(("user", "ok"), [("open", True), ("shut", False),
                                          ("banned", False), ("fine", True)])
def test_nologin_and_deny_refuse_the_right_password(tmp_path: Path, user: str,
                                                     ok: bool) -> None:
    import twisted.internet.threads as threads_module
    from twisted.internet import defer

    check, reactor = checker(tmp_path)
    results: list[object] = []
    original = threads_module.deferToThreadPool
    threads_module.deferToThreadPool = (  # type: ignore[assignment]
        lambda reactor, pool, fn, *args: defer.succeed(fn(*args)))
    try:
        d = check.requestAvatarId(UsernamePassword(f"{user}@example.org".encode(), b"pw"))
        d.addBoth(results.append)
        reactor.advance(1)
    finally:
        threads_module.deferToThreadPool = original  # type: ignore[assignment]
    if ok:
        assert results == [f"{user}@example.org"]
    else:
        assert len(results) == 1 and results[0].check(UnauthorizedLogin)  # type: ignore[attr-defined]


def test_check_config_names_what_is_not_used(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mailserver.toml"
    path.write_text(f'hostname = "mail.example.org"\ndata_dir = "{tmp_path / "data"}"\n'
                    '[domains]\nlocal = ["example.org"]\n')
    (tmp_path / "data").mkdir()
    users = tmp_path / "data" / "users"
    users.write_text(LINES)
    users.chmod(0o600)
    (tmp_path / "data" / "aliases").write_text("postmaster@example.org: open\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.delenv("MAILSERVER_CONFIG", raising=False)
    code = main(["--config", str(path), "check-config"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert (f"warning: {users}:5: moved@example.org: Dovecot's home /home/moved, "
            "userdb_mail, allow_nets not used here (README: Moving from Postfix + Dovecot)"
            ) in err.splitlines()
    assert "shut@example.org" not in err and "fine@example.org" not in err
