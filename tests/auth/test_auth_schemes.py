"""Password schemes: Drepper's SHA-crypt vectors, bcrypt, argon2, plain, unknown schemes."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from typing import Any, cast

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, globalLogPublisher

from mailserver.auth import schemes
from mailserver.auth.schemes import (
    dummy_verify,
    effective_scheme,
    hash_password,
    hash_problem,
    needs_rehash,
    sha_crypt,
    split_scheme,
    verify_password,
)

# "Unix crypt using SHA-256 and SHA-512" (Ulrich Drepper), the tests2[] tables.
SHA256_VECTORS = [
    ("$5$saltstring", "Hello world!",
     "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("$5$rounds=10000$saltstringsaltstring", "Hello world!",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("$5$rounds=5000$toolongsaltstring", "This is just a test",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("$5$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
    ("$5$rounds=77777$short", "we have a short salt string but not a short password",
     "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("$5$rounds=123456$asaltof16chars..", "a short string",
     "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
    ("$5$rounds=10$roundstoolow", "the minimum number is still observed",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
]

SHA512_VECTORS = [
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbY"
     "EdFCoEOfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM"
     "0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZx"
     "Uhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("$6$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3Cm"
     "Ls66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("$6$rounds=77777$short", "we have a short salt string but not a short password",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaU"
     "eOxFmtlcGZelFl5CxtgfiAc0"),
    ("$6$rounds=123456$asaltof16chars..", "a short string",
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6yc"
     "ULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("$6$rounds=10$roundstoolow", "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58j"
     "aTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]

ALL_VECTORS = SHA256_VECTORS + SHA512_VECTORS


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def _texts(events: list[dict[str, Any]]) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in events)


@pytest.mark.parametrize(("setting", "password", "expected"), ALL_VECTORS)
def test_sha_crypt_spec_vectors(setting: str, password: str, expected: str) -> None:
    assert sha_crypt(password, setting) == expected


@pytest.mark.parametrize(("setting", "password", "expected"), ALL_VECTORS)
def test_sha_crypt_vectors_verify_as_dovecot_values(setting: str, password: str,
                                                    expected: str) -> None:
    scheme = "SHA256-CRYPT" if expected.startswith("$5$") else "SHA512-CRYPT"
    assert verify_password(password, "{" + scheme + "}" + expected)
    assert verify_password(password, expected)  # no prefix: Dovecot's default CRYPT
    assert verify_password(password, "{CRYPT}" + expected)
    assert not verify_password(password + "x", "{" + scheme + "}" + expected)


def test_sha_crypt_hash_as_setting_reproduces_itself() -> None:
    _, password, expected = SHA512_VECTORS[1]
    assert sha_crypt(password, expected) == expected


def test_sha_crypt_rejects_other_ids() -> None:
    with pytest.raises(ValueError):
        sha_crypt("x", "$1$salt")


def _system_crypt() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("crypt")
        except ImportError:
            return None


@pytest.mark.skipif(_system_crypt() is None, reason="no crypt module (Python >= 3.13)")
@settings(max_examples=40, deadline=None)
@given(password=st.text(st.characters(blacklist_characters="\x00",
                                      blacklist_categories=["Cs"]), max_size=80),
       salt=st.text(alphabet="./0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                    min_size=1, max_size=20),
       prefix=st.sampled_from(["$5$", "$6$", "$5$rounds=1234$", "$6$rounds=1001$"]))
def test_sha_crypt_matches_libc(password: str, salt: str, prefix: str) -> None:
    assert sha_crypt(password, prefix + salt) == _system_crypt().crypt(password, prefix + salt)


def test_new_hashes_are_argon2id_with_the_chosen_parameters() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert hash_password("correct horse") != stored  # random salt
    assert not needs_rehash(stored)


def test_argon2_non_ascii_and_bytes_passwords() -> None:
    stored = hash_password("pässwörd")
    assert verify_password("pässwörd", stored)
    assert verify_password("pässwörd".encode(), stored)
    assert not verify_password("passwort", stored)


def test_argon2i_and_foreign_parameters_verify() -> None:
    argon2i = argon2.PasswordHasher(type=argon2.Type.I, memory_cost=1024, time_cost=1).hash("pw")
    assert argon2i.startswith("$argon2i$")
    assert verify_password("pw", "{ARGON2I}" + argon2i)
    assert verify_password("pw", argon2i)
    assert not verify_password("no", "{ARGON2I}" + argon2i)
    other = argon2.PasswordHasher(memory_cost=2048, time_cost=1, parallelism=2).hash("pw")
    assert verify_password("pw", "{ARGON2ID}" + other)
    assert needs_rehash("{ARGON2ID}" + other)


@pytest.mark.parametrize("prefix", [b"$2y$", b"$2b$", b"$2a$"])
def test_bcrypt_variants(prefix: bytes) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).replace(b"$2b$", prefix)
    assert verify_password("secret", "{BLF-CRYPT}" + hashed.decode())
    assert verify_password("secret", hashed.decode())
    assert not verify_password("Secret", "{BLF-CRYPT}" + hashed.decode())


def test_bcrypt_long_passwords_are_truncated_like_crypt3() -> None:
    long = b"p" * 72
    hashed = bcrypt.hashpw(long, bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(long + b"and more", "{BLF-CRYPT}" + hashed)


def test_plain_schemes_compare_and_are_never_written() -> None:
    assert verify_password("s3cret", "{PLAIN}s3cret")
    assert verify_password("s3cret", "{CLEAR}s3cret")
    assert verify_password("s3cret", "{plain}s3cret")  # scheme names are case-insensitive
    assert not verify_password("s3cre", "{PLAIN}s3cret")
    assert not verify_password("", "{PLAIN}s3cret")
    assert not hash_password("s3cret").startswith(("{PLAIN}", "{CLEAR}"))
    assert needs_rehash("{PLAIN}s3cret")


def test_unknown_scheme_fails_and_warns_naming_it(log_events: list[dict[str, Any]]) -> None:
    assert not verify_password("pw", "{MD5-CRYPT}$1$abc$def")
    text = _texts(log_events)
    assert "MD5-CRYPT" in text
    assert "pw" not in text.replace("password", "")


def test_unrecognised_bare_hash_fails_with_warning(log_events: list[dict[str, Any]]) -> None:
    assert not verify_password("pw", "abJnggxhB/yWI")  # DES crypt
    assert not verify_password("pw", "$1$salt$hash")  # MD5 crypt
    assert "CRYPT" in _texts(log_events)


@pytest.mark.parametrize("stored", [
    "{SHA512-CRYPT}garbage", "{SHA256-CRYPT}$5$", "{ARGON2ID}$argon2id$broken",
    "{ARGON2ID}nothing", "{BLF-CRYPT}$2y$xx", "{BLF-CRYPT}$1$abc", "$2y$04$short", "",
])
def test_malformed_hashes_fail_without_raising(stored: str) -> None:
    assert verify_password("pw", stored) is False


def test_split_and_effective_scheme() -> None:
    assert split_scheme("{sha512-crypt}$6$x$y") == ("SHA512-CRYPT", "$6$x$y")
    assert split_scheme("$6$x$y") == (None, "$6$x$y")
    assert effective_scheme("$argon2id$v=19$...") == "ARGON2ID"
    assert effective_scheme("{CRYPT}$2y$10$...") == "BLF-CRYPT"
    assert effective_scheme("{CLEAR}x") == "CLEAR"
    assert effective_scheme("{NOPE}x") is None


def test_hash_problem() -> None:
    assert hash_problem(hash_password("x")) is None
    assert hash_problem("") is None
    assert hash_problem("{PLAIN}x") is None
    assert hash_problem("{FOO}bar") == "unknown password scheme {FOO}"
    assert "unknown kind" in (hash_problem("abJnggxhB/yWI") or "")


def test_dummy_verify_costs_an_argon2_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = schemes._verify_argon2
    def spy(secret: bytes, value: str) -> bool:
        calls.append(value)
        return real(secret, value)

    monkeypatch.setitem(schemes._VERIFIERS, "ARGON2ID", spy)
    assert dummy_verify("anything") is False
    assert len(calls) == 1
