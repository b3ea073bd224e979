"""A user's quota in the users file, in Dovecot's own words.

The users file is Dovecot's passwd-file (auth/userfile.py); its eighth field holds
space-separated `key=value` extra fields, and Dovecot keeps a quota there as

    alice@example.org:{ARGON2ID}...::::::userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=10000

so a file taken over from Dovecot keeps its quotas, and ours read by Dovecot keeps them
too. We read the rules for all folders (`*`) with the resources `storage` (a size:
b, k, M, G, T, 1024-based; without a unit kilobytes, as Dovecot reads it) and
`messages`; `0` means no limit, as in Dovecot. Rules for single folders and relative
(`+`, `%`) values are Dovecot's alone and ignored. `userdb_` may be left out (a file
used as Dovecot's userdb alone).
"""

from __future__ import annotations

import re

from mailserver.interfaces import QuotaLimits

#: The fields before the extra fields: uid, gid, gecos, home, shell (after the hash).
_FIXED = 5
_UNITS = {"": 1024, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(\d{1,19})([bBkKmMgGtT]?)\Z")
RULE_KEY = re.compile(r"(?:userdb_)?quota_rule\d*\Z")
#: The largest limit written or read: RFC 9208's number64 in KiB stays in range.
MAX_SIZE = 2**62


class QuotaRuleError(ValueError):
    """A size or count that cannot be a limit; says why."""


def parse_size(text: str) -> int:
    """`1G` -> 1073741824; a bare number is KiB (Dovecot). QuotaRuleError if bad."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise QuotaRuleError(f"not a size: {text!r} (a number with b, k, M, G or T)")
    value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value > MAX_SIZE:
        raise QuotaRuleError(f"size too large: {text!r}")
    return value


def format_size(octets: int) -> str:
    """The largest unit that says `octets` exactly: 1073741824 -> `1G`, 1000 -> `1000b`."""
    for unit in ("T", "G", "M", "k"):
        factor = _UNITS[unit.upper()]
        if octets and octets % factor == 0:
            return f"{octets // factor}{unit}"
    return f"{octets}b"


def extra_fields(extra: tuple[str, ...]) -> list[str]:
    """The key=value extra fields of a user line's fields after the hash."""
    if len(extra) <= _FIXED:
        return []
    return ":".join(extra[_FIXED:]).split()


def limits_of(extra: tuple[str, ...]) -> QuotaLimits:
    """The quota of a user line (fields after the hash); unreadable rules are skipped
    (check-config names them: `rule_problems`)."""
    storage: int | None = None
    messages: int | None = None
    for field in extra_fields(extra):
        key, _, value = field.partition("=")
        if not RULE_KEY.match(key):
            continue
        try:
            found = _parse_rule(value)
        except QuotaRuleError:
            continue
        if found is None:
            continue
        if found[0] == "storage":
            storage = found[1] or None
        else:
            messages = found[1] or None
    return QuotaLimits(storage=storage, messages=messages)


def rule_problem(extra: tuple[str, ...]) -> str | None:
    """What is wrong with a user line's quota rules (for check-config), or None."""
    for field in extra_fields(extra):
        key, _, value = field.partition("=")
        if RULE_KEY.match(key):
            try:
                _parse_rule(value)
            except QuotaRuleError as e:
                return f"{key}: {e}; no limit applies"
    return None


def _parse_rule(rule: str) -> tuple[str, int] | None:
    """`*:storage=1G` -> ("storage", 1073741824); None for rules we leave to Dovecot."""
    mailbox, _, spec = rule.partition(":")
    if mailbox != "*":
        return None
    name, _, value = spec.partition("=")
    name = name.lower()
    if name in ("storage", "bytes"):
        if value.startswith("+") or value.endswith("%"):
            return None
        # bytes= is Dovecot's older name, in octets.
        return "storage", (parse_size(value) if name == "storage" else parse_size(value + "b"))
    if name == "messages":
        if not value.isdigit() or len(value) > 19:
            raise QuotaRuleError(f"not a count: {value!r}")
        return "messages", int(value)
    return None


def with_limits(extra: tuple[str, ...], storage: int | None, messages: int | None) -> tuple[str, ...]:
    """The fields after the hash with the quota rules replaced: `storage` / `messages`
    None keep the current value, 0 removes the limit. Other extra fields stay."""
    current = limits_of(extra)
    storage = current.storage if storage is None else storage
    messages = current.messages if messages is None else messages
    kept = [f for f in extra_fields(extra) if not RULE_KEY.match(f.partition("=")[0])]
    rules = []
    if storage:
        rules.append(f"*:storage={format_size(storage)}")
    if messages:
        rules.append(f"*:messages={messages}")
    for i, rule in enumerate(rules):
        kept.append(f"userdb_quota_rule{i + 1 if i else ''}={rule}")
    if not kept:
        # No extra fields left: nor the empty fields that only led up to them.
        fixed = list(extra[:_FIXED])
        while fixed and not fixed[-1]:
            fixed.pop()
        return tuple(fixed)
    return (*extra[:_FIXED], *("",) * (_FIXED - len(extra[:_FIXED])), " ".join(kept))
