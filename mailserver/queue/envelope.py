"""A queue entry's envelope: the sender and the state of every recipient, as JSON.

One envelope file per message, with one record per recipient (OpenSMTPD keeps one
envelope per recipient; Stalwart a typed status per recipient): partial success is the
normal case (three recipients, one 550), so each recipient carries its own state,
attempt count, last error and next try. JSON rather than pickle, so that an operator
(and `mailserver queue show`) can read it and a corrupt file cannot run code.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

#: Recipient states (Stalwart's scheduled / delivered / perm_fail; a temporary
#: failure is just PENDING with a later next_try).
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATES = (PENDING, DELIVERED, FAILED)

FORMAT_VERSION = 1


def new_queue_id() -> str:
    """A short, unique, file-name-safe id that sorts by creation time (like Postfix's
    long queue ids): 9 hex digits of microseconds-ish time + 7 random hex digits."""
    return f"{int(time.time() * 16) & 0xFFFFFFFFF:09X}{secrets.token_hex(4)[:7].upper()}"


def is_queue_id(text: str) -> bool:
    return 8 <= len(text) <= 32 and all(c in "0123456789ABCDEF" for c in text)


@dataclass
class RecipientState:
    address: str
    state: str = PENDING
    attempts: int = 0
    #: The last reply or reason, as a person reads it ("550 5.1.1 no such user").
    last_error: str = ""
    #: RFC 3463 status of the last outcome (for the DSN), "" before any attempt.
    status: str = ""
    #: The remote host that gave `last_error` ("mx.example.net[192.0.2.1]").
    remote: str = ""
    #: Seconds since the epoch of the next attempt (PENDING only).
    next_try: float = 0.0
    #: A failure DSN has been queued (or none is due: null sender): done with it.
    bounced: bool = False
    #: A delay warning has been sent.
    warned: bool = False
    #: DSN (RFC 3461 4.1, 4.2): NOTIFY as given ([] when not given: failures and delays
    #: are reported), the ORCPT's type ("rfc822", "utf-8"; "" when none) and address.
    notify: list[str] = field(default_factory=list)
    orcpt_type: str = ""
    orcpt: str = ""
    #: A success report is due (NOTIFY=SUCCESS): its Action, "delivered" (our own
    #: mailbox) or "relayed" (a peer without DSN, RFC 3461 5.2.2); "" when none.
    report: str = ""
    #: TLS of the last session with `remote`: "dane", "mta-sts" (verified),
    #: "opportunistic" or "none" (queue/outtls.py); "" before any.
    tls: str = ""

    def wants(self, event: str) -> bool:
        """Is a DSN wanted for `event` (SUCCESS, DELAY, FAILURE)? RFC 3461 4.1: without
        NOTIFY, failures (and delays, at our choice: we send them); NEVER: nothing."""
        if not self.notify:
            return event in ("FAILURE", "DELAY")
        return event in self.notify


@dataclass
class QueueEntry:
    id: str
    sender: str
    recipients: list[RecipientState]
    created: float = field(default_factory=time.time)
    smtputf8: bool = False
    body_8bit: bool = False
    submitter: str = ""
    #: Message size in bytes as stored (LF line ends).
    size: int = 0
    #: DSN (RFC 3461 4.3, 4.4): RET ("FULL", "HDRS", "" not given), the decoded ENVID.
    ret: str = ""
    envid: str = ""
    #: MAIL had REQUIRETLS (RFC 8689): relay only over verified TLS, else bounce.
    requiretls: bool = False

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == PENDING]

    def due(self, now: float) -> list[RecipientState]:
        return [r for r in self.pending() if r.next_try <= now]

    def unbounced_failures(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == FAILED and not r.bounced]

    def next_try(self) -> float | None:
        times = [r.next_try for r in self.pending()]
        return min(times) if times else None

    @property
    def finished(self) -> bool:
        """Nothing left to do: every recipient delivered, or failed and bounced, and no
        success report left to send."""
        return not self.pending() and not self.unbounced_failures() and not any(
            r.report for r in self.recipients)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["version"] = FORMAT_VERSION
        return json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> QueueEntry:
        """Parse an envelope file; ValueError for anything that is not one of ours."""
        try:
            data: dict[str, Any] = json.loads(raw.decode("utf-8"))
            if data.pop("version", None) != FORMAT_VERSION:
                raise ValueError("unknown envelope format version")
            recipients = [RecipientState(**r) for r in data.pop("recipients")]
            entry = cls(recipients=recipients, **data)
        except (UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a queue envelope: {e}") from None
        if not is_queue_id(entry.id) or not isinstance(entry.sender, str) or any(
                r.state not in STATES or not isinstance(r.notify, list)
                for r in entry.recipients):
            raise ValueError("not a queue envelope: bad id, sender or state")
        return entry


def age_text(seconds: float) -> str:
    """"3d 4h", "12m 5s": how long something has been waiting, for people."""
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])
