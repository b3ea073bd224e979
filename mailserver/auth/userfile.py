"""The users file, in Dovecot's passwd-file format.

    user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]

Only the first two fields mean something to us; the rest is kept as it is when a line is
rewritten, so a file shared with (or taken over from) Dovecot loses nothing. `#` starts
a comment line; blank lines are allowed. Edits go line by line, so comments, ordering
and even lines we cannot parse survive every `mailserver user ...` command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailserver.auth.names import address_key
from mailserver.auth.quota_rules import rule_problem, with_limits
from mailserver.auth.schemes import hash_problem
from mailserver.auth.textfile import (
    LineProblem,
    TableFile,
    ensure_newline,
    numbered_lines,
)

#: The users file holds password hashes: readable by its owner only.
USERS_FILE_MODE = 0o600


class EditRefused(Exception):
    """An admin edit that does not apply (user exists, no such user); says why."""


@dataclass(frozen=True)
class UserEntry:
    """One user line: the lookup key, the stored hash, and whatever followed them."""

    address: str
    #: `{SCHEME}hash` as stored; "" means the user gets mail but cannot log in.
    password: str
    extra: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class UsersTable:
    """The parsed file: users by lookup key, and what was wrong with which line."""

    path: Path
    users: Mapping[str, UserEntry] = field(default_factory=dict)
    problems: tuple[LineProblem, ...] = ()


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _split_line(line: str) -> tuple[str, str, tuple[str, ...]] | str:
    """(key, password, extra fields), or the problem with the line."""
    user, sep, rest = line.rstrip("\r\n").partition(":")
    user = user.strip()
    if not sep:
        return "expected user@domain:{SCHEME}hash"
    if not user:
        return "empty user name"
    if any(c.isspace() for c in user):
        return f"white space in user name {user!r}"
    if "@" not in user:
        return f"user name without @domain: {user!r}"
    key = address_key(user)
    local, _, domain = key.rpartition("@")
    if not local or not domain:
        return f"not an address: {user!r}"
    password, *extra = rest.split(":")
    return key, password, tuple(extra)


def parse_users(text: str, path: Path) -> UsersTable:
    """Read a users file's text; problems are collected per line, never raised.

    A structurally broken line is skipped; a line whose hash we cannot verify keeps its
    user (mail is still delivered) and is reported. The first of duplicate users wins,
    as in Dovecot's passwd-file.
    """
    users: dict[str, UserEntry] = {}
    problems: list[LineProblem] = []
    for number, line in numbered_lines(text):
        if not _is_content(line):
            continue
        parsed = _split_line(line)
        if isinstance(parsed, str):
            problems.append(LineProblem(path, number, parsed))
            continue
        key, password, extra = parsed
        if key in users:
            problems.append(LineProblem(
                path, number, f"duplicate user {key} (first on line {users[key].line}); ignored"
            ))
            continue
        problem = hash_problem(password)
        if problem:
            problems.append(LineProblem(path, number, f"{key}: {problem}; cannot log in"))
        problem = rule_problem(extra)
        if problem:
            problems.append(LineProblem(path, number, f"{key}: {problem}"))
        users[key] = UserEntry(key, password, extra, number)
    return UsersTable(path, users, tuple(problems))


def format_user_line(address: str, password: str, extra: tuple[str, ...] = ()) -> str:
    """One line of the file (without its newline)."""
    return ":".join((address, password, *extra))


def _line_key(line: str) -> str | None:
    if not _is_content(line):
        return None
    parsed = _split_line(line)
    return None if isinstance(parsed, str) else parsed[0]


def add_user(text: str, address: str, password: str) -> str:
    """`text` with a line for a new user appended; EditRefused if it exists."""
    key = address_key(address)
    if key in parse_users(text, Path("-")).users:
        raise EditRefused(f"{key} exists")
    return ensure_newline(text) + format_user_line(key, password) + "\n"


def remove_user(text: str, address: str) -> str:
    """`text` without the user's line(s); EditRefused if there is none."""
    key = address_key(address)
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if _line_key(line) != key]
    if len(kept) == len(lines):
        raise EditRefused(f"{key}: no such user")
    return "".join(kept)


def set_password(text: str, address: str, password: str) -> str:
    """`text` with the user's hash replaced and the other fields kept."""
    return _edit_user(text, address, lambda _, extra: (password, extra))


def set_quota(text: str, address: str, storage: int | None, messages: int | None) -> str:
    """`text` with the user's quota rules replaced (auth/quota_rules.py); None keeps a
    limit, 0 removes it. The hash and the other fields stay."""
    return _edit_user(text, address, lambda password, extra: (
        password, with_limits(extra, storage, messages)))


def _edit_user(text: str, address: str,
               change: Callable[[str, tuple[str, ...]], tuple[str, tuple[str, ...]]]) -> str:
    """`text` with the user's line rewritten from change(hash, extra fields); every
    other line (comments, order, line ends) as it was. EditRefused: no such user."""
    key = address_key(address)
    out: list[str] = []
    found = False
    for line in text.splitlines(keepends=True):
        if not found and _line_key(line) == key:
            parsed = _split_line(line)
            assert not isinstance(parsed, str)
            _, password, extra = parsed
            ending = line[len(line.rstrip("\r\n")):]
            out.append(format_user_line(key, *change(password, extra)) + (ending or "\n"))
            found = True
        else:
            out.append(line)
    if not found:
        raise EditRefused(f"{key}: no such user")
    return "".join(out)


class UsersFile(TableFile[UsersTable]):
    """The users file of a running server or an admin command.

    Lookups re-read the file when it changed on disk; edits are atomic and serialised
    with other writers (see auth.textfile.TableFile).
    """

    kind = "users"
    mode = USERS_FILE_MODE

    def parse(self, text: str) -> UsersTable:
        return parse_users(text, self.path)

    def count(self, table: UsersTable) -> int:
        return len(table.users)

    def get(self, address: str) -> UserEntry | None:
        return self.table().users.get(address_key(address))

    def add(self, address: str, password_hash: str) -> None:
        self._edit(lambda text: add_user(text, address, password_hash))

    def remove(self, address: str) -> None:
        self._edit(lambda text: remove_user(text, address))

    def set_password(self, address: str, password_hash: str) -> None:
        self._edit(lambda text: set_password(text, address, password_hash))

    def set_quota(self, address: str, storage: int | None, messages: int | None) -> None:
        self._edit(lambda text: set_quota(text, address, storage, messages))
