"""POP3 logins with an over-long password, through the real checker (auth/checker.py).

A password over 1024 octets gets POP3's normal failure reply after the normal delay and
is never hashed: SHA-crypt's cost is quadratic in the password's length. RFC 5034 AUTH
PLAIN can carry one (its lines may be 2048 octets); USER/PASS cannot (RFC 2449 4: 255).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fakes import FakeReactor
from test_pop3_session import ALICE, Client, Harness

from mailserver.auth import checker as checker_module
from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.schemes import sha_crypt

FAILED = "-ERR [AUTH] Authentication failed."


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Client, FakeReactor,
                                                                      list[object]]:
    pop = Harness(tmp_path)
    config = pop.factory.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # A SHA-crypt user: the scheme whose cost an over-long password would blow up.
    config.users_file.write_text(f"{ALICE}:{{SHA512-CRYPT}}{sha_crypt('secret', '$6$salt')}\n")
    reactor = FakeReactor()
    pop.factory.portal = make_portal(config, RecipientDirectory(config), reactor=reactor,
                                     threadpool=reactor.pool)  # type: ignore[arg-type]
    hashed: list[object] = []
    real = checker_module.verify_password
    monkeypatch.setattr(checker_module, "verify_password",
                        lambda p, s: hashed.append(p) or real(p, s))
    monkeypatch.setattr(checker_module, "dummy_verify", lambda p: hashed.append(p) or False)
    return pop.connect(), reactor, hashed


def plain(user: str, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password)


@pytest.mark.parametrize("user", [ALICE, "nobody@example.org"])
@pytest.mark.parametrize("continuation", [False, True])
def test_auth_plain_over_long_password(setup: tuple[Client, FakeReactor, list[object]],
                                       user: str, continuation: bool) -> None:
    client, reactor, hashed = setup
    if continuation:
        assert client.send(b"AUTH PLAIN\r\n") == ["+ "]
        assert client.send(plain(user, b"p" * 1025) + b"\r\n") == []
    else:
        assert client.send(b"AUTH PLAIN " + plain(user, b"p" * 1025) + b"\r\n") == []
    reactor.advance(0.74)
    assert client.lines() == []
    reactor.advance(0.02)
    assert client.lines() == [FAILED]
    assert hashed == []
    # The spy sees what is hashed: a short wrong password is, with the same reply.
    assert client.send(b"AUTH PLAIN " + plain(user, b"short") + b"\r\n") == []
    reactor.advance(0.76)
    assert client.lines() == [FAILED]
    assert hashed == [b"short"]


def test_pass_cannot_carry_an_over_long_password(
        setup: tuple[Client, FakeReactor, list[object]]) -> None:
    client, reactor, hashed = setup
    assert client.send(f"USER {ALICE}\r\n".encode()) == ["+OK"]
    assert client.send(b"PASS " + b"p" * 1025 + b"\r\n") == ["-ERR Line too long."]
    reactor.advance(1)
    assert hashed == []
