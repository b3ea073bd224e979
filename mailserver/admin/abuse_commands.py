"""`mailserver ban list|add|del` and `mailserver user quota`: the abuse control's state,
seen and changed while the server runs (the same shared table file it uses,
docs/decisions/0012; the sending limits file it re-reads, auth/sending_limits.py)."""

from __future__ import annotations

import ipaddress
import time

from mailserver.abuse.control import AbuseControl, lockouts, open_table
from mailserver.admin.commands import Admin, Refused
from mailserver.admin.quota_commands import storage_quota
from mailserver.auth.names import InvalidAddress, address_key
from mailserver.auth.sending_limits import SendingLimits


def _control(admin: Admin) -> AbuseControl:
    admin.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return AbuseControl(admin.config, open_table(admin.config))


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Refused(f"not an IP address: {text!r}") from None


def _when(until: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(until))


def ban_list(admin: Admin) -> None:
    found = lockouts(_control(admin).table)
    if not found:
        admin.say("no address is locked out")
    for address, until, _failures in found:
        admin.say(f"{address}  until {_when(until)}  ({until - int(time.time())} s left)")


def ban_add(admin: Admin, text: str, seconds: int | None) -> None:
    address = _address(text)
    control = _control(admin)
    until = control.ban(address, seconds if seconds else admin.config.abuse.lockout)
    admin.say(f"ban add: {address} locked out until {_when(until)}")


def ban_del(admin: Admin, text: str) -> None:
    address = _address(text)
    if not _control(admin).unban(address):
        raise Refused(f"{address} is not locked out")
    admin.say(f"ban del: {address} may log in again")


def user_quota(admin: Admin, address: str, messages_per_hour: int | None,
               recipients_per_day: int | None, storage: str | None = None,
               stored_messages: int | None = None) -> None:
    try:
        key = address_key(address)
    except InvalidAddress as e:
        raise Refused(str(e)) from None
    limits_file = SendingLimits(admin.config)
    if messages_per_hour is not None or recipients_per_day is not None:
        now = limits_file.limits(key)
        limits_file.set(key, now.messages_per_hour if messages_per_hour is None
                        else messages_per_hour,
                        now.recipients_per_day if recipients_per_day is None
                        else recipients_per_day)
        admin.say(f"user quota: limits of {key} set")
    limits = limits_file.limits(key)
    messages, recipients = _control(admin).usage(key)
    admin.say(f"{key} (limits from {limits.source}, 0 = none):")
    admin.say(f"  messages this hour:   {round(messages)} of {limits.messages_per_hour}")
    admin.say(f"  recipients today:     {round(recipients)} of {limits.recipients_per_day}")
    storage_quota(admin, key, storage, stored_messages)
