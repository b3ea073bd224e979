"""Dovecot's passdb/userdb extra fields in the users file: which we honour, which not.

A passwd-file taken over from Dovecot (auth/userfile.py) may carry, after the hash,
uid:gid:gecos:home:shell and then space-separated `key=value` extra fields
(https://doc.dovecot.org/configuration_manual/authentication/passwd_file/). We honour:

- the quota rules (`userdb_quota_rule*`): auth/quota_rules.py;
- `nologin` and `deny` (passdb fields): the user cannot log in, by any protocol, with
  the same answer and delay as a wrong password; mail is still delivered, as in Dovecot.

Everything else is Dovecot's alone, and check-config names it once per line as a
warning, so an operator knows what did not move: the home and mail location (our
Maildirs are always data_dir/mail/DOMAIN/LOCALPART; `mailserver import dovecot`
brings a mailbox there), uid/gid (we run as one user), `allow_nets` (not enforced: a
login from any network is checked like any other), proxying and master users.
"""

from __future__ import annotations

from mailserver.auth.quota_rules import RULE_KEY, extra_fields

#: Extra fields that refuse every login when present and not set to a "no" value.
_DENYING = frozenset({"nologin", "deny", "passdb_nologin", "passdb_deny"})
_NO = frozenset({"n", "no", "0", "false", "off"})
#: Fields that are about the password check itself, harmless to ignore.
_HARMLESS = frozenset({"nopassword", "passdb_nopassword", "reason", "user", "userdb_user"})


def login_denied(extra: tuple[str, ...]) -> bool:
    """`nologin` or `deny` (bare, or =yes): Dovecot refuses the login."""
    for field in extra_fields(extra):
        key, eq, value = field.partition("=")
        if key.lower() in _DENYING and (not eq or value.lower() not in _NO):
            return True
    return False


def ignored_fields(extra: tuple[str, ...]) -> list[str]:
    """The fields of a user line that we do not honour (for check-config)."""
    ignored = []
    if len(extra) >= 4 and extra[3].strip():
        ignored.append(f"home {extra[3].strip()}")
    for field in extra_fields(extra):
        key = field.partition("=")[0]
        lower = key.lower()
        if RULE_KEY.match(key) or lower in _DENYING or lower in _HARMLESS:
            continue
        ignored.append(key)
    return ignored
