"""Password hashes in Dovecot's `{SCHEME}hash` form.

Why Dovecot's form: operators move users files between Dovecot and us, and `doveadm pw`
output pastes straight in. New passwords are always {ARGON2ID} (memory-hard, so GPU
guessing of a stolen users file is expensive). Older schemes are accepted for reading
only, so a users file taken over from Dovecot keeps working; `user passwd` upgrades.

Argon2id parameters: m=19 MiB (19456 KiB), t=2, p=1, OWASP's recommended minimum for
Argon2id (its first profile; RFC 9106 section 4's second recommended option is m=64 MiB,
t=3, which costs ~145 ms here). Chosen from a measured budget (bench/argon2_cost.py,
bench/results/profiles/argon2-cost.md, 2-core machine): under 50 ms and under 32 MiB per
check. m=19 MiB,t=2 took 37 ms and 19 MiB; the earlier m=32 MiB,t=2 took 61-83 ms and,
with ten logins at once on the reactor's ten threads, +288 MiB. Verification runs on
auth/hashing.py's pool (one thread per core), so a burst of logins holds at most
cores x 19 MiB. Hashes made with other parameters still verify (the parameters are in
the hash); `user passwd` writes the current ones (needs_rehash).

{SHA512-CRYPT}/{SHA256-CRYPT} are implemented here in pure Python from Ulrich Drepper's
specification ("Unix crypt using SHA-256 and SHA-512"), because Python's `crypt` module
is deprecated and gone in 3.13.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from functools import cache

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import Type

from mailserver.logs import logger

log = logger(__name__)

#: The scheme every new password is stored with.
DEFAULT_SCHEME = "ARGON2ID"

#: Longest password, in octets of UTF-8, that is ever hashed or verified. Why a cap:
#: SHA-crypt (Drepper's steps 13-15, and every round after) costs time quadratic in the
#: password's length, so an 8 KiB password costs ~64 MB of SHA-512 per attempt, before
#: any login. 1 KiB is far beyond what people and password managers use (bcrypt reads
#: 72 octets; Dovecot's auth limits a whole request to 8 KiB). The checker refuses a
#: longer one as a wrong password, and the admin tool will not set one.
MAX_PASSWORD_OCTETS = 1024

ARGON2_MEMORY_COST = 19456  # KiB (19 MiB)
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

_hasher = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST,
    parallelism=ARGON2_PARALLELISM,
    type=Type.ID,
)

# Schemes whose stored value is a plain password: accepted for reading, never written.
_PLAIN_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})

_SCHEME_RE = re.compile(r"\{([A-Za-z0-9._-]+)\}")


def hash_password(password: str | bytes) -> str:
    """A new `{ARGON2ID}$argon2id$v=19$m=...` value for the users file (random salt)."""
    return "{" + DEFAULT_SCHEME + "}" + _hasher.hash(_to_bytes(password))


def password_too_long(password: str | bytes) -> bool:
    """More than MAX_PASSWORD_OCTETS octets (UTF-8 for str)."""
    return len(_to_bytes(password)) > MAX_PASSWORD_OCTETS


def split_scheme(stored: str) -> tuple[str | None, str]:
    """`{SHA512-CRYPT}$6$...` -> ("SHA512-CRYPT", "$6$..."); no prefix -> (None, stored).

    The scheme name is upper-cased: Dovecot matches scheme names case-insensitively.
    """
    match = _SCHEME_RE.match(stored)
    if not match:
        return None, stored
    return match.group(1).upper(), stored[match.end():]


def effective_scheme(stored: str) -> str | None:
    """The scheme that verifies `stored`, or None when we cannot verify it at all.

    A value without `{SCHEME}` is read as Dovecot does with default_pass_scheme=CRYPT:
    a crypt(3) string recognised by its `$id$` prefix. CRYPT with an explicit prefix is
    resolved the same way.
    """
    scheme, value = split_scheme(stored)
    if scheme is None or scheme == "CRYPT":
        return _crypt_scheme(value)
    if scheme in _VERIFIERS or scheme in _PLAIN_SCHEMES:
        return scheme
    return None


def hash_problem(stored: str) -> str | None:
    """Why `stored` can never verify (for check-config and users-file loading), or None."""
    if stored == "":
        return None  # an empty password field: the user receives mail but cannot log in
    scheme, value = split_scheme(stored)
    if scheme is not None and scheme != "CRYPT" and scheme not in _VERIFIERS \
            and scheme not in _PLAIN_SCHEMES:
        return f"unknown password scheme {{{scheme}}}"
    if effective_scheme(stored) is None:
        return "password hash of an unknown kind (expected {SCHEME}hash or $id$... crypt)"
    return None


def verify_password(password: str | bytes, stored: str) -> bool:
    """True when `password` matches `stored`. Never raises for a bad `stored` value.

    Unknown schemes and malformed hashes fail with a warning naming the scheme (never the
    hash or the password), so an operator sees why a login keeps failing.
    """
    secret = _to_bytes(password)
    if stored == "":
        return False
    scheme, value = split_scheme(stored)
    if scheme in _PLAIN_SCHEMES:
        return hmac.compare_digest(secret, value.encode("utf-8"))
    effective = effective_scheme(stored)
    if effective is None:
        log.warn("cannot verify a password stored with unknown scheme {scheme}",
                 scheme=scheme or "CRYPT (unrecognised prefix)")
        return False
    try:
        return _VERIFIERS[effective](secret, value)
    except (ValueError, InvalidHashError, VerificationError) as e:
        log.warn("malformed {scheme} password hash: {error}", scheme=effective,
                 error=type(e).__name__)
        return False


@cache
def _dummy_hash() -> str:
    return hash_password(b"dummy password for timing equalisation")


def dummy_verify(password: str | bytes) -> bool:
    """Spend as long as a real verification does, for a user that does not exist.

    Why: without it, "no such user" answers in microseconds and "wrong password" in tens
    of milliseconds, which tells a guesser which addresses exist.
    """
    verify_password(password, _dummy_hash())
    return False


def needs_rehash(stored: str) -> bool:
    """True when `stored` is not an Argon2id hash with the current parameters."""
    scheme, value = split_scheme(stored)
    if scheme != DEFAULT_SCHEME:
        return True
    try:
        return _hasher.check_needs_rehash(value)
    except (InvalidHashError, ValueError):
        return True


# -- the verifiers ------------------------------------------------------------------------

def _verify_argon2(secret: bytes, value: str) -> bool:
    # The type comes from the hash itself ($argon2id$ / $argon2i$), as libsodium does for
    # Dovecot, so {ARGON2I} and {ARGON2ID} both work whatever the prefix says.
    if value.startswith("$argon2id$"):
        kind = Type.ID
    elif value.startswith("$argon2i$"):
        kind = Type.I
    else:
        raise ValueError("not an argon2i/argon2id hash")
    try:
        return argon2.low_level.verify_secret(value.encode("ascii"), secret, kind)
    except VerifyMismatchError:
        return False


def _verify_bcrypt(secret: bytes, value: str) -> bool:
    # crypt(3) and Dovecot use only the first 72 bytes; the bcrypt package refuses longer
    # passwords instead of truncating, so truncate as the hash's creator did.
    raw = value.encode("ascii")
    if raw[:4] not in (b"$2y$", b"$2b$", b"$2a$"):
        raise ValueError("not a $2y$/$2b$/$2a$ bcrypt hash")
    return bcrypt.checkpw(secret[:72], raw)


def _verify_sha_crypt(secret: bytes, value: str) -> bool:
    if not (value.startswith("$5$") or value.startswith("$6$")) or value.count("$") < 3:
        raise ValueError("not a $5$/$6$ SHA-crypt hash")
    return hmac.compare_digest(sha_crypt(secret, value).encode("ascii"),
                               value.encode("ascii", "replace"))


_VERIFIERS: dict[str, Callable[[bytes, str], bool]] = {
    "ARGON2ID": _verify_argon2,
    "ARGON2I": _verify_argon2,
    "BLF-CRYPT": _verify_bcrypt,
    "SHA512-CRYPT": _verify_sha_crypt,
    "SHA256-CRYPT": _verify_sha_crypt,
}


def _crypt_scheme(value: str) -> str | None:
    """The scheme of a bare crypt(3) string, by its prefix (DES and MD5 crypt: None)."""
    if value.startswith("$argon2id$"):
        return "ARGON2ID"
    if value.startswith("$argon2i$"):
        return "ARGON2I"
    if value[:4] in ("$2y$", "$2b$", "$2a$"):
        return "BLF-CRYPT"
    if value.startswith("$6$"):
        return "SHA512-CRYPT"
    if value.startswith("$5$"):
        return "SHA256-CRYPT"
    return None


def _to_bytes(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8")


# -- SHA-crypt (Drepper) -------------------------------------------------------------------

_ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999
_SALT_MAX = 16
_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# The byte order of the final encoding, straight from the specification's C code: each
# triple is (B2, B1, B0) of one b64_from_24bit call; the last group is shorter.
_Order = tuple[tuple[int, int, int], ...]
_Tail = tuple[tuple[int | None, int | None, int], int]

_ORDER_256: _Order = ((0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
              (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29))
_TAIL_256: _Tail = ((None, 31, 30), 3)
_ORDER_512: _Order = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
              (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
              (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
              (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
              (62, 20, 41))
_TAIL_512: _Tail = ((None, None, 63), 2)


def sha_crypt(password: str | bytes, setting: str) -> str:
    """crypt(3) with `$5$` (SHA-256) or `$6$` (SHA-512) `setting`, per Drepper's spec.

    `setting` is `$6$[rounds=N$]salt[$anything]`; the result is the full crypt string.
    As the specification says, rounds outside 1000..999999999 are clamped and the salt is
    cut at 16 characters.
    """
    if setting.startswith("$5$"):
        digest, order, tail, prefix = hashlib.sha256, _ORDER_256, _TAIL_256, "$5$"
    elif setting.startswith("$6$"):
        digest, order, tail, prefix = hashlib.sha512, _ORDER_512, _TAIL_512, "$6$"
    else:
        raise ValueError("SHA-crypt setting must start with $5$ or $6$")
    rest = setting[3:]
    rounds = _ROUNDS_DEFAULT
    custom_rounds = False
    if rest.startswith("rounds="):
        number, sep, after = rest[7:].partition("$")
        if sep and number.isdigit():  # otherwise "rounds=..." is simply part of the salt
            rounds = min(max(int(number), _ROUNDS_MIN), _ROUNDS_MAX)
            custom_rounds = True
            rest = after
    salt_text = rest.split("$", 1)[0][:_SALT_MAX]
    key = _to_bytes(password)
    salt = salt_text.encode("utf-8")
    final = _sha_crypt_digest(digest, key, salt, rounds)

    encoded = []
    for b2, b1, b0 in order:
        encoded.append(_b64_24(final[b2], final[b1], final[b0], 4))
    (t2, t1, t0), n = tail
    encoded.append(_b64_24(final[t2] if t2 is not None else 0,
                           final[t1] if t1 is not None else 0, final[t0], n))
    rounds_part = f"rounds={rounds}$" if custom_rounds else ""
    return f"{prefix}{rounds_part}{salt_text}${''.join(encoded)}"


def _sha_crypt_digest(digest: Callable[..., hashlib._Hash], key: bytes, salt: bytes,
                      rounds: int) -> bytes:
    """Steps 1-21 of the specification: the 32- or 64-byte result before encoding."""
    size = digest().digest_size
    b = digest(key + salt + key).digest()
    a = digest(key + salt)
    a.update(_repeat(b, len(key), size))
    length = len(key)
    while length:  # one bit of the key length at a time, lowest first
        a.update(b if length & 1 else key)
        length >>= 1
    a_result = a.digest()
    p_bytes = _repeat(digest(key * len(key)).digest(), len(key), size)
    s_bytes = _repeat(digest(salt * (16 + a_result[0])).digest(), len(salt), size)
    c = a_result
    for i in range(rounds):
        ctx = digest(p_bytes if i & 1 else c)
        if i % 3:
            ctx.update(s_bytes)
        if i % 7:
            ctx.update(p_bytes)
        ctx.update(c if i & 1 else p_bytes)
        c = ctx.digest()
    return c


def _repeat(block: bytes, length: int, size: int) -> bytes:
    """`length` bytes made of whole copies of `block` and then a prefix of it."""
    whole, part = divmod(length, size)
    return block * whole + block[:part]


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_B64[w & 0x3F])
        w >>= 6
    return "".join(out)
