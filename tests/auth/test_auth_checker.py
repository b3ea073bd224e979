"""The shared cred checker, realm and portal.

Most tests run synchronously: a Clock-based fake reactor whose "thread pool" calls the
function at once, so the failure delay is observed by advancing the clock. One trial test
runs the real reactor and a real thread pool end to end.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from fakes import FakeReactor
from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface import Interface

from mailserver.auth import checker as checker_module
from mailserver.auth.checker import PasswordChecker, make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.realm import IMailUser, MailRealm, MailUser
from mailserver.auth.schemes import hash_password
from mailserver.config import Config, config_from_dict
from mailserver.interfaces import MailboxId

ALICE_HASH = hash_password("alice's password")


def make_config(tmp_path: Path) -> Config:
    cfg = config_from_dict({"hostname": "mail.example.org", "data_dir": str(tmp_path),
                            "domains": {"local": ["example.org", "example.net"]}})
    cfg.users_file.write_text(f"alice@example.org:{ALICE_HASH}\n"
                              "bob@example.net:{PLAIN}bob:1000:1000::/home/bob\n"
                              "nopw@example.org:\n"
                              "odd@example.org:{FOO}bar\n")
    return cfg


def outcome(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PasswordChecker, FakeReactor]:
    reactor = FakeReactor()
    directory = RecipientDirectory(make_config(tmp_path))
    return PasswordChecker(directory, reactor=reactor, failure_delay=0.75), reactor


@pytest.mark.parametrize(("username", "password"), [
    ("alice@example.org", "alice's password"),
    ("ALICE@Example.ORG", "alice's password"),
    (b"alice@example.org", b"alice's password"),
    ("alice", "alice's password"),  # bare name: the first local domain
])
def test_accepts_and_returns_the_canonical_address(setup: tuple[PasswordChecker, FakeReactor],
                                                   username: Any, password: Any) -> None:
    checker, reactor = setup
    result = outcome(checker.requestAvatarId(UsernamePassword(username, password)))
    assert result == ["alice@example.org"]
    assert reactor.pool.calls == 1  # hashed in the (fake) thread pool


def test_other_schemes_and_domains(setup: tuple[PasswordChecker, FakeReactor]) -> None:
    checker, _ = setup
    assert outcome(checker.requestAvatarId(UsernamePassword(b"bob@example.net", b"bob"))) == [
        "bob@example.net"]


@pytest.mark.parametrize(("username", "password"), [
    ("alice@example.org", "wrong"),
    ("alice@example.org", ""),
    ("nobody@example.org", "alice's password"),
    ("bob", "bob"),  # bare name goes to the first domain, example.org: no such user
    ("nopw@example.org", ""),  # empty hash: cannot log in
    ("odd@example.org", "bar"),  # unknown scheme
    (b"\xff\xfe@example.org", b"x"),  # not UTF-8
    ("", ""),
])
def test_refuses_after_the_delay(setup: tuple[PasswordChecker, FakeReactor],
                                 username: Any, password: Any) -> None:
    checker, reactor = setup
    result = outcome(checker.requestAvatarId(UsernamePassword(username, password)))
    assert result == []  # not yet: the refusal waits
    reactor.advance(0.74)
    assert result == []
    reactor.advance(0.02)
    assert len(result) == 1 and isinstance(result[0], Failure)
    result[0].trap(UnauthorizedLogin)


def test_unknown_users_cost_a_hash_too(setup: tuple[PasswordChecker, FakeReactor],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    checker, reactor = setup
    dummy_calls: list[object] = []
    def spy(password: object) -> bool:
        dummy_calls.append(password)
        return False

    monkeypatch.setattr(checker_module, "dummy_verify", spy)
    outcome(checker.requestAvatarId(UsernamePassword(b"nobody@example.org", b"pw")))
    outcome(checker.requestAvatarId(UsernamePassword(b"nopw@example.org", b"pw")))
    assert dummy_calls == [b"pw", b"pw"]
    assert reactor.pool.calls == 2


def test_realm_and_portal(tmp_path: Path) -> None:
    reactor = FakeReactor()
    config = make_config(tmp_path)
    portal = make_portal(config, RecipientDirectory(config), reactor=reactor,
                         failure_delay=0.5)
    good = cast(ICredentials, UsernamePassword(b"Alice", b"alice's password"))
    result = outcome(portal.login(good, None, IMailUser))
    interface, avatar, logout = result[0]
    assert interface is IMailUser
    assert avatar == MailUser("alice@example.org", MailboxId("example.org", "alice"))
    assert IMailUser.providedBy(avatar)
    logout()

    bad = cast(ICredentials, UsernamePassword(b"alice", b"nope"))
    refused = outcome(portal.login(bad, None, IMailUser))
    reactor.advance(0.5)
    refused[0].trap(UnauthorizedLogin)


def test_realm_refuses_other_interfaces(tmp_path: Path) -> None:
    class IOther(Interface):
        pass

    realm = MailRealm(RecipientDirectory(make_config(tmp_path)))
    with pytest.raises(NotImplementedError):
        realm.requestAvatar("alice@example.org", None, IOther)
    assert realm.requestAvatar(b"alice@example.org", None, IOther, IMailUser)[1].mailbox == \
        MailboxId("example.org", "alice")


class RealReactorTests(unittest.TestCase):
    """End to end on the real reactor with a real thread pool."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="test-auth")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        directory = RecipientDirectory(make_config(self.tmp))
        self.checker = PasswordChecker(directory, threadpool=self.pool, failure_delay=0.05)

    def test_accept_in_a_worker_thread(self) -> Deferred[None]:
        threads: list[str] = []
        real = checker_module.verify_password

        def spy(password: Any, stored: str) -> bool:
            threads.append(threading.current_thread().name)
            return real(password, stored)

        self.patch(checker_module, "verify_password", spy)
        d = self.checker.requestAvatarId(UsernamePassword(b"alice@example.org",
                                                          b"alice's password"))

        def check(avatar_id: str) -> None:
            self.assertEqual(avatar_id, "alice@example.org")
            self.assertNotEqual(threads, [threading.main_thread().name])
            self.assertEqual(len(threads), 1)

        return d.addCallback(check)

    def test_refuse(self) -> Deferred[Any]:
        d = self.checker.requestAvatarId(UsernamePassword(b"alice@example.org", b"no"))
        return self.assertFailure(d, UnauthorizedLogin)


