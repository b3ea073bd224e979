"""The spool on disk: commit, release, abort, and what a crash at each moment leaves.

A crash is simulated by leaving exactly the files a process killed at that moment
would leave; `recover()` (what the server runs at start) must then find precisely the
recipients still owed a delivery, and nothing half-written.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from mailserver.queue.envelope import (
    DELIVERED,
    FAILED,
    PENDING,
    QueueEntry,
    RecipientState,
    is_queue_id,
    new_queue_id,
)
from mailserver.queue.spool import HELD_GRACE, ORPHAN_GRACE, EntryGone, MessageMissing, Spool

MESSAGE = b"From: alice@example.org\nSubject: hi\n\nbody\n"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "queue")
    s.ensure_dirs()
    return s


def entry(*rcpts: str, sender: str = "alice@example.org") -> QueueEntry:
    return QueueEntry(id=new_queue_id(), sender=sender,
                      recipients=[RecipientState(r) for r in rcpts], size=len(MESSAGE))


def dead_pid() -> int:
    """The pid of a process that has exited (a crashed writer)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def committed(spool: Spool, e: QueueEntry, release: bool = True) -> QueueEntry:
    tmp = spool.tmp_path(e.id, "msg")
    tmp.write_bytes(MESSAGE)
    spool.commit(e, tmp)
    if release:
        spool.release(e.id)
    return e


def test_ids_are_unique_file_safe_and_sortable() -> None:
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(is_queue_id(i) and len(i) == 16 for i in ids)
    assert not is_queue_id("../../etc") and not is_queue_id("abc")


def test_commit_then_release(spool: Spool) -> None:
    e = committed(spool, entry("bob@example.net"), release=False)
    assert spool.held_ids() == [e.id] and spool.ids() == []
    assert (spool.messages / e.id).read_bytes() == MESSAGE
    assert list(spool.tmp.iterdir()) == []
    spool.release(e.id)
    assert spool.ids() == [e.id] and spool.held_ids() == []
    loaded = spool.load(e.id)
    assert loaded == e


def test_envelope_is_readable_json_not_pickle(spool: Spool) -> None:
    e = committed(spool, entry("bob@example.net", "carol@example.net"))
    data = json.loads((spool.envelopes / e.id).read_text())
    assert data["sender"] == "alice@example.org"
    assert [r["address"] for r in data["recipients"]] == ["bob@example.net",
                                                          "carol@example.net"]
    assert data["recipients"][0]["state"] == "pending"


def test_discard_after_commit_leaves_nothing(spool: Spool) -> None:
    e = committed(spool, entry("bob@example.net"), release=False)
    spool.discard(e.id)
    assert spool.held_ids() == [] and list(spool.messages.iterdir()) == []


def test_save_records_per_recipient_state(spool: Spool) -> None:
    e = committed(spool, entry("a@example.net", "b@example.net", "c@example.net"))
    e.recipients[0].state = DELIVERED
    e.recipients[1].state = FAILED
    e.recipients[1].last_error = "550 5.1.1 no such user"
    e.recipients[2].attempts = 1
    e.recipients[2].next_try = 1234.5
    spool.save(e)
    again = spool.load(e.id)
    assert [r.state for r in again.recipients] == [DELIVERED, FAILED, PENDING]
    assert [r.address for r in again.pending()] == ["c@example.net"]
    assert again.recipients[2].next_try == 1234.5


def test_save_after_delete_raises_and_does_not_resurrect(spool: Spool) -> None:
    e = committed(spool, entry("bob@example.net"))
    assert spool.delete(e.id)
    with pytest.raises(EntryGone):
        spool.save(e)
    assert spool.ids() == [] and list(spool.messages.iterdir()) == []
    assert list(spool.tmp.iterdir()) == []
    assert not spool.delete(e.id)


# -- crash windows --------------------------------------------------------------------------


def test_crash_while_writing_the_message_leaves_nothing(spool: Spool) -> None:
    (spool.tmp / f"ABCDEF0123456789.msg.{dead_pid()}").write_bytes(b"half a mess")
    assert spool.recover() == []
    assert list(spool.tmp.iterdir()) == []


def test_temporary_file_of_a_live_writer_is_left_alone(spool: Spool) -> None:
    live = spool.tmp / f"ABCDEF0123456789.msg.{os.getppid()}"
    live.write_bytes(b"a session in another process is writing this")
    spool.recover()
    assert live.exists()


def test_crash_after_message_before_envelope_removes_the_orphan(spool: Spool) -> None:
    orphan = spool.messages / new_queue_id()
    orphan.write_bytes(MESSAGE)
    (spool.tmp / f"{orphan.name}.env.{dead_pid()}").write_bytes(b'{"half": ')
    assert spool.recover(now=os.stat(orphan).st_mtime + ORPHAN_GRACE + 1) == []
    assert list(spool.messages.iterdir()) == [] and list(spool.tmp.iterdir()) == []


def test_young_orphan_is_left_for_a_commit_in_progress(spool: Spool) -> None:
    orphan = spool.messages / new_queue_id()
    orphan.write_bytes(MESSAGE)
    spool.recover()
    assert orphan.exists(), "another process may be about to write its envelope"


def test_crash_after_commit_before_release_schedules_the_entry(spool: Spool) -> None:
    e = committed(spool, entry("bob@example.net"), release=False)
    recovered = spool.recover()
    assert [r.id for r in recovered] == [e.id]
    assert spool.ids() == [e.id] and spool.held_ids() == []


