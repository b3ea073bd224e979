"""api/sentdb.py, api/sentrecorder.py and api/states.py without a server: what an idempotency key claims
across processes and time, and the states kept from delivery events."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from mailserver.api.sentdb import KEY_LIFETIME, STALE, Claim, SentDb
from mailserver.api.sentrecorder import SentRecorder
from mailserver.api.states import ApiStates
from mailserver.events import DeliveryEvent


def test_a_key_is_claimed_once_then_answered_again(tmp_path: Path) -> None:
    db = SentDb(tmp_path / "sent.sqlite")
    assert db.claim("alice@example.org", "k", "d1", now=1000) == Claim(mine=True)
    assert db.claim("alice@example.org", "k", "d1", now=1001) == Claim(busy=True)
    assert db.claim("alice@example.org", "k", "d2", now=1001) == Claim(conflict=True)
    # Another user's key of the same name is another key.
    assert db.claim("bob@example.org", "k", "d2", now=1001) == Claim(mine=True)
    db.answered("alice@example.org", "k", {"status": 200, "body": {"queue_id": "Q"}})
    assert db.claim("alice@example.org", "k", "d1", now=1002) == Claim(
        answer={"status": 200, "body": {"queue_id": "Q"}})
    # A release after the answer changes nothing: the message went.
    db.release("alice@example.org", "k")
    assert db.claim("alice@example.org", "k", "d1", now=1003).answer is not None


def test_keys_expire_after_a_day_and_stale_claims_are_taken_over(tmp_path: Path) -> None:
    db = SentDb(tmp_path / "sent.sqlite")
    db.claim("a@x.org", "done", "d", now=1000)
    db.answered("a@x.org", "done", {"status": 200, "body": {}})
    assert db.claim("a@x.org", "done", "other", now=1000 + KEY_LIFETIME - 1).conflict
    assert db.claim("a@x.org", "done", "other", now=1001 + KEY_LIFETIME).mine
    db.claim("a@x.org", "died", "d", now=1000)
    assert db.claim("a@x.org", "died", "d", now=1000 + STALE - 1).busy
    assert db.claim("a@x.org", "died", "d", now=1001 + STALE).mine
    db.release("a@x.org", "died")
    assert db.claim("a@x.org", "died", "new body", now=2000).mine


def _claim_in_process(path: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(SentDb(Path(path)).claim("a@x.org", "shared", "d").mine)


def test_one_process_wins_a_key(tmp_path: Path) -> None:
    path = tmp_path / "sent.sqlite"
    SentDb(path).claim("a@x.org", "warm-up", "d")  # the schema exists before the race
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_claim_in_process, args=(str(path), out))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(out.get(timeout=5) for _ in procs) == [False] * 5 + [True]


def test_event_states_are_kept_for_api_messages_only(tmp_path: Path) -> None:
    db = SentDb(tmp_path / "sent.sqlite")
    db.record_sent("Q1", "alice@example.org", "<m@x>",
                   [("bob@example.org", "delivered"), ("carol@example.net", "queued")],
                   now=100)
    listener = ApiStates(db)
    listener.publish([
        DeliveryEvent("deferred", "Q1", "alice@example.org", "carol@example.net", 110,
                      status="4.4.1", diagnostic="connection refused", attempts=1),
        DeliveryEvent("delivered", "Q1", "alice@example.org", "carol@example.net", 120,
                      status="2.0.0", diagnostic="250 ok", remote="mx.example.net",
                      attempts=2),
        DeliveryEvent("delivered", "OTHER", "x@example.org", "y@example.net", 120),
        DeliveryEvent("received", "Q1", "", "bob@example.org", 120),
    ])
    # An older event arriving late does not undo a newer one.
    listener.publish([DeliveryEvent("deferred", "Q1", "alice@example.org",
                                    "carol@example.net", 115, status="4.4.1")])
    states = {s.address: (s.state, s.status, s.diagnostic, s.remote, s.attempts)
              for s in db.states("Q1")}
    assert states == {"bob@example.org": ("delivered", "", "", "", 0),
                      "carol@example.net": ("delivered", "2.0.0", "250 ok",
                                            "mx.example.net", 2)}
    assert db.states("OTHER") == []
    assert db.sent_by("Q1") == ("alice@example.org", "<m@x>")
    assert db.sent_by("OTHER") is None


class _Jobs:
    """A stand-in for the recorder's thread: each job waits until the test runs it."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((fn, args, d))
        return d

    def run_next(self) -> None:
        fn, args, d = self.waiting.pop(0)
        try:
            result = fn(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


def test_sent_records_are_grouped_and_each_answer_waits_for_its_commit(
        tmp_path: Path) -> None:
    db = SentDb(tmp_path / "sent.sqlite")
    jobs = _Jobs()
    recorder = SentRecorder(db, jobs)
    fired: list[str] = []
    for q in ("Q1", "Q2", "Q3"):
        recorder.record(q, "alice@example.org", f"<{q}@x>", [("bob@example.org", "delivered")]
                        ).addCallback(lambda _, q=q: fired.append(q))
    # Q1 is being written alone; Q2 and Q3 wait for the next transaction.
    assert len(jobs.waiting) == 1 and fired == []
    jobs.run_next()
    assert fired == ["Q1"]
    assert db.sent_by("Q1") == ("alice@example.org", "<Q1@x>")
    assert db.sent_by("Q2") is None  # not answered, not yet written
    assert len(jobs.waiting) == 1
    assert [r[0] for r in jobs.waiting[0][1][0]] == ["Q2", "Q3"]  # one write for both
    jobs.run_next()
    assert fired == ["Q1", "Q2", "Q3"] and not jobs.waiting
    assert [(s.address, s.state) for s in db.states("Q3")] == [("bob@example.org",
                                                                 "delivered")]


def test_a_failed_group_fails_each_of_its_requests_and_the_next_still_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = SentDb(tmp_path / "sent.sqlite")
    jobs = _Jobs()
    recorder = SentRecorder(db, jobs)
    outcomes: list[str] = []

    def disk_error(durable: bool = True) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(db, "_db", disk_error)
    for q in ("Q1", "Q2"):
        recorder.record(q, "alice@example.org", f"<{q}@x>", []).addCallbacks(
            lambda _: outcomes.append("ok"), lambda f: outcomes.append(
                f"failed: {f.value}"))
    jobs.run_next()  # Q1
    monkeypatch.undo()
    assert outcomes == ["failed: disk I/O error"]
    jobs.run_next()  # Q2, after the disk came back
    assert outcomes == ["failed: disk I/O error", "ok"]
    assert db.sent_by("Q1") is None
    assert db.sent_by("Q2") == ("alice@example.org", "<Q2@x>")


def test_a_claim_is_not_fsyncd_and_the_answer_that_covers_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sentdb's durability: one fsync per keyed send, at the answer (which, in WAL,
    # makes the claim durable too); release stays FULL (a lost one would hold the key).
    db = SentDb(tmp_path / "sent.sqlite")
    real = db._db
    used: list[bool] = []

    def spy(durable: bool = True) -> sqlite3.Connection:
        used.append(durable)
        return real(durable)

    monkeypatch.setattr(db, "_db", spy)
    assert db.claim("alice@example.org", "k", "d", now=1000) == Claim(mine=True)
    assert used == [False]
    assert real(False).execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    db.answered("alice@example.org", "k", {"status": 200, "body": {}})
    db.release("alice@example.org", "other")
    assert used == [False, True, True]
    assert real(True).execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # The claim, written on the other connection, is what the answer updated.
    assert db.claim("alice@example.org", "k", "d", now=1001) == Claim(
        answer={"status": 200, "body": {}})


def test_key_writes_share_the_recorders_thread_in_order(tmp_path: Path) -> None:
    # send.py's claim / answered / release go through SentRecorder.call: the same
    # single writer as the sent records, first come first served.
    db = SentDb(tmp_path / "sent.sqlite")
    jobs = _Jobs()
    recorder = SentRecorder(db, jobs)
    got: list[object] = []
    recorder.call(db.claim, "alice@example.org", "k", "d").addCallback(got.append)
    recorder.record("Q1", "alice@example.org", "<a@x>", []).addCallback(got.append)
    recorder.call(db.answered, "alice@example.org", "k", {"status": 200}).addCallback(
        got.append)
    assert [fn.__name__ for fn, _, _ in jobs.waiting] == ["claim", "record_sent_many",
                                                        "answered"]
    while jobs.waiting:
        jobs.run_next()
    assert got == [Claim(mine=True), None, None]
    assert db.claim("alice@example.org", "k", "d").answer == {"status": 200}


def test_a_keyed_sends_record_and_answer_are_one_durable_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # send.py: the record and the key's answer in the same job and transaction, FULL
    # (fsync'd) as `answered` is; a group of records without keys stays NORMAL.
    db = SentDb(tmp_path / "sent.sqlite")
    jobs = _Jobs()
    recorder = SentRecorder(db, jobs)
    real = db._db
    used: list[bool] = []

    def spy(durable: bool = True) -> sqlite3.Connection:
        used.append(durable)
        return real(durable)

    assert db.claim("alice@example.org", "k", "d") == Claim(mine=True)
    monkeypatch.setattr(db, "_db", spy)
    fired: list[str] = []
    recorder.record("Q1", "alice@example.org", "<Q1@x>", [("bob@example.org", "delivered")],
                    ("alice@example.org", "k", {"status": 200, "body": {"queue_id": "Q1"}})
                    ).addCallback(lambda _: fired.append("Q1"))
    assert len(jobs.waiting) == 1
    jobs.run_next()
    assert fired == ["Q1"] and used == [True]
    assert db.sent_by("Q1") == ("alice@example.org", "<Q1@x>")
    assert db.claim("alice@example.org", "k", "d").answer == {"status": 200,
                                                               "body": {"queue_id": "Q1"}}
    used.clear()
    recorder.record("Q2", "alice@example.org", "<Q2@x>", [])
    jobs.run_next()
    assert used == [False]
