"""POST /api/v1/send and GET /api/v1/queue/{id} (issue 18): send a message as the
user, and follow what became of each recipient.

POST /send takes a structured message or a raw one (api/compose.py), submits it the
way SMTP submission does (api/submit.py) and answers
    {"message_id": "<...>", "queue_id": "...", "recipients": [{"address", "state"}]}
with 200 when every recipient was delivered locally, 202 when some are queued for
relay. Refusals are JSON errors with the SMTP reason in "smtp" (api/submit.py
http_status).

Idempotency (as Stripe's and Postmark's "idempotency keys"): with an
"idempotency_key", the first request with it sends and its answer is kept for 24 h
(api/sentdb.py: SQLite under data_dir, shared by all processes, fsync'd before the
answer goes out); the same key from the same user with the same body gets that answer
again (header Idempotent-Replayed: true) and sends nothing; with another body, 409. A
second request arriving while the first is still being sent waits for its answer (up
to WAIT_FOR_FIRST seconds, then 409 "in progress"). A refused request keeps no key:
after fixing what was wrong, the client may retry with the same one.

GET /queue/{id}: the id a send answered (or the queue id of a message the user
submitted over SMTP). While the message is in the relay queue its recipients' states
come from the queue's files (interfaces.IQueueStates); after, from what api/states.py
recorded of the delivery events. Another user's id, or one we never saw: 404.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from mailserver.api.compose import Composed, compose
from mailserver.api.jsonbody import parse_json
from mailserver.api.resource import ApiAnswer, ApiCall, ApiError, Route, is_json_type, route
from mailserver.api.sentdb import Claim, SentDb, sent_db
from mailserver.api.sentrecorder import recorder_for
from mailserver.api.submit import Submitted, Submitter
from mailserver.auth.sending_limits import SendingLimits
from mailserver.config import Config
from mailserver.interfaces import QueuedRecipient

#: Request bodies larger than this are parsed and built in a thread (JSON and base64
#: of a 10 MB message take ~100 ms of CPU: not on the reactor).
THREAD_ABOVE = 256 * 1024
#: Seconds a request waits for an earlier one with its idempotency key to finish.
WAIT_FOR_FIRST = 30.0
_POLL = 0.05

_LIMITS: dict[str, SendingLimits] = {}


def _limits(config: Config) -> SendingLimits:
    """One SendingLimits per data_dir (it re-reads the file when it changes)."""
    key = str(config.data_dir)
    found = _LIMITS.get(key)
    if found is None:
        found = _LIMITS[key] = SendingLimits(config)
    return found


def _compose(body: bytes, user: str, limit: int) -> tuple[Composed, str]:
    request = parse_json(body)
    # The body's meaning, whatever its key order or spacing: what a replay must match.
    try:
        canonical = json.dumps(request, sort_keys=True, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes decode to lone surrogates: no text, in any field.
        raise ApiError(400, "bad_json", "a string holds a lone surrogate (RFC 8259 8.2)"
                       ) from None
    composed = compose(request, user, limit)
    return composed, hashlib.sha256(canonical).hexdigest()


async def send(call: ApiCall) -> ApiAnswer:
    context = call.context
    user = call.principal.address
    limit = context.config.limits.recipients_per_message
    if not is_json_type(call.request.getHeader(b"content-type")):
        # As ApiCall.json() answers every other route (its parse runs in a thread here).
        raise ApiError(415, "unsupported_media_type", "send the body as "
                       "Content-Type: application/json", smtp="5.6.0")
    if len(call.body) > THREAD_ABOVE:
        composed, digest = await deferToThread(_compose, call.body, user, limit)
    else:
        composed, digest = _compose(call.body, user, limit)
    db = sent_db(context.config.data_dir)
    key = composed.idempotency_key
    if key is not None:
        claim = await _claim(call, db, user, key, digest)
        if claim.answer is not None:
            return ApiAnswer(claim.answer["status"], claim.answer["body"],
                             headers={"Idempotent-Replayed": "true"})
    request = call.request
    peer = str(getattr(request.getClientAddress(), "host", ""))

    async def record(submitted: Submitted) -> None:
        # Committed before the queue may deliver the message, so its delivery events
        # find the record, and so before the answer (api/sentrecorder.py: grouped, on
        # its own thread; not fsync'd: no fsync is added per message), with a key's
        # answer in the same commit, then made durable (sentdb.py): one write, not two.
        answer = _answer(submitted)
        await recorder_for(db).record(submitted.queue_id, user, submitted.message_id,
                                      [*((a, "delivered") for a, s in submitted.recipients
                                         if s == "delivered"),
                                       *((a, "queued") for a in submitted.remote)],
                                      None if key is None else (user, key, {
                                          "status": answer.status, "body": answer.body}))

    try:
        submitted = await Submitter(context, _limits(context.config)).submit(
            user, composed, peer, bool(request.isSecure()), record)
    except BaseException:
        if key is not None:
            await recorder_for(db).call(db.release, user, key)
        raise
    return _answer(submitted)


async def _claim(call: ApiCall, db: SentDb, user: str, key: str, digest: str) -> Claim:
    deadline = time.monotonic() + WAIT_FOR_FIRST
    while True:
        claim: Claim = await recorder_for(db).call(db.claim, user, key, digest)
        if claim.conflict:
            raise ApiError(409, "idempotency_conflict", "this idempotency_key was used "
                           "with a different request in the last 24 hours")
        if not claim.busy:
            return claim
        if time.monotonic() > deadline:
            raise ApiError(409, "idempotency_in_progress", "a request with this "
                           "idempotency_key is still being sent; ask again later",
                           headers={"Retry-After": "5"})
        await deferLater(reactor, _POLL, lambda: None)


def _answer(submitted: Submitted) -> ApiAnswer:
    queued = any(state == "queued" for _, state in submitted.recipients)
    return ApiAnswer(202 if queued else 200, {
        "message_id": submitted.message_id,
        "queue_id": submitted.queue_id,
        "recipients": [{"address": a, "state": s} for a, s in submitted.recipients],
    })


# -- GET /queue/{id} ---------------------------------------------------------------------

#: RFC 3464-like states of one recipient: not yet tried, tried and to be retried,
#: delivered, failed for good; "unknown" when the message left the queue and no event
#: said how (an operator removed it, or events are not published).
def _queue_state(r: QueuedRecipient) -> dict[str, Any]:
    state = r.state
    if state == "pending":
        state = "deferred" if r.attempts else "pending"
    out: dict[str, Any] = {"address": r.address, "state": state, "attempts": r.attempts}
    if r.status:
        out["status"] = r.status
    if r.last_error:
        out["diagnostic"] = r.last_error
    if r.remote:
        out["remote"] = r.remote
    if state in ("pending", "deferred") and r.next_try:
        out["next_try"] = _iso(r.next_try)
    return out


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


async def queue_state(call: ApiCall) -> ApiAnswer:
    context = call.context
    queue_id = call.params["id"]
    user = call.principal.address
    db = sent_db(context.config.data_dir)
    sent = await context.disk.reads.run(db.sent_by, queue_id)
    states = context.queue_states
    entry = await context.disk.reads.run(states.entry, queue_id) if states else None
    mine = (sent is not None and sent[0] == user) or (
        sent is None and entry is not None and entry[0].lower() == user.lower())
    if not mine:
        raise ApiError(404, "not_found", "no message with this id was sent by you")
    recorded = await context.disk.reads.run(db.states, queue_id) if sent else []
    rows: dict[str, dict[str, Any]] = {}
    for r in recorded:
        row: dict[str, Any] = {"address": r.address, "attempts": r.attempts,
                               "state": "unknown" if r.state == "queued" else r.state}
        for name in ("status", "diagnostic", "remote"):
            if getattr(r, name):
                row[name] = getattr(r, name)
        rows[r.address.lower()] = row
    for q in entry[1] if entry is not None else []:
        rows[q.address.lower()] = _queue_state(q)  # the queue's files are the newer
    return ApiAnswer(200, {"queue_id": queue_id, "message_id": sent[1] if sent else "",
                           "recipients": list(rows.values())})


ROUTES: list[Route] = [
    route("POST", r"send", "send", send),
    route("GET", r"queue/(?P<id>[A-Za-z0-9]{1,64})", "send", queue_state),
]
