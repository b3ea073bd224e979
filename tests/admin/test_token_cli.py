"""`mailserver token add|list|del`: shown once, stored hashed, 0600, exit codes 0/1/2."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest
from test_admin_dovecot_import import add_bob, config_path, run

from mailserver.api.tokens import TOKEN_RE, TokensFile, digest

__all__ = ["config_path"]  # the fixture, imported

Capsys = pytest.CaptureFixture[str]


def test_add_prints_the_token_alone_and_stores_only_its_hash(
        tmp_path: Path, config_path: Path, capsys: Capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    before = int(time.time())
    code, out, err = run(config_path, capsys, monkeypatch, "token", "add", "bob@example.org",
                         "--scope", "send", "--expires", "30", "--name", "billing app")
    assert code == 0
    token = out.removesuffix("\n")
    match = TOKEN_RE.fullmatch(token)
    assert match is not None, out
    token_id, secret = match.groups()
    assert err.startswith(f"token add: token {token_id} for bob@example.org, scope send, "
                          "expires ")
    path = tmp_path / "data" / "api-tokens"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    line = next(x for x in text.splitlines() if not x.startswith("#"))
    fields = line.split(":")
    assert fields[:3] == [token_id, "bob@example.org", "send"]
    assert before <= int(fields[3]) <= int(time.time())
    assert int(fields[4]) == int(fields[3]) + 30 * 86_400
    assert fields[5:] == [digest(token_id, secret).hex(), "billing app"]
    assert TokensFile(path).verify(token) is not None


def test_list_shows_every_field_but_the_secret(config_path: Path, capsys: Capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    _, first, _ = run(config_path, capsys, monkeypatch, "token", "add", "bob@example.org",
                      "--scope", "read", "--name", "dashboard")
    _, second, _ = run(config_path, capsys, monkeypatch, "token", "add", "bob@example.org")
    code, out, err = run(config_path, capsys, monkeypatch, "token", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "SCOPE", "CREATED", "EXPIRES", "NAME"]
    first_id = TOKEN_RE.fullmatch(first.strip()).group(1)  # type: ignore[union-attr]
    second_id = TOKEN_RE.fullmatch(second.strip()).group(1)  # type: ignore[union-attr]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[first_id][1:3] == ["bob@example.org", "read"]
    assert rows[first_id][4:] == ["never", "dashboard"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", rows[first_id][3])
    assert rows[second_id][1:3] == ["bob@example.org", "all"]
    for token in (first.strip(), second.strip()):
        assert token.rsplit("_", 1)[1] not in out
    code, out, _ = run(config_path, capsys, monkeypatch, "token", "list", "nobody@example.org")
    assert (code, out.splitlines()[1:]) == (0, [])


def test_del_by_id_and_by_address(tmp_path: Path, config_path: Path, capsys: Capsys,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    tokens = [run(config_path, capsys, monkeypatch, "token", "add", "bob@example.org")[1]
              .strip() for _ in range(3)]
    ids = [TOKEN_RE.fullmatch(t).group(1) for t in tokens]  # type: ignore[union-attr]
    reader = TokensFile(tmp_path / "data" / "api-tokens")
    assert all(reader.verify(t) for t in tokens)
    code, out, _ = run(config_path, capsys, monkeypatch, "token", "del", ids[0])
    assert (code, out) == (0, f"token del: revoked {ids[0]}\n")
    # The same reader (a running server's) sees the change without being told.
    assert [reader.verify(t) is not None for t in tokens] == [False, True, True]
    code, out, _ = run(config_path, capsys, monkeypatch, "token", "del", "BOB@example.org")
    assert code == 0 and sorted(out.removeprefix("token del: revoked ").strip()
                                .split(", ")) == sorted(ids[1:])
    assert [reader.verify(t) for t in tokens] == [None, None, None]


def test_refusals_exit_1_and_usage_errors_exit_2(config_path: Path, capsys: Capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    refused = {
        ("add", "nobody@example.org"): "token add: nobody@example.org: no such user\n",
        ("add", "bob@example.org", "--expires", "0"):
            "token add: --expires: days from 1 to 3650, got 0\n",
        ("add", "bob@example.org", "--name", "a:b"):
            "token add: --name: a colon or a control character\n",
        ("add", "bob@example.org", "--name", "x" * 65):
            "token add: --name: longer than 64 characters\n",
        ("del", "aaaaaaaaaaaaaaaa"): "token del: aaaaaaaaaaaaaaaa: no such token\n",
        ("del", "nobody@example.org"): "token del: nobody@example.org: no such token\n",
        ("del", "../etc"): "token del: '../etc': neither a token id (token list shows "
                           "them) nor an address\n",
    }
    for args, message in refused.items():
        code, out, err = run(config_path, capsys, monkeypatch, "token", *args)
        assert (code, out, err) == (1, "", message), args
    for args in (("add", "bob@example.org", "--scope", "admin"),
                 ("add", "bob@example.org", "--expires", "soon"), ("add",), ("del",)):
        code, out, err = run(config_path, capsys, monkeypatch, "token", *args)
        assert code == 2 and "usage: mailserver token" in err, args


def test_list_of_an_unreadable_tokens_file_is_refused_not_empty(
        tmp_path: Path, config_path: Path, capsys: Capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data" / "api-tokens"
    path.mkdir(parents=True)  # (root reads any file: a directory cannot be read)
    code, out, err = run(config_path, capsys, monkeypatch, "token", "list")
    assert (code, out, err) == (1, "", f"token list: cannot read {path}: Is a directory\n")


def test_check_config_names_a_bad_line_and_a_world_readable_file(
        tmp_path: Path, config_path: Path, capsys: Capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_bob(config_path, capsys, monkeypatch)
    run(config_path, capsys, monkeypatch, "token", "add", "bob@example.org")
    code, _, err = run(config_path, capsys, monkeypatch, "check-config")
    assert code == 0, err
    path = tmp_path / "data" / "api-tokens"
    with path.open("a") as f:
        f.write("aaaaaaaaaaaaaaaa:bob@example.org:admin:1:0:" + "0" * 64 + ":\n")
    path.chmod(0o604)
    code, _, err = run(config_path, capsys, monkeypatch, "check-config")
    assert code == 1
    assert f"{path}:3: unknown scope 'admin'" in err.splitlines()
    assert (f"api.tokens_file: {path} is readable by every user (chmod 600 it)"
            in err.splitlines())


def test_as_root_the_tokens_file_goes_to_the_servers_user(
        tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sudo mailserver token add` beside a server running as its own user: the file
    (and its lock) must be the server's, or it could not read the tokens (0600)."""
    import os

    from test_ownership import SERVICE

    if os.geteuid() != 0:
        pytest.fail("make test runs as root (the ownership tests need it)")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, SERVICE, SERVICE)
    config = tmp_path / "mailserver.toml"
    config.write_text(f'data_dir = "{data}"\n[domains]\nlocal = ["example.org"]\n')
    monkeypatch.delenv("MAILSERVER_CONFIG", raising=False)
    code, _, err = run(config, capsys, monkeypatch, "user", "add", "--weak-ok",
                       "bob@example.org", stdin="pw-secret-1\n")
    assert code == 0, err
    code, out, err = run(config, capsys, monkeypatch, "token", "add", "bob@example.org")
    assert code == 0, err
    for path in (data / "api-tokens", data / "api-tokens.lock"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SERVICE, SERVICE,
                                                                    0o600), path
    token_id = TOKEN_RE.fullmatch(out.strip()).group(1)  # type: ignore[union-attr]
    code, _, err = run(config, capsys, monkeypatch, "token", "del", token_id)
    assert code == 0, err
    assert (data / "api-tokens").stat().st_uid == SERVICE  # a rewrite keeps the owner
