"""`mailserver user add|passwd` refusing weak passwords, `ban list|add|del` and
`user quota`: run in-process against a data_dir (the server-side effects of ban and
quota are in tests/integration/test_abuse.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_admin_cli
from test_admin_cli import Run

from mailserver.abuse.passwords import weakness
from mailserver.auth.schemes import verify_password

STRONG = "correct horse battery staple"
# The admin tests' fixtures: a config in tmp_path, its data_dir, main() in-process.
config_path = test_admin_cli.config_path
data = test_admin_cli.data
run = test_admin_cli.run


@pytest.mark.parametrize("password, reason", [
    ("x", "shorter than 10 characters"),
    ("secret123", "shorter than 10 characters"),
    ("Password123!", "made of common words"),
    ("P@ssw0rd2024", "made of common words"),
    ("qwertyuiop12", "made of common words"),
    ("1234567890", "made of common words"),
    ("aaaaaaaaaaaaaaaa", "made of common words"),
    ("alice2024alice", "made of common words"),  # the user's own name
    ("example.org!!", "made of common words"),
])
def test_weak_passwords_refused_with_the_reason(run: Run, data: Path, password: str,
                                                reason: str) -> None:
    code, out, err = run("user", "add", "alice@example.org", stdin=password + "\n")
    assert (code, out) == (1, "")
    assert err.startswith(f"user add: password too weak: {reason}")
    assert err.endswith("(--weak-ok to accept it anyway)\n")
    assert not (data / "users").exists()


@pytest.mark.parametrize("password", [STRONG, "Tr0ub4dor&3xyz", "xk2!pLq9mZ"])
def test_strong_passwords_accepted(password: str) -> None:
    assert weakness(password, "alice@example.org") is None


def test_weak_ok_overrides_and_passwd_checks_too(run: Run, data: Path) -> None:
    assert run("user", "add", "--weak-ok", "alice@example.org", stdin="pw\n")[0] == 0
    code, _, err = run("user", "passwd", "alice@example.org", stdin="letmein123\n")
    assert code == 1 and err.startswith("user passwd: password too weak: ")
    assert verify_password("pw", (data / "users").read_text().strip().split(":")[1])
    assert run("user", "passwd", "alice@example.org", stdin=STRONG + "\n")[0] == 0
    assert verify_password(STRONG, (data / "users").read_text().strip().split(":")[1])


def test_ban_add_list_del(run: Run) -> None:
    assert run("ban", "list") == (0, "no address is locked out\n", "")
    code, out, _ = run("ban", "add", "192.0.2.7", "--seconds", "600")
    assert code == 0 and re.fullmatch(r"ban add: 192\.0\.2\.7 locked out until "
                                      r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\n", out)
    run("ban", "add", "2001:db8:1:2::99")
    code, out, _ = run("ban", "list")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["192.0.2.7", "2001:db8:1:2::/64"]
    assert "(600 s left)" in lines[0] or "(599 s left)" in lines[0]
    assert run("ban", "del", "192.0.2.7") == (0, "ban del: 192.0.2.7 may log in again\n", "")
    assert run("ban", "del", "192.0.2.7") == (1, "", "ban del: 192.0.2.7 is not locked "
                                                     "out\n")
    assert run("ban", "add", "not-an-ip") == (1, "", "ban add: not an IP address: "
                                                     "'not-an-ip'\n")


def test_user_quota_shows_and_sets_limits(run: Run, data: Path) -> None:
    code, out, _ = run("user", "quota", "Alice@Example.org")
    assert code == 0
    assert out == ("alice@example.org (limits from default, 0 = none):\n"
                   "  messages this hour:   0 of 0\n"
                   "  recipients today:     0 of 0\n")
    (data / "sending_limits").write_text("@example.org 100 1000\n")
    assert "limits from domain" in run("user", "quota", "alice@example.org")[1]
    code, out, _ = run("user", "quota", "alice@example.org", "--messages-per-hour", "5")
    assert out.splitlines()[:2] == ["user quota: limits of alice@example.org set",
                                    "alice@example.org (limits from user, 0 = none):"]
    assert "of 5" in out and "of 1000" in out
    assert (data / "sending_limits").read_text() == (
        "@example.org 100 1000\nalice@example.org 5 1000\n")
