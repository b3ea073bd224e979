"""`mailserver user quota ADDRESS [--storage SIZE] [--messages N]`: a user's storage
quota (RFC 9208's STORAGE and MESSAGE), kept in the users file (auth/quota_rules.py),
and what their mail takes now (store/quota.py's count)."""

from __future__ import annotations

from mailserver.admin.commands import Admin, Refused
from mailserver.auth.quota_rules import QuotaRuleError, format_size, limits_of, parse_size
from mailserver.auth.userfile import EditRefused
from mailserver.interfaces import QuotaUsage
from mailserver.store import quota
from mailserver.store.maildir import mailbox_path


def storage_quota(admin: Admin, key: str, storage: str | None, messages: int | None) -> None:
    """Show (and with --storage / --messages set; 0 removes a limit) a user's quota."""
    users = admin.directory.users_file
    entry = users.get(key)
    if entry is None:
        if storage is None and messages is None:
            return  # sending limits may name a sender that has no mailbox here
        raise Refused(f"{key}: no such user")
    if storage is not None or messages is not None:
        try:
            octets = None if storage is None else parse_size(storage)
        except QuotaRuleError as e:
            raise Refused(f"--storage: {e}") from None
        if messages is not None and messages < 0:
            raise Refused("--messages: a count, 0 for no limit")
        admin.writing()
        try:
            users.set_quota(key, octets, messages)
        except EditRefused as e:
            raise Refused(str(e)) from None
        admin.say(f"user quota: storage quota of {key} set")
        entry = users.get(key)
        assert entry is not None
    limits = limits_of(entry.extra)
    root = mailbox_path(admin.config.mail_dir, admin.directory.mailbox_id(key))
    # Read only: a count made here could belong to root, and the server must write it.
    usage = (quota.peek(root) or quota.scan(root)) if root.is_dir() else QuotaUsage()
    storage_limit = "no limit" if limits.storage is None else format_size(limits.storage)
    message_limit = "no limit" if limits.messages is None else str(limits.messages)
    admin.say(f"  storage:              {format_size(usage.storage)} of {storage_limit}")
    admin.say(f"  messages stored:      {usage.messages} of {message_limit}")
