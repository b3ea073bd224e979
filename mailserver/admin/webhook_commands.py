"""`mailserver webhook list [--pending|--failed] | show ID | retry ID|--all-failed`.

They read and move the files under data_dir/webhooks/ (webhooks/spool.py) directly, so
they need no running server: `retry` moves a given-up record from failed/ back to
pending/, due now with a fresh retry period, and the running dispatcher picks it up at
its next look (within a second). Exit codes as every command (CONTRACT.md): 0 done, 1
refused (no such event, nothing to retry), 2 usage.
"""

from __future__ import annotations

import json
import time

from mailserver.admin.commands import Admin, Refused
from mailserver.logs import CONTROLS
from mailserver.webhooks.hooks import HookStore
from mailserver.webhooks.spool import FAILED, PENDING, Record, WebhookSpool, is_record_id


def _spool(admin: Admin, writing: bool = False) -> WebhookSpool:
    return WebhookSpool(admin.config.data_dir / "webhooks",
                        admin.writing() if writing else None)


def _printable(text: str) -> str:
    """Errors quote what receivers answered: control characters become "?"."""
    return CONTROLS.sub("?", text)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _records(spool: WebhookSpool, where: str) -> list[Record]:
    found = []
    for record_id in spool.ids(where):
        try:
            found.append(spool.load(record_id, where))
        except (FileNotFoundError, ValueError):
            continue  # delivered meanwhile, or unreadable (the server log says so)
    return found


def webhook_list(admin: Admin, which: str | None) -> None:
    """Pending and failed events, oldest first (`which`: only "pending" or "failed")."""
    spool = _spool(admin)
    hooks = HookStore(spool.root, admin.config)
    shown = 0
    for where in (PENDING, FAILED):
        if which not in (None, where):
            continue
        for record in _records(spool, where):
            if not shown:
                admin.say(f"{'ID':<30} {'STATE':<8} {'TYPE':<13} {'TRIES':>5}  URL")
            shown += 1
            hook = hooks.find(record.hook)
            admin.say(f"{record.id:<30} {where:<8} {record.type:<13} {record.attempts:>5}"
                      f"  {hook.url if hook else '(deleted hook ' + record.hook + ')'}")
            problem = record.gave_up or record.last_error
            if problem:
                admin.say(f"    ({_printable(problem)})")
    if not shown:
        admin.say("webhook list: no " + (f"{which} " if which else "") + "webhook events")
        return
    admin.say(f"-- {shown} events")


def webhook_show(admin: Admin, record_id: str) -> None:
    spool = _spool(admin)
    found = spool.find(record_id) if is_record_id(record_id) else None
    if found is None:
        raise Refused(f"no webhook event {record_id!r} (delivered, or never there)")
    record, where = found
    hook = HookStore(spool.root, admin.config).find(record.hook)
    admin.say(f"id:         {record.id}")
    admin.say(f"state:      {where}")
    admin.say(f"type:       {record.type}")
    admin.say(f"hook:       {record.hook} {hook.url if hook else '(deleted)'}")
    admin.say(f"created:    {_when(record.created)}")
    admin.say(f"attempts:   {record.attempts}")
    if where == PENDING and record.attempts:
        admin.say(f"next try:   {_when(record.next_try)}")
    if record.last_error:
        admin.say(f"last error: {_printable(record.last_error)}")
    if record.gave_up:
        admin.say(f"gave up:    {_printable(record.gave_up)}")
    payload = dict(record.payload)
    data = dict(payload.get("data") or {})
    if "raw" in data:  # the message itself: its size, not its bytes
        data["raw"] = f"({len(data['raw'])} characters of base64)"
    payload["data"] = data
    for line in json.dumps(payload, indent=1, ensure_ascii=False).splitlines():
        admin.say(_printable(line))


def webhook_retry(admin: Admin, record_id: str | None) -> None:
    """One failed event (or every one) back to pending/, due now."""
    spool = _spool(admin, writing=True)
    if record_id is not None:
        if not is_record_id(record_id) or not spool.retry(record_id, time.time()):
            raise Refused(f"no failed webhook event {record_id!r}")
        admin.say(f"webhook retry: {record_id} will be sent again")
        return
    ids = spool.ids(FAILED)
    moved = sum(spool.retry(i, time.time()) for i in ids)
    if not moved:
        raise Refused("no failed webhook events")
    admin.say(f"webhook retry: {moved} events will be sent again")
