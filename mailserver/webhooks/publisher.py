"""DeliveryEvents in, spooled webhook records out: the webhooks' events.IDeliveryEvents.

Called in a disk thread by whoever publishes (the queue before it forgets a recipient,
the local delivery before its 250); returns once every record is in pending/, so the
publisher's durability contract holds (events.py).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from zope.interface import implementer

from mailserver.config import Config
from mailserver.events import RECEIVED, DeliveryEvent, IDeliveryEvents
from mailserver.logs import logger
from mailserver.webhooks.hooks import Hook, HookStore
from mailserver.webhooks.spool import Record, WebhookSpool, new_id

log = logger(__name__)


def iso_time(when: float) -> str:
    """RFC 3339 UTC with milliseconds, as the payloads carry time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
        f".{int(when * 1000) % 1000:03d}Z"


def fetch_link(hostname: str, event: DeliveryEvent) -> str:
    """Where the API serves the stored message (api-mailbox's ?name= lookup)."""
    folder = quote(event.folder or "INBOX", safe="")
    return (f"https://{hostname}/api/v1/folders/{folder}/messages"
            f"?name={quote(event.stored_as, safe='')}")


def event_data(event: DeliveryEvent) -> dict[str, Any]:
    """The payload's "data": what a receiver needs, nothing of our internals."""
    data: dict[str, Any] = {"queue_id": event.queue_id, "message_id": event.message_id,
                            "sender": event.sender, "recipient": event.recipient}
    if event.kind == RECEIVED:
        data.update(mailbox=event.mailbox, folder=event.folder or "INBOX",
                    size=event.size, stored_as=event.stored_as)
    else:
        data.update(submitter=event.submitter, status=event.status,
                    diagnostic=event.diagnostic, remote=event.remote,
                    attempts=event.attempts)
    return data


@implementer(IDeliveryEvents)
class WebhookPublisher:
    def __init__(self, config: Config, hooks: HookStore, spool: WebhookSpool) -> None:
        self.config = config
        self.hooks = hooks
        self.spool = spool
        #: Called (in the disk thread) with the records once written: the dispatcher of
        #: this process, when there is one, takes them at once instead of at its next poll.
        self.written: Callable[[list[Record]], None] | None = None

    def publish(self, events: Sequence[DeliveryEvent]) -> None:
        records: list[Record] = []
        for event in events:
            hooks = self.hooks.for_event(event)
            if not hooks:
                continue
            raw: list[bytes | None] = []
            for hook in hooks:
                records.append(self._record(event, hook, raw))
        if records:
            self.spool.write(records)
            if self.written is not None:
                self.written(records)

    def _record(self, event: DeliveryEvent, hook: Hook, raw: list[bytes | None]) -> Record:
        record_id = new_id()
        data = event_data(event)
        if event.kind == RECEIVED:
            content = None
            if event.size <= hook.raw_limit:
                if not raw:
                    raw.append(_read(event.extra.get("path", "")))
                content = raw[0]
            if content is not None:
                data["raw"] = base64.b64encode(content).decode("ascii")
            else:
                data["fetch"] = fetch_link(self.config.hostname, event)
        payload = {"id": record_id, "type": event.kind, "time": iso_time(event.time),
                   "data": data}
        return Record(record_id, hook.id, f"{hook.id}/{event.queue_id}", event.kind,
                      time.time(), payload, next_try=0.0)


def _read(path: str) -> bytes | None:
    """The stored message, if it is still in new/ (a client may have moved it to cur/
    already: then it is looked for there; gone: the fetch link instead)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("webhooks: cannot read {path}: {e}", path=path, e=str(e))
        return None
    head, _, name = path.rpartition("/new/")
    try:
        for found in os.listdir(head + "/cur"):
            if found.split(":", 1)[0] == name:
                with open(f"{head}/cur/{found}", "rb") as f:
                    return f.read()
    except OSError:
        pass
    return None