def test_crash_mid_delivery_keeps_exactly_the_undelivered(spool: Spool) -> None:
    e = committed(spool, entry("a@example.net", "b@example.net", "c@example.org"))
    e.recipients[0].state = DELIVERED  # the remote said 250 and we wrote it down
    e.recipients[2].state = FAILED
    e.recipients[2].bounced = True
    spool.save(e)
    # ... and the process died while rewriting the envelope once more:
    (spool.tmp / f"{e.id}.env.{dead_pid()}").write_bytes(b'{"id": "trunc')
    [again] = spool.recover()
    assert [r.address for r in again.pending()] == ["b@example.net"]
    assert not again.finished
    assert list(spool.tmp.iterdir()) == []


def test_failed_but_not_yet_bounced_is_not_finished(spool: Spool) -> None:
    e = committed(spool, entry("a@example.net"))
    e.recipients[0].state = FAILED
    spool.save(e)
    [again] = spool.recover()
    assert again.unbounced_failures() and not again.finished, \
        "the DSN is still owed after a restart"


def test_corrupt_envelope_is_set_aside(spool: Spool) -> None:
    good = committed(spool, entry("a@example.net"))
    bad = new_queue_id()
    (spool.envelopes / bad).write_bytes(b"\x00not json")
    (spool.messages / bad).write_bytes(MESSAGE)
    assert [e.id for e in spool.recover()] == [good.id]
    assert (spool.corrupt / bad).exists()


def test_envelope_without_message_is_set_aside(spool: Spool) -> None:
    e = committed(spool, entry("a@example.net"))
    os.unlink(spool.messages / e.id)
    assert spool.recover() == []
    assert (spool.corrupt / e.id).exists()


@pytest.mark.parametrize("raw", [
    b"[]", b'{"version": 1}', b'{"version": 2, "id": "0123456789ABCDEF"}',
    b'{"version": 1, "id": "../../x", "sender": "", "recipients": []}',
    b'{"version": 1, "id": "0123456789ABCDEF", "sender": "",'
    b' "recipients": [{"address": "a@b", "state": "weird"}]}',
])
def test_hostile_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        QueueEntry.from_json(raw)


def test_discard_of_a_held_entry_syncs_held(spool: Spool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # An entry aborted after its commit (the client got a 4xx and sends again) must
    # not come back from held/ after a crash: start-up would release and send it.
    import mailserver.queue.spool as spool_module

    e = committed(spool, entry("a@example.net"), release=False)
    synced: list[Path] = []
    monkeypatch.setattr(spool_module, "fsync_dir", synced.append)
    spool.discard(e.id)
    assert spool.held in synced
    assert not (spool.held / e.id).exists() and not (spool.messages / e.id).exists()


def test_missing_message_at_delivery_time_is_set_aside(spool: Spool) -> None:
    e = committed(spool, entry("a@example.net"))
    os.unlink(spool.messages / e.id)
    with pytest.raises(MessageMissing):
        spool.load_for_delivery(e.id, 1024)
    assert spool.set_aside(e.id)
    assert (spool.corrupt / e.id).exists() and spool.ids() == []
    assert not spool.set_aside(e.id), "gone already: nothing to move"


def test_stale_held_entry_is_released_without_a_restart(spool: Spool) -> None:
    # The session committed, then its release failed (or its worker died): the entry
    # waited in held/ for the next restart. The scheduler's poll releases it.
    stale = committed(spool, entry("a@example.net"), release=False)
    fresh = committed(spool, entry("b@example.net"), release=False)
    old = time.time() - HELD_GRACE - 5
    os.utime(spool.held / stale.id, (old, old))
    assert spool.release_stale_held() == [stale.id]
    assert spool.ids() == [stale.id]
    assert spool.held_ids() == [fresh.id], "a session may still be committing this one"


def test_discard_many_syncs_envelopes_once_and_unlinks_after_the_sync(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scheduler's group commit: ten finished entries cost one fsync of envelopes/,
    # and no message file goes before that fsync (a message without an envelope is
    # garbage; an envelope without its message would be set aside as corrupt).
    import mailserver.queue.spool as spool_module

    entries = [committed(spool, entry(f"r{i}@example.net")) for i in range(10)]
    held = committed(spool, entry("h@example.net"), release=False)
    synced: list[tuple[Path, int, int]] = []

    def fsync_dir(path: Path) -> None:
        synced.append((path, len(spool.ids()), len(os.listdir(spool.messages))))

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    spool.discard_many([e.id for e in entries] + [held.id, "0123456789ABCDEF"])
    assert sorted(p for p, _, _ in synced) == sorted([spool.envelopes, spool.held])
    assert all(envelopes == 0 and messages == 11 for _, envelopes, messages in synced), \
        "every envelope unlinked before the sync, every message still there"
    assert spool.ids() == [] and spool.held_ids() == []
    assert os.listdir(spool.messages) == []


def test_discard_many_of_entries_already_gone_still_syncs(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread (`queue delete`) may have unlinked it and not yet synced: the
    # caller counts it removed only once an fsync that started after the unlink ends.
    import mailserver.queue.spool as spool_module

    synced: list[Path] = []
    monkeypatch.setattr(spool_module, "fsync_dir", synced.append)
    spool.discard_many(["0123456789ABCDEF"])
    assert synced == [spool.envelopes]
