"""The server's side of `mailserver sendmail`: data_dir/maildrop/ to the delivery router.

Postfix's pickup, in small (admin/sendmail.py says why a maildrop directory): every
PICKUP_INTERVAL seconds a thread lists the directory; each complete file (no leading
dot) is read in a thread, its recipients are routed on the reactor as an authenticated
submission's are (so aliases, local mailboxes and the relay queue all apply), a Received
header is added and the message goes to the router's two-phase transaction (through the
submission listeners' message hook when there is one: DKIM signing, as for mail our
users submit over SMTP). Only after
commit is the file removed: a crash in between delivers twice rather than never (RFC
5321 6.1 prefers the duplicate).

A recipient the router refuses (an unknown local user) is logged with the reply; if no
recipient is left, the file moves to maildrop/refused/ for the operator (`mailserver
status` counts them) instead of vanishing. Only the twistd process picks up.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import task, threads
from twisted.internet.defer import inlineCallbacks

from mailserver.config import Config
from mailserver.core.trace import new_message_id
from mailserver.errors import ReplyError
from mailserver.interfaces import DeliveryEnvelope, IDeliveryRouter, IMessageHook, MailboxId
from mailserver.logs import logger

log = logger(__name__)

MAILDROP = "maildrop"
REFUSED = "refused"
#: Seconds between two looks at the maildrop directory.
PICKUP_INTERVAL = 1.0
#: Files picked up per look (bounded memory; the rest wait for the next look).
BATCH = 20


def _list(folder: Path) -> list[Path]:
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.is_file(follow_symlinks=False) and not e.name.startswith("."))
    except FileNotFoundError:
        return []
    return [folder / n for n in names[:BATCH]]


def _read(path: Path, limit: int) -> tuple[dict[str, Any], bytes]:
    """The envelope and the message; ValueError for a file that is not one of ours."""
    with open(path, "rb") as f:
        data = f.read(limit + 65536)
    head, sep, message = data.partition(b"\n")
    envelope = json.loads(head) if sep else None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("recipients"), list) \
            or not isinstance(envelope.get("sender"), str):
        raise ValueError("no envelope line")
    # The sender becomes a Return-Path header: no line breaks or controls, whoever
    # wrote the file (admin/sendmail.py checks as well).
    for address in [envelope["sender"], *envelope["recipients"]]:
        if not isinstance(address, str) or any(ord(c) < 33 or c in "<>" for c in address):
            raise ValueError(f"not an address: {address!r}")
    if not isinstance(envelope.get("uid"), int):
        envelope["uid"] = "?"
    if not isinstance(envelope.get("user"), str) or not envelope["user"].isprintable():
        envelope["user"] = "?"
    return envelope, message


def _set_aside(path: Path) -> None:
    folder = path.parent / REFUSED
    folder.mkdir(exist_ok=True, mode=0o700)
    os.replace(path, folder / path.name)


@dataclass(frozen=True)
class LocalSubmission:
    """What a message hook may read of the "session" (interfaces.IMessageHook.wrap) for
    a message handed over locally: no client address, no EHLO, no SMTP envelope."""

    session_id: str
    peer_ip: str = ""
    helo: str | None = None
    envelope: None = None


class PickupService(service.Service):
    """Polls data_dir/maildrop/ and delivers what it finds through `router`."""

    name = "pickup"

    def __init__(self, config: Config, router: IDeliveryRouter,
                 hook: IMessageHook | None = None) -> None:
        self.config = config
        self.router = router
        #: The submission listeners' hook (senderauth: DKIM signing); None: none.
        self.hook = hook
        self.folder = config.data_dir / MAILDROP
        self.loop = task.LoopingCall(self._look)
        self.busy = False

    def startService(self) -> None:
        service.Service.startService(self)
        self.loop.start(PICKUP_INTERVAL, now=True).addErrback(
            lambda f: log.failure("pickup stopped", f))

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.loop.running:
            self.loop.stop()

    @inlineCallbacks
    def _look(self) -> Generator[Any, Any, None]:
        if self.busy:
            return
        self.busy = True
        try:
            paths = yield threads.deferToThread(_list, self.folder)
            for path in paths:
                if not self.running:
                    break
                yield self._pick(path)
        finally:
            self.busy = False

    @inlineCallbacks
    def _pick(self, path: Path) -> Generator[Any, Any, None]:
        limit = self.config.limits.message_size
        try:
            envelope, message = yield threads.deferToThread(_read, path, limit)
        except (OSError, ValueError) as e:
            log.error("pickup: {file}: unreadable ({why}); set aside in {refused}",
                      file=path.name, why=str(e), refused=REFUSED)
            yield threads.deferToThread(_set_aside, path)
            return
        if len(message) > limit:
            log.error("pickup: {file}: larger than limits.message_size; set aside",
                      file=path.name)
            yield threads.deferToThread(_set_aside, path)
            return
        mailboxes: list[MailboxId] = []
        remote: list[str] = []
        for rcpt in envelope["recipients"]:
            try:
                found = self.router.route(str(rcpt), True)
            except ReplyError as e:
                log.error("pickup: {file}: <{rcpt}> refused: {reply}",
                          file=path.name, rcpt=rcpt, reply=str(e))
                continue
            mailboxes += [m for m in found.mailboxes if m not in mailboxes]
            remote += [r for r in found.remote if r not in remote]
        if not mailboxes and not remote:
            log.error("pickup: {file}: no recipient left; set aside in {refused}",
                      file=path.name, refused=REFUSED)
            yield threads.deferToThread(_set_aside, path)
            return
        queue_id = new_message_id()
        user = str(envelope.get("user", "?"))
        transaction = self.router.begin(DeliveryEnvelope(
            sender=envelope["sender"], mailboxes=tuple(mailboxes), remote=tuple(remote),
            body_8bit=any(b > 127 for b in message), submitter=user))
        held = None if self.hook is None else self.hook.wrap(
            transaction, LocalSubmission(f"pickup-{queue_id}"), envelope["sender"],
            mailboxes)
        if held is not None:
            transaction = held
        transaction.write(self._received(user, envelope, queue_id))
        if held is not None:
            held.hold()  # what follows is the content, held until signed
        transaction.write(message)
        try:
            yield transaction.commit()
        except Exception as e:
            transaction.abort()
            log.error("pickup: {file}: delivery failed ({why}); retried at the next look",
                      file=path.name, why=str(e))
            return
        yield threads.deferToThread(path.unlink)
        log.info("pickup: {id} from <{sender}> (local user {user}) to {n} recipient(s)",
                 id=queue_id, sender=envelope["sender"], user=user,
                 n=len(envelope["recipients"]))

    def _received(self, user: str, envelope: dict[str, Any], queue_id: str) -> bytes:
        """Postfix's pickup form: who handed it over locally, and when (RFC 5321 4.4)."""
        moment = datetime.datetime.now(datetime.UTC)
        uid = envelope.get("uid", "?")
        return (f"Received: by {self.config.hostname} (mailserver sendmail, from userid "
                f"{uid}) id {queue_id};\n\t{email.utils.format_datetime(moment)}\n"
                ).encode()