# -- over-long passwords and the timing of a refusal --------------------------------------


def long_password_config(tmp_path: Path) -> Config:
    """Users whose stored password is exactly MAX_PASSWORD_OCTETS long, in each scheme
    whose cost grows with the password (SHA-crypt) and in the default one."""
    from mailserver.auth.schemes import MAX_PASSWORD_OCTETS, sha_crypt

    cfg = make_config(tmp_path)
    longest = "p" * MAX_PASSWORD_OCTETS
    cfg.users_file.write_text(
        f"long@example.org:{{PLAIN}}{longest}\n"
        f"sha512@example.org:{{SHA512-CRYPT}}{sha_crypt(longest, '$6$saltsalt')}\n"
        f"sha256@example.org:{{SHA256-CRYPT}}{sha_crypt(longest, '$5$saltsalt')}\n"
        f"alice@example.org:{ALICE_HASH}\n")
    return cfg


@pytest.mark.parametrize("username", ["long@example.org", "sha512@example.org",
                                      "sha256@example.org", "alice@example.org",
                                      "nobody@example.org"])
@pytest.mark.parametrize("password", ["p" * 1025, "p" * 8192, "é" * 513])
def test_over_long_password_refused_like_a_wrong_one_without_hashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, username: str,
        password: str) -> None:
    """1025 octets and more (here also 513 two-octet characters) are never hashed: not
    with the user's scheme, not with the dummy hash; the refusal comes after the same
    delay as a wrong password's."""
    hashed: list[object] = []
    monkeypatch.setattr(checker_module, "verify_password",
                        lambda p, s: hashed.append(p) or False)
    monkeypatch.setattr(checker_module, "dummy_verify", lambda p: hashed.append(p) or False)
    reactor = FakeReactor()
    checker = PasswordChecker(RecipientDirectory(long_password_config(tmp_path)),
                              reactor=reactor, failure_delay=0.75)
    for form in (password, password.encode()):
        result = outcome(checker.requestAvatarId(UsernamePassword(username, form)))
        reactor.advance(0.74)
        assert result == []
        reactor.advance(0.02)
        assert len(result) == 1 and isinstance(result[0], Failure)
        result[0].trap(UnauthorizedLogin)
    assert hashed == [] and reactor.pool.calls == 0


@pytest.mark.parametrize("username", ["long@example.org", "sha512@example.org",
                                      "sha256@example.org"])
def test_a_password_of_exactly_the_limit_still_works(tmp_path: Path, username: str) -> None:
    checker = PasswordChecker(RecipientDirectory(long_password_config(tmp_path)),
                              reactor=FakeReactor())
    result = outcome(checker.requestAvatarId(UsernamePassword(username, "p" * 1024)))
    assert result == [username]


def test_refusal_time_does_not_depend_on_the_hashing_time(
        setup: tuple[PasswordChecker, FakeReactor], monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is answered failure_delay after the attempt began: a scheme that hashes
    in 0.3 s and an unknown user (the dummy hash) answer at the same moment."""
    checker, reactor = setup

    def slow(*_args: object) -> bool:
        reactor.advance(0.3)  # the thread pool is synchronous here: time passes inside
        return False

    monkeypatch.setattr(checker_module, "verify_password", slow)
    monkeypatch.setattr(checker_module, "dummy_verify", slow)
    for user in (b"alice@example.org", b"nobody@example.org"):
        started = reactor.seconds()
        result = outcome(checker.requestAvatarId(UsernamePassword(user, b"wrong")))
        reactor.advance(started + 0.74 - reactor.seconds())
        assert result == []
        reactor.advance(0.02)
        result[0].trap(UnauthorizedLogin)


def test_hashing_longer_than_the_delay_is_answered_at_once(
        setup: tuple[PasswordChecker, FakeReactor], monkeypatch: pytest.MonkeyPatch) -> None:
    checker, reactor = setup

    def slower(*_args: object) -> bool:
        reactor.advance(2.0)
        return False

    monkeypatch.setattr(checker_module, "verify_password", slower)
    result = outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"wrong")))
    reactor.advance(0)
    result[0].trap(UnauthorizedLogin)
