"""Who is local: users and aliases resolved to mailboxes (IRecipientDirectory).

Resolution order for `local+tag@domain` in a local domain, as Postfix does it:

1. the alias for the full address (`local+tag@domain`), then for `local@domain`;
2. the user `local@domain`;
3. the domain catch-all `@domain` (only for the address the client gave, not for alias
   targets: a typo in an alias must show up as a warning, not vanish into a catch-all).

Alias targets are expanded recursively (at most MAX_ALIAS_DEPTH levels). An address
that comes back to itself is delivered to its own mailbox if it is a user (so
`alice@x: alice@x, bob@x` keeps a copy for alice) and dropped with a warning otherwise;
that also makes loops harmless. Targets in other domains go to Resolution.remote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from zope.interface import implementer

from mailserver.auth.aliases import AliasEntry, AliasesFile, AliasTable
from mailserver.auth.dovecot_fields import ignored_fields, login_denied
from mailserver.auth.names import (
    InvalidAddress,
    address_key,
    localpart_problem,
    make_mailbox_id,
    split_key,
    strip_extension,
)
from mailserver.auth.quota_rules import limits_of
from mailserver.auth.textfile import LineProblem
from mailserver.auth.userfile import UserEntry, UsersFile, UsersTable
from mailserver.config import Config
from mailserver.interfaces import IRecipientDirectory, MailboxId, QuotaLimits, Resolution
from mailserver.logs import logger

log = logger(__name__)

#: How deep aliases may point to aliases before expansion stops (Postfix allows 1000;
#: anything past a handful is a mistake, and the limit bounds the work per RCPT).
MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class DirectoryReport:
    """What check-config says about the users and aliases files."""

    errors: tuple[LineProblem, ...] = ()
    warnings: tuple[LineProblem, ...] = ()
    users: int = 0
    aliases: int = 0


@dataclass
class _Hosted:
    """The users of one UsersTable that we can host (local domain, safe name)."""

    table: UsersTable
    users: dict[str, UserEntry] = field(default_factory=dict)
    problems: list[LineProblem] = field(default_factory=list)


@dataclass
class _Expansion:
    mailboxes: set[MailboxId] = field(default_factory=set)
    remote: dict[str, None] = field(default_factory=dict)


@implementer(IRecipientDirectory)
class RecipientDirectory:
    """Users and aliases of `config`, re-read from disk whenever the files change."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.users_file = UsersFile(config.users_file)
        self.aliases_file = AliasesFile(config.aliases_file)
        self._hosted_cache: _Hosted | None = None

    # -- IRecipientDirectory -------------------------------------------------------------

    def resolve(self, address: str) -> Resolution:
        """Mailboxes and remote addresses `address` delivers to; empty if none."""
        key = self._recipient_key(address)
        if key is None:
            return Resolution()
        out = _Expansion()
        self._expand(key, 0, frozenset(), self._users(), self.aliases_file.table(), out)
        return Resolution(tuple(sorted(out.mailboxes)), tuple(out.remote))

    def unavailable(self) -> str | None:
        self._users()
        self.aliases_file.table()
        return self.users_file.read_error or self.aliases_file.read_error

    def user_exists(self, address: str) -> bool:
        return address_key(address) in self._users()

    def login_allowed(self, address: str) -> bool:
        entry = self._users().get(address_key(address))
        return entry is not None and not login_denied(entry.extra)

    # -- for submission (RFC 6409): who may use which envelope sender ----------------------

    def may_send_as(self, user: str, address: str) -> bool:
        """May the authenticated `user` use `address` as envelope sender?

        Yes for the user's own address (any `+extension`, any case) and for an alias,
        given explicitly in the aliases file, whose expansion includes the user's
        mailbox (`sales@x: alice@x, bob@x` lets alice and bob send as sales@x). A domain
        catch-all grants nothing: it would let one user send as every unknown name.
        """
        user_key = address_key(user)
        if user_key not in self._users() or "@" not in address:
            return False
        key = address_key(address)
        local, domain = split_key(key)
        if not local or not self.config.is_local_domain(domain):
            return False
        base = f"{strip_extension(local)}@{domain}"
        if base == user_key:
            return True
        aliases = self.aliases_file.table()
        user_local, user_domain = split_key(user_key)
        mailbox = MailboxId(domain=user_domain, localpart=user_local)
        for candidate in _unique((key, base)):
            entry = aliases.aliases.get(candidate)
            if entry is None:
                continue
            out = _Expansion()
            for target in entry.targets:
                self._expand(target, 1, frozenset({candidate}), self._users(), aliases, out)
            return mailbox in out.mailboxes
        return False

    def sender_addresses(self, user: str) -> list[str]:
        """Every address `user` may send as without a +extension: its own and each alias
        that reaches it (for logs, the admin tool and error messages)."""
        user_key = address_key(user)
        if user_key not in self._users():
            return []
        found = [user_key]
        for entry in self.aliases():
            if not entry.is_catch_all and self.may_send_as(user_key, entry.key):
                found.append(entry.key)
        return found

    # -- for the checker, realm and admin tool -------------------------------------------

    def mailbox_id(self, address: str) -> MailboxId:
        """The Maildir name of `address`; InvalidAddress says why it cannot be one.

        Validation only (the user need not exist): `user add` calls this before it
        creates anything, so nothing outside data_dir/mail can ever be made.
        """
        return make_mailbox_id(address, self.config.domains.local)

    def quota_limits(self, mailbox: MailboxId) -> QuotaLimits:
        """The quota of the user whose Maildir `mailbox` is (auth/quota_rules.py: the
        users file's extra fields); no limits for a mailbox that is no user's."""
        entry = self._users().get(mailbox.address)
        return limits_of(entry.extra) if entry is not None else QuotaLimits()

    def login_key(self, username: str) -> str:
        """The address a login name stands for: lower case; a bare name gets the first
        local domain (`alice` -> `alice@example.org`), as users of one-domain servers
        expect."""
        key = address_key(username)
        if "@" not in key and self.config.domains.local:
            key = f"{key}@{self.config.domains.local[0]}"
        return key

    def password_hash(self, address: str) -> str | None:
        """The stored `{SCHEME}hash` of a hosted user, or None for no such user; ""
        (no login) for a user whose line says Dovecot's `nologin` or `deny`."""
        entry = self._users().get(address_key(address))
        if entry is None:
            return None
        # Dovecot's nologin/deny: no login, answered like a wrong password.
        return "" if login_denied(entry.extra) else entry.password

    def users(self) -> list[str]:
        """Hosted user addresses, sorted."""
        return sorted(self._users())

    def aliases(self) -> list[AliasEntry]:
        """Every alias of the file, catch-alls included, in key order."""
        table = self.aliases_file.table()
        return [table.aliases[k] for k in sorted(table.aliases)]

    def check(self) -> DirectoryReport:
        """Every problem of both files, for check-config: errors and warnings."""
        hosted = self._hosted()
        aliases = self.aliases_file.table()
        user_errors = list(hosted.table.problems) + hosted.problems
        alias_errors = list(aliases.problems)
        warnings: list[LineProblem] = []
        for user in hosted.table.users.values():
            ignored = ignored_fields(user.extra)
            if ignored:
                warnings.append(LineProblem(
                    hosted.table.path, user.line,
                    f"{user.address}: Dovecot's {', '.join(ignored)} not used here (README: "
                    "Moving from Postfix + Dovecot)"))
        for entry in aliases.aliases.values():
            domain = split_key(entry.key)[1]
            if not self.config.is_local_domain(domain):
                alias_errors.append(LineProblem(
                    aliases.path, entry.line,
                    f"{entry.key}: {domain} is not a local domain (domains.local); never used"))
            for target in entry.targets:
                problem = self._target_problem(target, hosted.users, aliases)
                if problem:
                    warnings.append(LineProblem(aliases.path, entry.line,
                                                f"{entry.key}: {problem}"))
        # Each file's problems in line order, users file first: how an operator fixes them.
        errors = sorted(user_errors, key=_line) + sorted(alias_errors, key=_line)
        return DirectoryReport(tuple(errors), tuple(sorted(warnings, key=_line)),
                               len(hosted.users), len(aliases.aliases))

    # -- internals ------------------------------------------------------------------------

    def _hosted(self) -> _Hosted:
        table = self.users_file.table()
        cached = self._hosted_cache
        if cached is not None and cached.table is table:
            return cached
        hosted = _Hosted(table)
        for key, entry in table.users.items():
            try:
                make_mailbox_id(key, self.config.domains.local)
            except InvalidAddress as e:
                problem = LineProblem(table.path, entry.line, f"{e}; ignored")
                hosted.problems.append(problem)
                log.warn("users file: {problem}", problem=str(problem))
                continue
            hosted.users[key] = entry
        self._hosted_cache = hosted
        return hosted

    def _users(self) -> dict[str, UserEntry]:
        return self._hosted().users

    def _recipient_key(self, address: str) -> str | None:
        """Lookup key of a recipient in a local domain, or None (not ours).

        RFC 5321 4.5.1: `postmaster` without a domain must be accepted; it means the
        postmaster of our first local domain.
        """
        key = address_key(address)
        local, domain = split_key(key) if "@" in key else (key, "")
        if not domain:
            if local == "postmaster" and self.config.domains.local:
                return f"postmaster@{self.config.domains.local[0]}"
            return None
        if not local or not self.config.is_local_domain(domain):
            return None
        return key

    def _expand(self, target: str, depth: int, path: frozenset[str],
                users: dict[str, UserEntry], aliases: AliasTable, out: _Expansion) -> None:
        key = address_key(target)
        local, domain = split_key(key)
        if not self.config.is_local_domain(domain):
            out.remote[target] = None
            return
        if depth > MAX_ALIAS_DEPTH:
            log.warn("alias expansion deeper than {depth} levels at {address}; stopped",
                     depth=MAX_ALIAS_DEPTH, address=key)
            return
        base = f"{strip_extension(local)}@{domain}"
        if key not in path:
            for candidate in _unique((key, base)):
                entry = aliases.aliases.get(candidate)
                if entry is None or candidate in path:
                    continue
                seen = path | {key, candidate}
                for next_target in entry.targets:
                    self._expand(next_target, depth + 1, seen, users, aliases, out)
                return
        if base in users:
            out.mailboxes.add(MailboxId(domain=domain, localpart=split_key(base)[0]))
            return
        if depth == 0:
            catch_all = aliases.aliases.get("@" + domain)
            if catch_all is not None:
                for next_target in catch_all.targets:
                    self._expand(next_target, 1, path | {key}, users, aliases, out)
            return
        log.warn("alias target {address} is not a user here; skipped", address=key)

    def _target_problem(self, target: str, users: dict[str, UserEntry],
                        aliases: AliasTable) -> str | None:
        key = address_key(target)
        local, domain = split_key(key)
        if not self.config.is_local_domain(domain):
            return None
        base = f"{strip_extension(local)}@{domain}"
        if key in aliases.aliases or base in aliases.aliases or base in users:
            return None
        problem = localpart_problem(split_key(base)[0])
        if problem:
            return f"target {target}: {problem}"
        return f"target {target} is neither a user nor an alias; mail for it is dropped"


def _line(problem: LineProblem) -> int:
    return problem.line


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
