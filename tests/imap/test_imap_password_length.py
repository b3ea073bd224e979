"""IMAP logins with an over-long password, through the real checker (auth/checker.py).

LOGIN (a literal can carry up to 8 KiB before login) and AUTHENTICATE PLAIN (with an
initial response, RFC 4959, or after the "+ " continuation) get the normal failure reply
after the normal delay, and the password is never hashed: SHA-crypt's cost is quadratic
in its length.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fakes import FakeReactor
from session_harness import Session

from mailserver.auth import checker as checker_module
from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.schemes import sha_crypt


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Session, FakeReactor,
                                                                      list[object]]:
    session = Session(tmp_path)
    config = session.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    hashed_pw = sha_crypt("secret", "$5$salt")
    config.users_file.write_text(f"alice@example.org:{{SHA256-CRYPT}}{hashed_pw}\n")
    reactor = FakeReactor()
    session.factory.portal = make_portal(config, RecipientDirectory(config), reactor=reactor,
                                         threadpool=reactor.pool)  # type: ignore[arg-type]
    hashed: list[object] = []
    monkeypatch.setattr(checker_module, "verify_password",
                        lambda p, s: hashed.append(p) or False)
    monkeypatch.setattr(checker_module, "dummy_verify", lambda p: hashed.append(p) or False)
    session.take()
    return session, reactor, hashed


def refused_after_the_delay(session: Session, reactor: FakeReactor, tag: bytes) -> None:
    reactor.advance(0.74)
    assert session.lines() == []
    reactor.advance(0.02)
    assert session.lines() == [tag + b" NO [AUTHENTICATIONFAILED] Authentication failed"]


USERS = [b"alice@example.org", b"nobody@example.org"]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("length", [1025, 8000])
def test_login_with_an_over_long_literal_password(
        setup: tuple[Session, FakeReactor, list[object]], user: bytes, length: int) -> None:
    session, reactor, hashed = setup
    session.send(b"a LOGIN " + user + f" {{{length}+}}".encode() + b"\r\n" + b"p" * length)
    refused_after_the_delay(session, reactor, b"a")
    assert hashed == []
    # The spy sees what is hashed: a short wrong password is, with the same reply.
    session.send(b"b LOGIN " + user + b" short")
    refused_after_the_delay(session, reactor, b"b")
    assert hashed == [b"short"]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("continuation", [False, True])
def test_authenticate_plain_over_long_password(
        setup: tuple[Session, FakeReactor, list[object]], user: bytes,
        continuation: bool) -> None:
    session, reactor, hashed = setup
    token = base64.b64encode(b"\0" + user + b"\0" + b"p" * 1025)
    if continuation:
        assert session.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
        session.send(token)
    else:
        session.send(b"a AUTHENTICATE PLAIN " + token)
    refused_after_the_delay(session, reactor, b"a")
    assert hashed == []
