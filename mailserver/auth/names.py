"""Address keys and mailbox names: the rules that keep a user's Maildir inside data_dir.

Why so strict: a mailbox name becomes a directory, data_dir/mail/DOMAIN/LOCALPART/.
Whatever reaches that path from admin input or a hand-edited users file must be one
harmless path component: no `/`, no NUL, no leading `.` (so neither `..` nor hidden
Maildir++ folder names), and nothing a shell or an operator's `ls` would trip over.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from mailserver.address import domain_key
from mailserver.interfaces import MailboxId

#: Plus-addressing: `alice+news@example.org` is delivered to alice (Postfix's default).
RECIPIENT_DELIMITER = "+"

#: RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
MAX_LOCALPART_OCTETS = 64

_ASCII_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


class InvalidAddress(ValueError):
    """An address we refuse to host; the message says why, for the operator."""


def address_key(text: str) -> str:
    """Lookup form of `local@domain`: NFC, local part and domain lower-cased.

    NFC because the same non-ASCII name can arrive composed or decomposed, and we want
    one mailbox for both. Text without `@` is returned lower-cased (a bare name).
    """
    text = unicodedata.normalize("NFC", text.strip())
    local, sep, domain = text.rpartition("@")
    if not sep:
        return text.lower()
    return f"{local.lower()}@{domain_key(domain)}"


def split_key(key: str) -> tuple[str, str]:
    """`local@domain` -> (local, domain), split at the last `@`."""
    local, _, domain = key.rpartition("@")
    return local, domain


def strip_extension(localpart: str) -> str:
    """`alice+news` -> `alice`; a local part starting with the delimiter is left alone."""
    base, sep, _ = localpart.partition(RECIPIENT_DELIMITER)
    return base if sep and base else localpart


def localpart_problem(localpart: str) -> str | None:
    """Why `localpart` (already lower case) cannot name a mailbox, or None if it can."""
    if not localpart:
        return "empty local part"
    if len(localpart.encode("utf-8")) > MAX_LOCALPART_OCTETS:
        return f"local part longer than {MAX_LOCALPART_OCTETS} octets"
    if localpart.startswith("."):
        return "local part starts with '.'"
    if localpart.endswith("."):
        return "local part ends with '.'"
    if ".." in localpart:
        return "local part contains '..'"
    if RECIPIENT_DELIMITER in localpart:
        return (f"local part contains the recipient delimiter {RECIPIENT_DELIMITER!r} "
                "(plus-addressing reaches the user without it)")
    for char in localpart:
        if char in _ASCII_ALLOWED:
            continue
        if not char.isascii() and char.isalnum():
            continue  # letters and digits of any script (SMTPUTF8 addresses)
        return (f"character {char!r} not allowed in a mailbox name "
                "(a-z, 0-9, '.', '_', '-' and non-ASCII letters)")
    return None


def make_mailbox_id(address: str, local_domains: Iterable[str]) -> MailboxId:
    """The MailboxId of `address`, or InvalidAddress saying why it cannot be hosted."""
    key = address_key(address)
    local, domain = split_key(key)
    if "@" not in key or not local or not domain:
        raise InvalidAddress(f"not an address: {address.strip()!r}")
    if domain not in tuple(local_domains):
        raise InvalidAddress(f"{domain} is not a local domain (domains.local)")
    problem = localpart_problem(local)
    if problem:
        raise InvalidAddress(f"{address.strip()}: {problem}")
    return MailboxId(domain=domain, localpart=local)
