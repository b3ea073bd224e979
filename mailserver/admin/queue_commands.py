"""`mailserver queue list|show|flush|delete`: the relay queue, for people.

They work on the files under data_dir/queue/ directly (mailserver/queue/spool.py), so
they need no running server and are safe while one runs: `delete` removes the envelope
under the spool's lock, which the scheduler also takes before writing an envelope back,
so a deleted entry never reappears. `flush` creates the trigger file queue/flush; the
running scheduler sees it (inotify, else within a second), removes it and retries every
deferred recipient at once. With no server running, `flush` leaves the trigger for the
next start and says so (exit 1: nothing was retried).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from mailserver.admin.commands import Admin, Refused
from mailserver.core.ownfiles import give_fd, open_nofollow
from mailserver.core.running import running_server
from mailserver.logs import CONTROLS
from mailserver.queue.envelope import PENDING, QueueEntry, age_text, is_queue_id
from mailserver.queue.spool import EntryGone, Spool


def _printable(text: str) -> str:
    """Reply texts come from remote servers and headers from anyone who sends mail:
    control characters become "?" (logs.CONTROLS), whole texts are shown."""
    return CONTROLS.sub("?", text)


def _spool(admin: Admin, writing: bool = False) -> Spool:
    return Spool(admin.config.queue_dir, admin.writing() if writing else None)


def _entries(spool: Spool) -> list[tuple[QueueEntry, str]]:
    found = []
    for queue_id in sorted(set(spool.ids()) | set(spool.held_ids())):
        try:
            found.append(spool.load_any(queue_id))
        except (EntryGone, ValueError):
            continue  # finished or deleted meanwhile, or corrupt (start-up reports it)
    return found


def queue_list(admin: Admin) -> None:
    """One block per message, like Postfix's mailq."""
    entries = _entries(_spool(admin))
    if not entries:
        admin.say("queue list: the queue is empty")
        _say_corrupt(admin, _spool(admin))
        return
    now = time.time()
    admin.say(f"{'ID':<17} {'AGE':>8} {'SIZE':>9}  SENDER")
    for entry, where in entries:
        admin.say(f"{entry.id:<17} {age_text(now - entry.created):>8} {entry.size:>9}  "
                  f"<{entry.sender}>" + ("  (being queued)" if where == "held" else ""))
        for r in entry.recipients:
            line = f"    {r.state:<9} <{r.address}>"
            if r.state == PENDING and r.attempts:
                line += f"  next try in {age_text(r.next_try - now)}"
            admin.say(line)
            if r.last_error and r.state != "delivered":
                admin.say(f"              ({_printable(r.last_error)})")
    total = sum(len(e.pending()) for e, _ in entries)
    admin.say(f"-- {len(entries)} messages, {total} recipients pending")
    _say_corrupt(admin, _spool(admin))


def _say_corrupt(admin: Admin, spool: Spool) -> None:
    """Envelopes set aside (unreadable, or their message file gone) are never sent:
    say so, or they would only ever show up in the log."""
    try:
        count = len(os.listdir(spool.corrupt))
    except OSError:
        return
    if count:
        admin.say(f"-- {count} entries set aside in {spool.corrupt} (never sent; "
                  "see the server log for why)")


def queue_show(admin: Admin, queue_id: str) -> None:
    spool = _spool(admin)
    entry = _load(spool, queue_id)
    now = time.time()
    admin.say(f"id:        {entry.id}")
    admin.say(f"arrived:   {_when(entry.created)} ({age_text(now - entry.created)} ago)")
    admin.say(f"sender:    <{entry.sender}>")
    if entry.submitter:
        admin.say(f"submitter: {entry.submitter}")
    admin.say(f"size:      {entry.size} bytes")
    flags = [f for f, on in (("SMTPUTF8", entry.smtputf8), ("8BITMIME", entry.body_8bit),
                             ("REQUIRETLS", entry.requiretls)) if on]
    if flags:
        admin.say(f"needs:     {' '.join(flags)}")
    if entry.ret or entry.envid:  # RFC 3461 4.3, 4.4
        admin.say("dsn:       " + " ".join(
            ([f"RET={entry.ret}"] if entry.ret else [])
            + ([f"ENVID={_printable(entry.envid)}"] if entry.envid else [])))
    for r in entry.recipients:
        admin.say(f"recipient: <{r.address}>")
        admin.say(f"  state:      {r.state}")
        admin.say(f"  attempts:   {r.attempts}")
        if r.notify or r.orcpt_type:  # RFC 3461 4.1, 4.2
            admin.say("  dsn:        " + " ".join(
                ([f"NOTIFY={','.join(r.notify)}"] if r.notify else [])
                + ([f"ORCPT={r.orcpt_type};{_printable(r.orcpt)}"] if r.orcpt_type else [])))
        if r.last_error:
            admin.say(f"  last error: {_printable(r.last_error)}"
                      + (f" [{_printable(r.status)}]" if r.status else ""))
        if r.remote:
            admin.say(f"  remote:     {_printable(r.remote)}")
        if r.tls:
            admin.say(f"  tls:        {_printable(r.tls)}")
        if r.state == PENDING:
            admin.say(f"  next try:   {_when(r.next_try)}" +
                      (" (now)" if r.next_try <= now else
                       f" (in {age_text(r.next_try - now)})"))
    headers = _headers(spool, entry.id)
    if headers:
        admin.say("headers:")
        for line in headers:
            admin.say(f"  {line}")


def queue_flush(admin: Admin) -> None:
    spool = _spool(admin, writing=True)
    if not spool.root.is_dir():
        admin.say("queue flush: the queue is empty")
        return
    fd = open_nofollow(spool.flush_trigger, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        give_fd(fd, spool.owner)
    finally:
        os.close(fd)
    pending = sum(len(e.pending()) for e, _ in _entries(spool))
    run_dir = admin.config.data_dir / "run"
    if running_server(run_dir) is None:
        raise Refused(f"no server is running on {admin.config.data_dir}: the trigger "
                      f"{spool.flush_trigger} stays, and the server retries the {pending} "
                      "pending recipients when it starts")
    admin.say(f"queue flush: asked the running server to retry {pending} pending "
              "recipients now")


def queue_delete(admin: Admin, queue_id: str) -> None:
    spool = _spool(admin, writing=True)
    entry = _load(spool, queue_id)
    if not spool.delete(entry.id):
        raise Refused(f"{queue_id}: not in the queue (delivered or deleted meanwhile)")
    admin.say(f"queue delete: {entry.id} deleted (from <{entry.sender}>, "
              f"{len(entry.pending())} recipients were pending; no bounce is sent)")


def _load(spool: Spool, queue_id: str) -> QueueEntry:
    queue_id = queue_id.strip().upper()
    if not is_queue_id(queue_id):
        raise Refused(f"{queue_id!r} is not a queue id (see `mailserver queue list`)")
    try:
        return spool.load_any(queue_id)[0]
    except EntryGone:
        raise Refused(f"{queue_id}: no such message in the queue") from None
    except ValueError as e:
        raise Refused(f"{queue_id}: unreadable envelope: {e}") from None


def _headers(spool: Spool, queue_id: str) -> list[str]:
    """A few headers of the message, to recognise it (never the body)."""
    try:
        with open(spool.messages / queue_id, "rb") as f:
            head = f.read(16384)
    except OSError:
        return []
    wanted = ("from:", "to:", "subject:", "date:", "message-id:")
    lines = head.split(b"\n\n", 1)[0].decode("utf-8", "replace").split("\n")
    return [_printable(line[:200]) for line in lines if line.lower().startswith(wanted)]


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
