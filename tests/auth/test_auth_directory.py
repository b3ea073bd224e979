"""RecipientDirectory: users, aliases, plus-addressing, catch-alls, loops, safe names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from mailserver.address import Address
from mailserver.auth.directory import MAX_ALIAS_DEPTH, RecipientDirectory
from mailserver.auth.names import InvalidAddress
from mailserver.config import Config, config_from_dict
from mailserver.interfaces import IRecipientDirectory, MailboxId, Resolution

USERS = """\
alice@example.org:{PLAIN}a
bob@example.org:{PLAIN}b
carol@example.net:{PLAIN}c
postmaster@example.org:{PLAIN}p
"""


def make_config(tmp_path: Path, **extra: Any) -> Config:
    raw = {"hostname": "mail.example.org", "data_dir": str(tmp_path / "data"),
           "domains": {"local": ["Example.org", "example.net"]}}
    raw.update(extra)
    return config_from_dict(raw)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    cfg = make_config(tmp_path)
    cfg.data_dir.mkdir()
    cfg.users_file.write_text(USERS)
    return cfg


def write_aliases(config: Config, text: str) -> None:
    config.aliases_file.write_text(text)


@pytest.fixture
def log_text() -> Iterator[list[str]]:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield lines
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))


def mb(address: str) -> MailboxId:
    local, _, domain = address.partition("@")
    return MailboxId(domain=domain, localpart=local)


def test_provides_the_interface(config: Config) -> None:
    assert verifyObject(IRecipientDirectory, RecipientDirectory(config))


def test_users_resolve_case_insensitively(config: Config) -> None:
    d = RecipientDirectory(config)
    assert d.resolve("alice@example.org") == Resolution(mailboxes=(mb("alice@example.org"),))
    assert d.resolve("ALICE@Example.ORG").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("carol@example.net").mailboxes == (mb("carol@example.net"),)
    assert d.resolve("nobody@example.org").is_empty
    assert d.resolve("alice@elsewhere.example").is_empty  # not a local domain
    assert d.resolve("").is_empty
    assert d.user_exists("Alice@example.org")
    assert not d.user_exists("nobody@example.org")


def test_plus_addressing(config: Config) -> None:
    d = RecipientDirectory(config)
    assert d.resolve("alice+news@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("Alice+A+B@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("nobody+x@example.org").is_empty
    assert not d.user_exists("alice+news@example.org")


def test_aliases_local_and_remote(config: Config) -> None:
    write_aliases(config, "info@example.org: alice, bob@example.org, Dan@Remote.Example\n"
                          "team@example.org: info@example.org, carol@example.net\n")
    d = RecipientDirectory(config)
    info = d.resolve("INFO@example.org")
    assert info.mailboxes == (mb("alice@example.org"), mb("bob@example.org"))
    assert info.remote == ("Dan@remote.example",)
    team = d.resolve("team@example.org")
    assert team.mailboxes == (mb("carol@example.net"), mb("alice@example.org"),
                              mb("bob@example.org"))  # sorted: (domain, local part)
    assert not d.user_exists("info@example.org")  # an alias is not a user


def test_full_address_alias_wins_over_the_stripped_one(config: Config) -> None:
    write_aliases(config, "alice+spam@example.org: bob@example.org\n"
                          "sales@example.org: carol@example.net\n")
    d = RecipientDirectory(config)
    assert d.resolve("alice+spam@example.org").mailboxes == (mb("bob@example.org"),)
    assert d.resolve("alice+other@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("sales+eu@example.org").mailboxes == (mb("carol@example.net"),)


def test_alias_shadowing_a_user_can_keep_a_copy(config: Config) -> None:
    write_aliases(config, "alice@example.org: alice@example.org, bob@example.org\n"
                          "bob@example.org: carol@example.net\n")
    d = RecipientDirectory(config)
    # alice: her own copy (self-reference) plus bob's alias expansion.
    assert d.resolve("alice@example.org").mailboxes == (mb("carol@example.net"),
                                                         mb("alice@example.org"))
    assert d.resolve("bob@example.org").mailboxes == (mb("carol@example.net"),)


def test_catch_all(config: Config, log_text: list[str]) -> None:
    write_aliases(config, "@example.org: bob@example.org\n"
                          "list@example.org: ghost@example.org, alice@example.org\n")
    d = RecipientDirectory(config)
    assert d.resolve("anything@example.org").mailboxes == (mb("bob@example.org"),)
    assert d.resolve("anything+tag@example.org").mailboxes == (mb("bob@example.org"),)
    assert d.resolve("alice@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("x@example.net").is_empty  # no catch-all there
    # An alias target naming an unknown local user is skipped (not caught), with a warning.
    assert d.resolve("list@example.org").mailboxes == (mb("alice@example.org"),)
    assert any("ghost@example.org" in line for line in log_text)


def test_alias_loops_terminate(config: Config, log_text: list[str]) -> None:
    write_aliases(config, "a@example.org: b@example.org\n"
                          "b@example.org: c@example.org\n"
                          "c@example.org: a@example.org, alice@example.org\n"
                          "self@example.org: self@example.org\n"
                          "@example.net: loop@example.net\n"
                          "loop@example.net: x@example.net\n")
    d = RecipientDirectory(config)
    assert d.resolve("a@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("b@example.org").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("self@example.org").is_empty
    assert d.resolve("x@example.net").is_empty  # catch-all -> alias -> unknown: no re-catch


def test_alias_depth_limit(config: Config, log_text: list[str]) -> None:
    depth = MAX_ALIAS_DEPTH + 2
    chain = "".join(f"l{i}@example.org: l{i + 1}@example.org\n" for i in range(depth))
    write_aliases(config, chain + f"l{depth}@example.org: alice@example.org\n"
                                  "short0@example.org: short1@example.org\n"
                                  "short1@example.org: bob@example.org\n")
    d = RecipientDirectory(config)
    assert d.resolve("l0@example.org").is_empty
    assert any("deeper than" in line for line in log_text)
    assert d.resolve(f"l{depth - MAX_ALIAS_DEPTH + 1}@example.org").mailboxes == (
        mb("alice@example.org"),)
    assert d.resolve("short0@example.org").mailboxes == (mb("bob@example.org"),)


def test_duplicates_are_merged(config: Config) -> None:
    write_aliases(config, "x@example.org: alice, y@example.org, r@remote.example\n"
                          "y@example.org: alice, r@remote.example\n")
    res = RecipientDirectory(config).resolve("x@example.org")
    assert res.mailboxes == (mb("alice@example.org"),)
    assert res.remote == ("r@remote.example",)


def test_postmaster_without_domain(config: Config, tmp_path: Path) -> None:
    d = RecipientDirectory(config)
    # RFC 5321 4.5.1: "postmaster" alone is the postmaster of our (first) domain.
    assert d.resolve("postmaster").mailboxes == (mb("postmaster@example.org"),)
    assert d.resolve("PostMaster").mailboxes == (mb("postmaster@example.org"),)
    assert d.resolve(str(Address("Postmaster", ""))).mailboxes == (
        mb("postmaster@example.org"),)
    write_aliases(config, "postmaster@example.org: alice@example.org\n")
    assert d.resolve("postmaster").mailboxes == (mb("alice@example.org"),)
    assert d.resolve("someone").is_empty  # other bare names are nothing

    other = make_config(tmp_path / "other")
    other.data_dir.mkdir(parents=True)
    assert RecipientDirectory(other).resolve("postmaster").is_empty  # no alias, no user


def test_reload_without_restart(config: Config) -> None:
    d = RecipientDirectory(config)
    assert d.resolve("dave@example.org").is_empty
    with config.users_file.open("a") as f:
        f.write("dave@example.org:{PLAIN}d\n")
    assert d.resolve("dave@example.org").mailboxes == (mb("dave@example.org"),)
    assert d.password_hash("dave@example.org") == "{PLAIN}d"
    write_aliases(config, "info@example.org: dave@example.org\n")
    assert d.resolve("info@example.org").mailboxes == (mb("dave@example.org"),)
    # Removal is noticed too, even when size and mtime happen to match.
    st = config.users_file.stat()
    config.users_file.write_text(USERS.replace("bob@", "rob@"))
    os.utime(config.users_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    config.aliases_file.unlink()
    assert d.resolve("bob@example.org").is_empty
    assert d.resolve("rob@example.org").mailboxes == (mb("rob@example.org"),)


@pytest.mark.parametrize(("address", "reason"), [
    ("../x@example.org", "starts with '.'"),
    (".hidden@example.org", "starts with '.'"),
    ("a/b@example.org", "'/'"),
    ("a..b@example.org", "'..'"),
    ("trailing.@example.org", "ends with '.'"),
    ("nul\x00@example.org", "'\\x00'"),
    ("x" * 65 + "@example.org", "longer than 64"),
    ("a+b@example.org", "recipient delimiter"),
    ("sp ace@example.org", "' '"),
    ("alice@example.com", "example.com is not a local domain (domains.local)"),
    ("alice", "not an address"),
    ("@example.org", "not an address"),
])
def test_mailbox_id_refuses_unsafe_names(config: Config, address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=None) as info:
        RecipientDirectory(config).mailbox_id(address)
    assert reason in str(info.value)


def test_mailbox_id_normalises(config: Config) -> None:
    d = RecipientDirectory(config)
    assert d.mailbox_id("Alice.Smith@Example.ORG") == mb("alice.smith@example.org")
    assert d.mailbox_id("x_y-z.1@example.net") == mb("x_y-z.1@example.net")
    composed = d.mailbox_id("J\u00f6rg@example.org")
    decomposed = d.mailbox_id("Jo\u0308rg@example.org")
    assert composed == decomposed == mb("j\u00f6rg@example.org")


def test_hand_edited_unsafe_users_are_ignored_and_reported(config: Config) -> None:
    config.users_file.write_text(USERS + "../../etc@example.org:{PLAIN}x\n"
                                         "far@elsewhere.example:{PLAIN}x\n"
                                         "broken line\n")
    d = RecipientDirectory(config)
    assert not d.user_exists("../../etc@example.org")
    assert d.resolve("../../etc@example.org").is_empty
    assert not d.user_exists("far@elsewhere.example")
    report = d.check()
    errors = [str(e) for e in report.errors]
    path = config.users_file
    assert errors == [
        f"{path}:5: ../../etc@example.org: local part starts with '.'; ignored",
        f"{path}:6: elsewhere.example is not a local domain (domains.local); ignored",
        f"{path}:7: expected user@domain:{{SCHEME}}hash",
    ]
    assert report.users == 4


def test_check_reports_alias_problems(config: Config) -> None:
    write_aliases(config, "x@elsewhere.example: alice@example.org\n"
                          "y@example.org: ghost@example.org, alice+tag@example.org\n"
                          "z@example.org: y@example.org, r@remote.example\n"
                          "broken\n")
    report = RecipientDirectory(config).check()
    path = config.aliases_file
    assert [str(e) for e in report.errors] == [
        f"{path}:1: x@elsewhere.example: elsewhere.example is not a local domain "
        "(domains.local); never used",
        f"{path}:4: expected address: target[, target...]",
    ]
    assert [str(w) for w in report.warnings] == [
        f"{path}:2: y@example.org: target ghost@example.org is neither a user nor an alias; "
        "mail for it is dropped",
    ]
    assert report.aliases == 3


def test_login_key_and_password_hash(config: Config) -> None:
    d = RecipientDirectory(config)
    assert d.login_key("Alice@Example.org") == "alice@example.org"
    assert d.login_key("alice") == "alice@example.org"
    assert d.password_hash("ALICE@example.org") == "{PLAIN}a"
    assert d.password_hash("nobody@example.org") is None
    assert d.users() == ["alice@example.org", "bob@example.org", "carol@example.net",
                         "postmaster@example.org"]
