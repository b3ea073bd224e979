"""The user and alias commands of the admin tool.

Each command is a function of (Admin, arguments) that prints what it did on stdout and
raises Refused with one line for the operator when it will not do it. The files are
edited with the same atomic, locked rewrite a running server expects (auth.textfile),
so these commands are safe while the server runs and against each other.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from mailserver.abuse.passwords import weakness
from mailserver.auth.aliases import parse_key, parse_target, split_targets
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.names import (
    InvalidAddress,
    address_key,
    localpart_problem,
    split_key,
    strip_extension,
)
from mailserver.auth.schemes import MAX_PASSWORD_OCTETS, hash_password, password_too_long
from mailserver.auth.userfile import EditRefused
from mailserver.config import Config
from mailserver.core.ownfiles import NotTheOwner, Owner, data_dir_owner
from mailserver.interfaces import MailboxId
from mailserver.logs import logger

log = logger(__name__)


class Refused(Exception):
    """A request the tool will not carry out (exit 1); the message says why."""


@dataclass
class Admin:
    """What every command needs: the config, the directory and the standard streams."""

    config: Config
    stdin: TextIO | None
    stdout: TextIO
    stderr: TextIO

    def __post_init__(self) -> None:
        self.directory = RecipientDirectory(self.config)

    def writing(self) -> Owner | None:
        """Call before changing anything: the owner what we create must get (data_dir's,
        when we run as root and it belongs to the server's user), or Refused when we are
        neither root nor that user (the server could not read files we made)."""
        data_dir = self.config.data_dir
        try:
            owner = data_dir_owner(data_dir)
        except NotTheOwner as e:
            name = e.owner
            how = "root" if name == "root" else \
                f"{name} (sudo -u {name} mailserver ...) or as root"
            raise Refused(f"{data_dir} belongs to {name}: run this as {how}") from None
        self.directory.users_file.owner = owner
        self.directory.aliases_file.owner = owner
        return owner

    def say(self, text: str) -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(f"note: {text}", file=self.stdout)


def read_new_password(admin: Admin, address: str = "", weak_ok: bool = False) -> str:
    """The new password: the first line of stdin when it is not a terminal (scripts),
    else asked twice without echo. Never echoed, logged or put on a command line.
    A weak one (abuse/passwords.py) is refused unless `weak_ok`."""
    stdin = admin.stdin
    if stdin is None:
        raise Refused("no standard input to read the password from")
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat the password: ") != first:
            raise Refused("the two passwords differ")
    else:
        line = stdin.readline()
        if not line:
            raise Refused("no password on standard input (expected one line)")
        first = line.removesuffix("\n").removesuffix("\r")
    if not first:
        raise Refused("empty password")
    if password_too_long(first):
        # No login could ever use it: the checker refuses longer passwords unhashed.
        raise Refused(f"password longer than {MAX_PASSWORD_OCTETS} octets")
    problem = None if weak_ok else weakness(first, address)
    if problem:
        raise Refused(f"password too weak: {problem} (--weak-ok to accept it anyway)")
    return first


def _mailbox(admin: Admin, address: str) -> MailboxId:
    """The mailbox of a user we may host; Refused with the reason otherwise."""
    try:
        return admin.directory.mailbox_id(address)
    except InvalidAddress as e:
        raise Refused(str(e)) from None


def user_add(admin: Admin, address: str, weak_ok: bool = False) -> None:
    mailbox = _mailbox(admin, address)
    key = mailbox.address
    if admin.directory.users_file.get(key) is not None:
        raise Refused(f"{key} exists")
    owner = admin.writing()
    password_hash = hash_password(read_new_password(admin, key, weak_ok))
    # The Maildir first: the server never sees a user whose Maildir is not there yet.
    from mailserver.store.maildir import create_maildir

    admin.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = create_maildir(admin.config.mail_dir, mailbox, owner, nofollow=True)
    try:
        admin.directory.users_file.add(key, password_hash)
    except EditRefused as e:  # another admin command added it meanwhile
        raise Refused(str(e)) from None
    admin.say(f"user add: {key} added (Maildir {root})")
    if admin.directory.aliases_file.get(key) is not None:
        admin.note(f"the alias {key} takes precedence: its mail goes to the alias targets "
                   "(list the user among them to keep a copy)")


def user_del(admin: Admin, address: str) -> None:
    key = address_key(address)
    admin.writing()
    try:
        admin.directory.users_file.remove(key)
    except EditRefused as e:
        raise Refused(str(e)) from None
    root = admin.config.mail_dir / split_key(key)[1] / split_key(key)[0]
    admin.say(f"user del: {key} removed; its Maildir {root} is left on disk "
              "(delete it yourself when no longer needed)")
    pointing = [a.key for a in admin.directory.aliases() if key in
                (address_key(t) for t in a.targets)]
    if pointing:
        admin.note(f"aliases still pointing at {key}: {', '.join(pointing)}")


def user_passwd(admin: Admin, address: str, weak_ok: bool = False) -> None:
    key = address_key(address)
    if admin.directory.users_file.get(key) is None:
        raise Refused(f"{key}: no such user")
    admin.writing()
    password_hash = hash_password(read_new_password(admin, key, weak_ok))
    try:
        admin.directory.users_file.set_password(key, password_hash)
    except EditRefused as e:
        raise Refused(str(e)) from None
    admin.say(f"user passwd: password of {key} changed")


def user_list(admin: Admin) -> None:
    for problem in admin.directory.users_file.table().problems:
        print(f"warning: {problem}", file=admin.stderr)
    for address in admin.directory.users():
        admin.say(address)


def alias_add(admin: Admin, address: str, targets_text: Sequence[str]) -> None:
    config = admin.config
    try:
        key = parse_key(address)
    except ValueError as e:
        raise Refused(str(e)) from None
    domain = split_key(key)[1]
    if not config.is_local_domain(domain):
        raise Refused(f"{domain} is not a local domain (domains.local)")
    raw_targets = [t for text in targets_text for t in split_targets(text)]
    if not raw_targets:
        raise Refused("no targets")
    targets: list[str] = []
    for raw in raw_targets:
        try:
            target = parse_target(raw, domain)
        except ValueError as e:
            raise Refused(str(e)) from None
        if target not in targets:
            targets.append(target)
    notes = _target_notes(admin, targets)
    admin.writing()
    try:
        admin.directory.aliases_file.add(key, targets)
    except EditRefused as e:
        raise Refused(str(e)) from None
    admin.say(f"alias add: {key} -> {', '.join(targets)}")
    if not key.startswith("@") and admin.directory.user_exists(key):
        admin.note(f"{key} is also a user; the alias takes precedence "
                   "(list the user among the targets to keep a copy)")
    for text in notes:
        admin.note(text)


def _target_notes(admin: Admin, targets: Sequence[str]) -> list[str]:
    """Warnings about targets (checked before writing: a bad local name is refused)."""
    notes: list[str] = []
    remote = []
    for target in targets:
        key = address_key(target)
        local, domain = split_key(key)
        if not admin.config.is_local_domain(domain):
            remote.append(target)
            continue
        base = strip_extension(local)
        aliases = admin.directory.aliases_file
        if aliases.get(key) is not None or aliases.get(f"{base}@{domain}") is not None:
            continue  # an alias to an alias: expanded further at delivery
        problem = localpart_problem(base)
        if problem:
            raise Refused(f"target {target}: {problem}")
        if not admin.directory.user_exists(f"{base}@{domain}"):
            notes.append(f"{target} is not a user (yet); mail for it is dropped until it is")
    if remote:
        notes.append(f"forwarding to {', '.join(remote)} keeps the original sender (no "
                     "SRS): receivers that check SPF may refuse those copies")
    return notes


def alias_del(admin: Admin, address: str) -> None:
    admin.writing()
    try:
        key = parse_key(address)
        admin.directory.aliases_file.remove(key)
    except (ValueError, EditRefused) as e:
        raise Refused(str(e)) from None
    admin.say(f"alias del: {key} removed")


def alias_list(admin: Admin) -> None:
    for problem in admin.directory.aliases_file.table().problems:
        print(f"warning: {problem}", file=admin.stderr)
    for entry in admin.directory.aliases():
        admin.say(f"{entry.key}: {', '.join(entry.targets)}")
