"""POST /api/v1/send, then the queue delivers before anything else runs: GET
/api/v1/queue/ID must still say "delivered".

The queue may act on a message the moment the router releases its copy; its
"delivered" event goes to the API's state listener (api/states.py), which keeps states
only of messages it has a record of. The record is therefore written before the release
(interfaces.IQueueReleaseStep); written after it, as before, the event found no record
and the recipient read "unknown" for good. Here the release itself publishes the event,
synchronously: the worst ordering the real scheduler could produce.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fakes import Events, FakeTarget, FakeTransaction
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.test.requesthelper import DummyRequest

from mailserver.api import send as api_send
from mailserver.api.resource import ApiCall, ApiError, Principal
from mailserver.api.sentdb import sent_db
from mailserver.api.sentrecorder import recorder_for
from mailserver.api.states import ApiStates
from mailserver.auth.directory import RecipientDirectory
from mailserver.config import config_from_dict
from mailserver.core.context import ServerContext
from mailserver.delivery.router import DeliveryRouter
from mailserver.events import DELIVERED, DeliveryEvent

QUEUE_ID = "0123456789ABCDEF"
ALICE = Principal("alice@example.org", frozenset({"all"}), "token:t")


class DeliveringQueue(FakeTarget):
    """The relay queue, delivering each message the moment it is released."""

    def __init__(self, states: ApiStates, events: Events) -> None:
        super().__init__("queue", events, hold=False, commit_result=QUEUE_ID)
        self.states = states

    def begin(self, request: Any) -> FakeTransaction:
        queue = self

        class Delivered(FakeTransaction):
            def release(self) -> None:
                super().release()
                queue.states.publish([DeliveryEvent(
                    DELIVERED, QUEUE_ID, "alice@example.org", "bob@remote.test",
                    time.time(), status="2.0.0", diagnostic="250 2.0.0 Ok: queued as X",
                    remote="mx.remote.test", attempts=1)])
                self.target.events.append("queue.delivered")

        self.transactions.append(Delivered(self, request))
        return self.transactions[-1]


class Reads:
    """context.disk.reads, run at once."""

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        return defer.maybeDeferred(fn, *args)


class Disk:
    reads = Reads()


def _context(tmp_path: Path, events: Events, fail_record: bool = False,
             ) -> tuple[ServerContext, DeliveringQueue]:
    config = config_from_dict({"hostname": "mx.example.org",
                               "data_dir": str(tmp_path / "data"),
                               "domains": {"local": ["example.org"]}})
    config.data_dir.mkdir(parents=True)
    config.users_file.write_text("alice@example.org:{PLAIN}pw\n")
    config.aliases_file.write_text("")
    directory = RecipientDirectory(config)
    db = sent_db(config.data_dir)
    queue = DeliveringQueue(ApiStates(db), events)
    router = DeliveryRouter(config, directory, FakeTarget("local", events, hold=False), queue)

    def run_now(fn: Any, *args: Any) -> Deferred[Any]:
        if fail_record and fn == db.record_sent_many:
            return defer.fail(OSError(28, "No space left on device"))
        events.append("api.recorded" if fn == db.record_sent_many else "api.call")
        return defer.maybeDeferred(fn, *args)

    recorder_for(db)._run = run_now  # the recorder's own thread, run at once
    context = ServerContext(config=config, directory=directory, portal=None,  # type: ignore[arg-type]
                            target=router, disk=Disk(), tls=None,  # type: ignore[arg-type]
                            mailboxes=None)  # type: ignore[arg-type]
    return context, queue


def _call(context: ServerContext, body: bytes = b"", queue_id: str = "") -> ApiCall:
    request = DummyRequest([b"send"])
    request.client = IPv4Address("TCP", "127.0.0.1", 40000)
    request.isSecure = lambda: True  # type: ignore[method-assign]
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    return ApiCall(context, request, ALICE, {"id": queue_id} if queue_id else {}, body)


def _now(coroutine: Any) -> Any:
    """The result of a coroutine that completes without the reactor (every fake here
    answers at once)."""
    result: list[Any] = []
    ensureDeferred(coroutine).addBoth(result.append)
    assert result, "the route waited for something"
    if hasattr(result[0], "raiseException"):
        result[0].raiseException()
    return result[0]


MESSAGE = (b'{"from": "alice@example.org", "to": ["bob@remote.test"], '
           b'"subject": "race", "text": "delivered at once"}')


def test_a_delivery_before_the_answer_is_recorded(tmp_path: Path) -> None:
    events = Events()
    context, _ = _context(tmp_path, events)
    answer = _now(api_send.send(_call(context, MESSAGE)))
    assert (answer.status, answer.body["queue_id"]) == (202, QUEUE_ID)
    assert "queue.delivered" in events
    state = _now(api_send.queue_state(_call(context, queue_id=QUEUE_ID)))
    assert state.status == 200
    assert state.body["recipients"] == [{
        "address": "bob@remote.test", "state": "delivered", "attempts": 1,
        "status": "2.0.0", "diagnostic": "250 2.0.0 Ok: queued as X",
        "remote": "mx.remote.test"}]
    assert events.index("api.recorded") < events.index("queue.release"), events


def test_a_record_that_cannot_be_written_sends_nothing(tmp_path: Path) -> None:
    """The record fails (disk full) after the queue copy was committed: every copy is
    aborted before the queue sees it, and the client is told to try again."""
    events = Events()
    context, queue = _context(tmp_path, events, fail_record=True)
    with pytest.raises(ApiError) as refused:
        _now(api_send.send(_call(context, MESSAGE)))
    assert (refused.value.status, refused.value.code, refused.value.smtp) == (
        503, "try_again", "4.3.0")
    assert queue.transactions[0].aborted
    assert "queue.release" not in events and "queue.delivered" not in events
