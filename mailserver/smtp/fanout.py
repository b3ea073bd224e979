"""One message to local mailboxes and to the outbound queue at once, all or nothing.

A submitted message (or a forwarded one: an alias with remote targets) can have local
and remote recipients in the same transaction. Both copies get the same bytes; only the
local copy starts with Return-Path (RFC 5321 4.4: the final delivery adds it, a relay
must not). The 250 may only be sent once every copy is durable, and a failure of either
half must leave nothing behind that the client will send again, so commit() goes:

1. commit the queue copy: durable on disk, not yet scheduled (IQueueTransaction);
2. commit the local copies: visible in new/;
3. release the queue copy to the scheduler.

If 1 fails, the local copies are aborted (nothing was visible). If 2 fails, the queue
copy is aborted (it was never scheduled, so nothing goes out). Only a crash between 2
and 3 leaves a committed but unreleased queue entry; the queue treats such an entry as
pending on restart (its own contract), so nothing is lost and nothing is sent twice:
the client got no 250 and sends again, which is the duplicate RFC 5321 6.1 accepts
over a loss.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from mailserver.errors import ReplyError
from mailserver.interfaces import IDeliveryTransaction, IQueueTransaction
from mailserver.logs import logger

log = logger(__name__)


class MessageFanout:
    """The delivery transaction of one message: local copies, a queue copy, or both."""

    def __init__(self, local: IDeliveryTransaction | None,
                 queued: IQueueTransaction | None) -> None:
        if local is None and queued is None:
            raise ValueError("a message needs a local or a queued copy")
        self.local = local
        self.queued = queued
        self._released = False

    def write_local(self, data: bytes) -> None:
        """Bytes only the local copies get (Return-Path)."""
        if self.local is not None:
            self.local.write(data)

    def write(self, data: bytes) -> None:
        if self.local is not None:
            self.local.write(data)
        if self.queued is not None:
            self.queued.write(data)

    def commit(self) -> Deferred[str | None]:
        """Fires with the queue id (None without a queue copy) once every copy is durable
        and the queue copy is released; errbacks with ReplyError, leaving nothing."""
        return self._commit()

    @inlineCallbacks
    def _commit(self) -> Generator[Deferred[Any], Any, str | None]:
        queue_id: str | None = None
        if self.queued is not None:
            try:
                queue_id = yield self.queued.commit()
            except Exception:
                self.abort()
                raise
        if self.local is not None:
            try:
                yield self.local.commit()
            except Exception as e:
                self.abort()
                if isinstance(e, ReplyError):
                    raise
                raise ReplyError(451, "4.3.0", "Error: local delivery failed; try again "
                                 "later") from e
        if self.queued is not None:
            self._released = True
            try:
                self.queued.release()
            except Exception:
                # Durable and committed: the queue picks it up when it next scans.
                log.failure("release of queued message {id} failed", id=queue_id)
        return queue_id

    def abort(self) -> None:
        """Drop every copy that is not yet out of our hands; safe at any point."""
        if self.local is not None:
            self.local.abort()
        if self.queued is not None and not self._released:
            self.queued.abort()
